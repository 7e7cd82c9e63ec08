import { GATEWAY_ERRORS, GatewayError, type GatewayErrorName, toGatewayError } from '../errors.ts';
import { isPersonal, type MergePayload } from './merge.ts';

/**
 * What an owner publishes on `<prefix>done:<key>` (JSON), one of:
 * - the answer, body in Base64: `{"v":1,"status":200,"body":"<base64>"}`;
 * - the error every waiter should get:
 *   `{"v":1,"error":{"code":"timeout","message":"…","status":504,"headers":{…}}}`;
 * - "try yourself": `{"v":1,"retry":true}` — the owner's error was its own (its quota), so
 *   waiters must not inherit it.
 */
type DoneMessage =
  | { v: 1; status: number; body: string }
  | {
      v: 1;
      error: { code: string; message: string; status: number; headers?: Record<string, string> };
    }
  | { v: 1; retry: true };

export type MergeOutcome = { value: MergePayload } | { error: GatewayError } | { retry: true };

export function encodeDone(outcome: { value: MergePayload } | { error: unknown }): string {
  if ('value' in outcome) {
    const { status, body } = outcome.value;
    return JSON.stringify({ v: 1, status, body: body.toString('base64') } satisfies DoneMessage);
  }
  if (isPersonal(outcome.error)) return JSON.stringify({ v: 1, retry: true } satisfies DoneMessage);
  // Same mapping the error handler applies: a non-gateway error becomes a generic api_error.
  const error = toGatewayError(outcome.error);
  return JSON.stringify({
    v: 1,
    error: {
      code: error.code,
      message: error.message,
      status: error.statusCode,
      ...(Object.keys(error.headers).length > 0 ? { headers: { ...error.headers } } : {}),
    },
  } satisfies DoneMessage);
}

const ROWS = Object.entries(GATEWAY_ERRORS) as [
  GatewayErrorName,
  { status: number; code: string },
][];

/** The table row a code and status came from, so a waiter rebuilds the same error. */
function rowFor(code: unknown, status: unknown): GatewayErrorName {
  const exact = ROWS.find(([, row]) => row.code === code && row.status === status);
  return (exact ?? ROWS.find(([, row]) => row.code === code))?.[0] ?? 'api_error';
}

/** Settles a waiter from a done message; undefined when the message is not one of ours. */
export function decodeDone(raw: string): MergeOutcome | undefined {
  let message: unknown;
  try {
    message = JSON.parse(raw);
  } catch {
    return undefined;
  }
  if (typeof message !== 'object' || message === null) return undefined;
  const m = message as Record<string, unknown>;
  if (m.retry === true) return { retry: true };
  if (typeof m.status === 'number' && typeof m.body === 'string') {
    return { value: { status: m.status, body: Buffer.from(m.body, 'base64') } };
  }
  if (typeof m.error !== 'object' || m.error === null) return undefined;
  const error = m.error as Record<string, unknown>;
  const headers =
    typeof error.headers === 'object' && error.headers !== null
      ? (error.headers as Record<string, string>)
      : undefined;
  const text = typeof error.message === 'string' ? error.message : 'the merged request failed';
  const status = typeof error.status === 'number' ? error.status : undefined;
  return { error: new GatewayError(rowFor(error.code, status), text, { headers, status }) };
}
