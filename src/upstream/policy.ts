/**
 * What is transient, and the cockatiel policies built on it: a per-call retry with full-jitter
 * backoff that respects `retry-after` and the call's deadline, and a shared circuit breaker.
 */
import {
  type CircuitBreakerPolicy,
  CircuitState,
  ConsecutiveBreaker,
  circuitBreaker,
  ExponentialBackoff,
  type FailureReason,
  fullJitterGenerator,
  handleWhen,
  type IBackoff,
  type IBackoffFactory,
  type IRetryBackoffContext,
  type RetryPolicy,
  retry,
} from 'cockatiel';
import { GatewayError } from '../errors.ts';
import type { CallKind, CircuitLabel } from './types.ts';

/** Upstream statuses worth another attempt. */
export const TRANSIENT_STATUSES: ReadonlySet<number> = new Set([408, 429, 500, 502, 503, 504]);

/** Connection-level failures (Node and undici codes) that happen before any usable response. */
export const TRANSIENT_ERROR_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
]);

/** The shape of a reply the policies judge; the client's UpstreamReply satisfies it. */
export interface StatusReply {
  status: number;
}

function isStatusReply(value: unknown): value is StatusReply {
  return typeof (value as { status?: unknown } | null)?.status === 'number';
}

/** The `code` of an error, looking through `cause` and AggregateError (happy eyeballs). */
export function errorCode(error: unknown): string | undefined {
  for (let e = error, depth = 0; e !== undefined && e !== null && depth < 4; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && code !== '') return code;
    const inner = (e as { errors?: unknown[] }).errors?.[0];
    e = inner ?? (e as { cause?: unknown }).cause;
  }
  return undefined;
}

/**
 * A status that is a fault of the upstream rather than an answer. A task poll's 504 is the task's
 * own terminal state ("timed out"), returned on every read: neither retried nor a fault.
 */
function isFaultStatus(status: number, kind: CallKind): boolean {
  return kind === 'poll' && status === 504 ? false : TRANSIENT_STATUSES.has(status);
}

/**
 * Why a failed attempt may be retried (a bounded label for logs and metrics), or undefined when
 * it must not be. Connection failures reach here as GatewayError('upstream_error') with the
 * undici error as `cause`.
 */
export function transientReason(
  outcome: FailureReason<unknown>,
  kind: CallKind,
): string | undefined {
  if ('value' in outcome) {
    const { value } = outcome;
    return isStatusReply(value) && isFaultStatus(value.status, kind)
      ? `status_${value.status}`
      : undefined;
  }
  const { error } = outcome;
  if (!(error instanceof GatewayError) || error.code !== 'upstream_error') return undefined;
  const code = errorCode(error.cause);
  return code !== undefined && TRANSIENT_ERROR_CODES.has(code) ? code : undefined;
}

/**
 * What the breaker counts: the upstream unreachable, a 5xx, or no answer while it had a fair
 * chance (GatewayError.upstreamFault). Never the gateway's own queue wait or deadline, a 4xx, or a
 * 429 (the upstream is alive and asking to slow down; tokens cool down instead).
 */
export function isUpstreamFault(status: number, kind: CallKind): boolean {
  return status >= 500 && isFaultStatus(status, kind);
}

export const BACKOFF_DEFAULTS = { initialDelayMs: 200, maxDelayMs: 5_000 } as const;

export interface RetryPlan {
  maxRetries: number;
  backoff: { initialDelayMs: number; maxDelayMs: number };
  /** Epoch ms (Date.now() clock) at which the whole call must be over. */
  deadlineAt: number;
  /** A retry starts only if at least this much of the deadline is left after its wait. */
  minAttemptMs: number;
  kind: CallKind;
  /** The least the next attempt must wait after this outcome (e.g. `retry-after`), in ms. */
  waitAfter(outcome: FailureReason<unknown>): number;
  /** Asked last, once a retry is otherwise due: takes it from the retry budget. */
  mayRetry(): boolean;
}

/**
 * A retry policy for one call. Built per call because whether a retry "fits" depends on that
 * call's deadline and the token pool's state; cockatiel policies are cheap objects.
 *
 * cockatiel cannot stop from inside a backoff, and its backoff sleep ignores the abort signal, so
 * the "does the next attempt fit in the deadline" decision is made in the handle predicate (which
 * runs before the backoff), and the backoff is clamped to the same room: the sleep always ends
 * before the deadline, and when a `retry-after` does not fit, the last answer is returned as is.
 */
export function retryPolicyFor(plan: RetryPlan): RetryPolicy {
  // cockatiel asks the predicate about every failed attempt, the last one included; only an
  // outcome that will really be retried may take from the retry budget.
  let granted = 0;
  const retryable = (outcome: FailureReason<unknown>) => {
    const due =
      granted < plan.maxRetries &&
      transientReason(outcome, plan.kind) !== undefined &&
      Date.now() + plan.waitAfter(outcome) + plan.minAttemptMs <= plan.deadlineAt &&
      plan.mayRetry();
    if (due) granted++;
    return due;
  };
  return retry(
    handleWhen((error) => retryable({ error })).orWhenResult((value) => retryable({ value })),
    { maxAttempts: plan.maxRetries, backoff: deadlineBackoff(plan) },
  );
}

type RetryContext = IRetryBackoffContext<unknown>;

/**
 * Full-jitter exponential backoff (cockatiel's own), raised to the outcome's required wait and
 * capped by the room left before the deadline.
 */
function deadlineBackoff(plan: RetryPlan): IBackoffFactory<RetryContext> {
  const jitter = new ExponentialBackoff({
    generator: fullJitterGenerator,
    initialDelay: plan.backoff.initialDelayMs,
    maxDelay: plan.backoff.maxDelayMs,
  });
  const step = (previous: IBackoff<unknown> | undefined, context: RetryContext) => {
    const next = previous ? previous.next(context) : jitter.next();
    const room = plan.deadlineAt - Date.now() - plan.minAttemptMs;
    const wanted = Math.max(next.duration, plan.waitAfter(context.result));
    const backoff: IBackoff<RetryContext> = {
      duration: Math.max(0, Math.min(wanted, room)),
      next: (ctx) => step(next, ctx),
    };
    return backoff;
  };
  return { next: (context) => step(undefined, context) };
}

export interface BreakerOptions {
  threshold: number;
  cooldownMs: number;
  onState(state: CircuitLabel): void;
}

/** What a whole call returns to the breaker: the reply, and whether it was an upstream fault. */
export interface JudgedReply<R> {
  reply: R;
  upstreamFault: boolean;
}

/**
 * A circuit breaker over whole calls (retries included): `threshold` consecutive calls whose
 * final outcome is an upstream fault (see isUpstreamFault and GatewayError.upstreamFault) open it
 * for `cooldownMs`; then one probe call is let through (half-open) and its outcome closes or
 * re-opens it. Counting final outcomes rather than attempts keeps faults the retries absorb from
 * opening it. Any other answer, a 4xx or 429 included, resets the count (the upstream is alive);
 * errors the gateway raises itself (queue full, deadline in the queue, rejected credentials) are
 * thrown past cockatiel unhandled, so they neither count nor reset while closed.
 */
export class Breaker {
  readonly policy: CircuitBreakerPolicy;
  readonly #cooldownMs: number;
  #openedAt = 0;

  constructor({ threshold, cooldownMs, onState }: BreakerOptions) {
    this.#cooldownMs = cooldownMs;
    this.policy = circuitBreaker(
      handleWhen((error) => error instanceof GatewayError && error.upstreamFault).orWhenResult(
        (value) => (value as JudgedReply<unknown>).upstreamFault,
      ),
      { halfOpenAfter: cooldownMs, breaker: new ConsecutiveBreaker(threshold) },
    );
    this.policy.onStateChange((state) => {
      if (state === CircuitState.Open) this.#openedAt = Date.now();
      onState(labelOf(state));
    });
  }

  /**
   * The state as a caller sees it: once the cool-down is over the next call is let through as
   * the probe, so it reads `half_open` even before cockatiel moves there on that call.
   */
  state(now = Date.now()): CircuitLabel {
    const state = this.policy.state;
    if (state === CircuitState.Open && this.remainingMs(now) === 0) return 'half_open';
    return labelOf(state);
  }

  /**
   * Whether a call must fail fast. Hand-written on top of cockatiel: while its half-open probe is
   * in flight, cockatiel queues other calls until the probe ends (unbounded by their deadlines);
   * the contract wants them answered 503 at once.
   */
  rejectsNow(now = Date.now()): boolean {
    const state = this.policy.state;
    if (state === CircuitState.HalfOpen || state === CircuitState.Isolated) return true;
    return state === CircuitState.Open && this.remainingMs(now) > 0;
  }

  /** Cool-down left while open, in ms (0 when closed, half-open or due for a probe). */
  remainingMs(now = Date.now()): number {
    if (this.policy.state !== CircuitState.Open) return 0;
    return Math.max(0, this.#openedAt + this.#cooldownMs - now);
  }
}

function labelOf(state: CircuitState): CircuitLabel {
  switch (state) {
    case CircuitState.Closed:
      return 'closed';
    case CircuitState.HalfOpen:
      return 'half_open';
    default:
      return 'open';
  }
}
