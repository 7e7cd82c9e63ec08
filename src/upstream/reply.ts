/** Reading an upstream answer: JSON, error codes, and the contract's mapping of the last one. */
import { GatewayError } from '../errors.ts';
import { holdsExpected } from '../schemas/captcha.ts';
import { redactedExcerpt } from './redact.ts';
import { retryAfterMs, secondsFromMs } from './retry-after.ts';
import type { UpstreamCall, UpstreamReply } from './types.ts';

/**
 * Applies the contract's mapping to the last answer the upstream gave (after any retries).
 * `tokenReadyInMs` tells when a token is out of its 429 cool-down.
 */
export function judgeReply(
  call: UpstreamCall,
  reply: UpstreamReply,
  tokenReadyInMs: () => number,
): UpstreamReply {
  const malformed = (why: string) => {
    call.log.error(
      { upstream_status: reply.status, upstream_excerpt: redactedExcerpt(reply.body) },
      `malformed upstream reply: ${why}`,
    );
    return new GatewayError('upstream_error', 'the upstream sent a malformed reply');
  };
  // A 429 means "slow down" whatever its body says (a proxy's HTML page included).
  if (reply.status === 429) {
    // Still there after the retries: the upstream is saturated. 429 lets the SDK raise its
    // RateLimitError; the client's own limits have their own messages.
    const waitMs = retryAfterMs(reply.retryAfter) ?? tokenReadyInMs();
    const seconds = secondsFromMs(Number.isFinite(waitMs) ? waitMs : 1_000);
    throw new GatewayError(
      'too_many_requests',
      `the upstream is saturated (it rate limits the gateway); retry in ${seconds} s`,
      { headers: { 'retry-after': seconds } },
    );
  }
  if (reply.json === undefined) throw malformed('body is not JSON');
  if (reply.status >= 200 && reply.status < 300 && !holdsExpected(reply.json, call.expect)) {
    throw malformed(`a ${reply.status} without ${call.expect}`);
  }
  return reply;
}

/**
 * What a reply says about the gateway's own token or account, if anything. A client must never
 * see those as its own fault, and they take the token out of rotation:
 * - any 401, and 400 `no_token` / `token_mismatched`: the token is rejected;
 * - `used_up` (403): the account's balance; `disabled` (400 or 403): the account or application.
 * A 403 with any other code (`forbidden`: content moderation of this request) is about the
 * request, not the token: it passes through.
 */
export function credentialProblem(
  reply: UpstreamReply,
): 'rejected' | 'used_up' | 'disabled' | undefined {
  if (reply.status < 400 || reply.status > 403) return undefined;
  const code = upstreamErrorCode(reply.json);
  if (code === 'used_up') return 'used_up';
  if (code === 'disabled') return 'disabled';
  if (reply.status === 401) return 'rejected';
  if (reply.status === 400 && (code === 'no_token' || code === 'token_mismatched'))
    return 'rejected';
  return undefined;
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
