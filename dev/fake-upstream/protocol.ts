// The upstream's wire protocol as its public OpenAPI spec (AceDataCloud/Docs openapi/hcaptcha.json)
// and guides document it: the three paths, the error envelope and the documented message of every
// error code. Routes and faults build their answers from here only.

import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';

export const RECOGNITION_PATH = '/captcha/recognition/hcaptcha';
export const TOKEN_PATH = '/captcha/token/hcaptcha';
export const TASKS_PATH = '/captcha/tasks';
export const API_PATHS = [RECOGNITION_PATH, TOKEN_PATH, TASKS_PATH] as const;
export type ApiPath = (typeof API_PATHS)[number];

export function isApiPath(path: string): path is ApiPath {
  return (API_PATHS as readonly string[]).includes(path);
}

/**
 * Every error code the fake answers, with its status and the spec's example message. `forbidden`
 * (content moderation of one request) is in no hCaptcha source, but the project's brief names it;
 * the fake only sends it as an injected fault. `not_found` and `invalid_query` are the tasks
 * endpoint's; `disabled` is a 400 because that is where the spec lists it.
 */
export const UPSTREAM_ERRORS = {
  no_token: { status: 400, message: 'No token specified for the request.' },
  token_mismatched: { status: 400, message: 'The specified token is not matched with API.' },
  api_not_implemented: { status: 400, message: 'The API is not implemented.' },
  disabled: {
    status: 400,
    message:
      'Your application has been disabled by Ace Data Cloud due to abnormal usage behavior, please contact our support to get more information.',
  },
  // The spec's only example ("model is invalid.") is copied from another API; the fake's request
  // checks say which field is wrong instead (see routes/), this is only a fault's default message.
  bad_request: { status: 400, message: 'model is invalid.' },
  invalid_query: { status: 400, message: 'no task_id specified' },
  invalid_token: { status: 401, message: 'The specified token is invalid or wrong.' },
  token_expired: { status: 401, message: 'token expired.' },
  used_up: {
    status: 403,
    message:
      'Your balance is not sufficient for current request, please buy more in Ace Data Cloud.',
  },
  forbidden: {
    status: 403,
    message: 'Your request was rejected by content moderation, please modify it and try again.',
  },
  no_api: { status: 404, message: 'API does not exist, please make sure url is correct.' },
  not_found: { status: 404, message: 'task not found' },
  too_many_requests: { status: 429, message: 'You have exceeded the rate limit.' },
  api_error: { status: 500, message: 'Internal server error.' },
} as const satisfies Record<string, { status: number; message: string }>;

export type UpstreamErrorCode = keyof typeof UPSTREAM_ERRORS;

/** The spec lists `token_mismatched` twice: as a 400 and, with another message, as a 401. */
const TOKEN_MISMATCHED_401 = 'token and api does not match.';

/** The documented message for a code at a status, if the spec has one. */
export function documentedMessage(code: string, status: number): string | undefined {
  if (code === 'token_mismatched' && status === 401) return TOKEN_MISMATCHED_401;
  return Object.hasOwn(UPSTREAM_ERRORS, code)
    ? UPSTREAM_ERRORS[code as UpstreamErrorCode].message
    : undefined;
}

/** The task-timeout answer is the one error without the envelope (guides, captcha_tasks). */
export const TASK_TIMEOUT_DETAIL = 'The captcha task timed out.';

/** Epoch milliseconds as the upstream's Unix seconds (float). */
export const unixSeconds = (ms: number): number => ms / 1000;

/** Start, end and duration of some work, as the upstream reports them (seconds, 3 decimals). */
export function timing(startMs: number, endMs: number) {
  return {
    started_at: unixSeconds(startMs),
    finished_at: unixSeconds(endMs),
    elapsed: Math.round(Math.max(0, endMs - startMs)) / 1000,
  };
}

export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  if (res.destroyed || res.writableEnded) return;
  const text = JSON.stringify(body);
  res.writeHead(status, {
    ...headers,
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(text)),
  });
  res.end(text);
}

export interface EnvelopeOptions {
  /** Send `error` as a plain string, which some upstream answers do. */
  plainError?: boolean | undefined;
  retryAfter?: string | undefined;
}

/** `{"success":false,"error":{"code","message"},"trace_id"}`, the envelope of the guides. */
export function sendEnvelope(
  res: ServerResponse,
  status: number,
  code: string,
  message: string,
  opts: EnvelopeOptions = {},
): void {
  const body = {
    success: false,
    error: opts.plainError ? message : { code, message },
    trace_id: randomUUID(),
  };
  const headers: Record<string, string> = {};
  if (opts.retryAfter !== undefined) headers['retry-after'] = opts.retryAfter;
  sendJson(res, status, body, headers);
}

/** A documented error with its status; `message` overrides the documented text. */
export function sendError(res: ServerResponse, code: UpstreamErrorCode, message?: string): void {
  const known = UPSTREAM_ERRORS[code];
  sendEnvelope(res, known.status, code, message ?? known.message);
}

export function bearerToken(header: string | undefined): string | undefined {
  const match = header ? /^Bearer\s+(\S.*)$/i.exec(header.trim()) : null;
  return match?.[1]?.trim() || undefined;
}

export function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

export type Parsed = { ok: true; value: unknown } | { ok: false };

export function parseJson(text: string): Parsed {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false };
  }
}
