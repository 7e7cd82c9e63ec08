/** Reading an upstream answer: JSON, error codes, and the contract's mapping of the last one. */
import { GatewayError } from '../errors.ts';
import { isRecognitionSuccess } from '../schemas/captcha.ts';
import { redactedExcerpt } from './redact.ts';
import { retryAfterSeconds } from './retry-after.ts';
import type { UpstreamCall, UpstreamReply } from './types.ts';

/** Applies the contract's mapping to the last answer the upstream gave (after any retries). */
export function judgeReply(call: UpstreamCall, reply: UpstreamReply): UpstreamReply {
  const malformed = (why: string) => {
    call.log.error(
      { upstream_status: reply.status, upstream_excerpt: redactedExcerpt(reply.body) },
      `malformed upstream reply: ${why}`,
    );
    return new GatewayError('upstream_error', 'upstream sent a malformed reply');
  };
  if (reply.json === undefined) throw malformed('body is not JSON');
  if (reply.status === 429) {
    // The client's own 429 always means its own limit; the upstream's is our problem.
    throw new GatewayError(
      'upstream_unavailable',
      'upstream is rate limiting the gateway; retry later',
      { headers: { 'retry-after': retryAfterSeconds(reply.retryAfter) } },
    );
  }
  if (reply.status >= 200 && reply.status < 300 && call.expect !== 'json') {
    if (!isRecognitionSuccess(reply.json, call.expect === 'task_id')) {
      throw malformed(`a ${reply.status} without ${call.expect}`);
    }
  }
  return reply;
}

/**
 * A reply that is about the gateway's own credentials: any 401/403, and the 400s the upstream
 * uses for a missing or mismatched token. A client must never see those as its own fault.
 */
export function isCredentialRejection(reply: UpstreamReply): boolean {
  if (reply.status === 401 || reply.status === 403) return true;
  const code = upstreamErrorCode(reply.json);
  return reply.status === 400 && (code === 'no_token' || code === 'token_mismatched');
}

export function parseJson(body: Buffer): unknown {
  try {
    const value: unknown = JSON.parse(body.toString('utf8'));
    return typeof value === 'object' && value !== null ? value : undefined;
  } catch {
    return undefined;
  }
}

/** The upstream's `error.code`, or its plain-string `error`, cut short for a log field. */
export function upstreamErrorCode(json: unknown): string | undefined {
  const error = (json as { error?: unknown } | undefined)?.error;
  if (typeof error === 'string') return error.slice(0, 64);
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code.slice(0, 64) : undefined;
}
