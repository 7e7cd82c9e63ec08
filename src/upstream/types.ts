/** The upstream client's public shapes, free of runtime imports. */
import type { ExpectedField } from '../schemas/captcha.ts';

export type UpstreamPath =
  | '/captcha/recognition/hcaptcha'
  | '/captcha/token/hcaptcha'
  | '/captcha/tasks';

/**
 * What a call does upstream: `solve` starts billed work; `poll` reads a task, whose 504 is the
 * task's own terminal "timed out" state — not a fault to retry or to open the breaker on.
 */
export type CallKind = 'solve' | 'poll';

/** Minimal logger shape (pino-compatible) so the core stays framework-free. */
export interface CoreLogger {
  error(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/** Filled in while the call runs, so the completion log line has it even when the call fails. */
export interface UpstreamCallReport {
  /** Status of the last attempt; unset when it got no response. */
  upstream_status?: number;
  /** From the first attempt's start to the last one's end, backoff included. */
  upstream_ms?: number;
  upstream_trace_id?: string;
  /** Upstream requests sent beyond the first (transient retries and token switches). */
  retries: number;
  /** A transient fault was not retried because the retry budget was spent. */
  retry_budget_exhausted?: boolean;
  /** An attempt got a 2xx: the upstream bills it, whatever the gateway answers. */
  billed?: boolean;
}

export interface UpstreamCall {
  path: UpstreamPath;
  kind: CallKind;
  /** Exactly the bytes to forward. */
  body: Buffer;
  /** The field a 2xx must hold (`solution`, `token`, `task_id`), or undefined to pass any JSON. */
  expect: ExpectedField;
  traceId: string;
  /** Whose queue the call waits in at the gate. */
  clientId: string;
  /** The client's own key: masked by value in anything the upstream says back. */
  clientKey?: string;
  /** Epoch ms: the request's deadline, queueing and merging included. */
  deadline: number;
  /**
   * Aborted when the client has left: an attempt not yet sent is not sent (a sent one goes on —
   * it is paid for, and merged requests and the cache still want its answer).
   */
  abandoned?: AbortSignal;
  report: UpstreamCallReport;
  log: CoreLogger;
}

/** An upstream answer to pass through unchanged: status and the exact body bytes. */
export interface UpstreamReply {
  status: number;
  body: Buffer;
  json: unknown;
  /** The upstream's `retry-after` header, if any. */
  retryAfter?: string;
}

/** Circuit breaker state as reported to /readyz and metrics. */
export type CircuitLabel = 'closed' | 'open' | 'half_open';

/** Hooks for metrics; each is called synchronously and must not throw. */
export interface UpstreamEvents {
  /** A request is about to be re-sent: `status_503`, `ECONNRESET`, `token_rejected`, … */
  onRetry?(reason: string): void;
  /** A transient fault was answered as is: the retry budget was spent. */
  onRetryBudgetExhausted?(): void;
  onCircuitState?(state: CircuitLabel): void;
  /** A token left or rejoined rotation; `fingerprint` is the first 8 hex of its SHA-256. */
  onTokenState?(fingerprint: string, state: 'disabled' | 'enabled', code: string | undefined): void;
  /** One upstream request ended, with its status (or 'error': no response) and duration. */
  onAttempt?(status: number | 'error', ms: number): void;
}
