import { isBrokenCircuitError, isIsolatedCircuitError } from 'cockatiel';
import { Pool } from 'undici';
import { GatewayError } from '../errors.ts';
import { BACKOFF_DEFAULTS, Breaker, retryPolicyFor, transientReason } from './policy.ts';
import { isCredentialRejection, judgeReply, parseJson, upstreamErrorCode } from './reply.ts';
import { retryAfterMs, secondsFromMs } from './retry-after.ts';
import { type PooledToken, TokenPool } from './token-pool.ts';
import type { CircuitLabel, UpstreamCall, UpstreamEvents, UpstreamReply } from './types.ts';

export { retryAfterSeconds } from './retry-after.ts';
export type {
  CircuitLabel,
  CoreLogger,
  ExpectedReply,
  UpstreamCall,
  UpstreamCallReport,
  UpstreamEvents,
  UpstreamPath,
  UpstreamReply,
} from './types.ts';

/** Named defaults for the connection pool; each one is a deliberate choice, not undici's default. */
export const POOL_DEFAULTS = {
  connections: 256,
  connectTimeoutMs: 10_000,
  keepAliveTimeoutMs: 30_000,
  keepAliveMaxTimeoutMs: 300_000,
  /** Upstream JSON is small; a bigger reply is a fault, not an answer. */
  maxResponseBytes: 4 * 1024 * 1024,
} as const;

/** Named defaults for retries, the circuit breaker and the token pool (config passes its own). */
export const RESILIENCE_DEFAULTS = {
  maxRetries: 2,
  breakerThreshold: 5,
  breakerCooldownMs: 30_000,
  /** How long a rejected token stays out of rotation before one request may try it again. */
  tokenRecheckMs: 60_000,
  /** Upper bound of the least deadline left for a retry to start (see minAttemptMs). */
  minAttemptMs: 1_000,
} as const;

export interface UpstreamClientOptions {
  baseUrl: string;
  tokens: readonly string[];
  /** Whole-call deadline: every attempt, retry and backoff included. */
  timeoutMs: number;
  maxRetries?: number;
  /** Full-jitter exponential backoff: attempt n waits random [0, min(max, initial·2ⁿ⁻¹)). */
  backoff?: { initialDelayMs?: number; maxDelayMs?: number };
  /** A retry starts only if this much deadline is left after its wait; default min(1 s, timeoutMs/10). */
  minAttemptMs?: number;
  breakerThreshold?: number;
  breakerCooldownMs?: number;
  tokenRecheckMs?: number;
  events?: UpstreamEvents;
  pool?: { [K in keyof typeof POOL_DEFAULTS]?: number };
  /**
   * Admission for each upstream request (concurrency, rate and queue caps); it rejects with a
   * GatewayError when a request cannot be admitted before `signal` (the call's deadline) aborts.
   */
  gate?: UpstreamAdmission;
}

export interface UpstreamAdmission {
  run<T>(send: () => Promise<T>, signal: AbortSignal): Promise<T>;
}

/** What one call remembers across its attempts. */
interface CallState {
  readonly rejected: Set<PooledToken>;
  last?: PooledToken;
  firstSentAt?: number;
}

const CREDENTIALS_REJECTED = "the gateway's upstream credentials were rejected";

export class UpstreamClient {
  readonly #pool: Pool;
  readonly #pathPrefix: string;
  readonly #tokens: TokenPool;
  readonly #timeoutMs: number;
  readonly #maxRetries: number;
  readonly #backoff: { initialDelayMs: number; maxDelayMs: number };
  readonly #minAttemptMs: number;
  readonly #breaker: Breaker;
  readonly #events: UpstreamEvents;
  readonly #gate: UpstreamAdmission | undefined;

  constructor(options: UpstreamClientOptions) {
    const url = new URL(options.baseUrl);
    const pool = { ...POOL_DEFAULTS, ...options.pool };
    this.#pathPrefix = url.pathname.replace(/\/+$/, '');
    this.#timeoutMs = options.timeoutMs;
    this.#maxRetries = options.maxRetries ?? RESILIENCE_DEFAULTS.maxRetries;
    this.#backoff = { ...BACKOFF_DEFAULTS, ...options.backoff };
    this.#minAttemptMs =
      options.minAttemptMs ?? Math.min(RESILIENCE_DEFAULTS.minAttemptMs, options.timeoutMs / 10);
    this.#events = options.events ?? {};
    this.#gate = options.gate;
    this.#tokens = new TokenPool(
      options.tokens,
      options.tokenRecheckMs ?? RESILIENCE_DEFAULTS.tokenRecheckMs,
    );
    this.#breaker = new Breaker({
      threshold: options.breakerThreshold ?? RESILIENCE_DEFAULTS.breakerThreshold,
      cooldownMs: options.breakerCooldownMs ?? RESILIENCE_DEFAULTS.breakerCooldownMs,
      onState: (state) => this.#events.onCircuitState?.(state),
    });
    this.#pool = new Pool(url.origin, {
      connections: pool.connections,
      pipelining: 1,
      connectTimeout: pool.connectTimeoutMs,
      keepAliveTimeout: pool.keepAliveTimeoutMs,
      keepAliveMaxTimeout: pool.keepAliveMaxTimeoutMs,
      // The whole-call deadline below is the real bound; these only stop a stuck socket earlier.
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
      maxResponseSize: pool.maxResponseBytes,
    });
  }

  /** For /readyz and a gauge. After the cool-down it reads half_open: the next call probes. */
  circuitState(): CircuitLabel {
    return this.#breaker.state();
  }

  /** Tokens still in rotation (the upstream has not rejected them). */
  usableTokenCount(): number {
    return this.#tokens.usableCount();
  }

  /**
   * Forwards one request within the deadline, retrying transient faults. Resolves with an answer
   * to pass through unchanged; rejects with a GatewayError for every outcome the contract maps
   * (502, 503, 504).
   */
  async call(call: UpstreamCall): Promise<UpstreamReply> {
    if (!this.#tokens.hasCandidate()) throw this.#noUsableToken(call);
    if (this.#breaker.rejectsNow()) throw this.#circuitOpen();

    const deadlineAt = Date.now() + this.#timeoutMs;
    const deadline = new AbortController();
    const timer = setTimeout(
      () =>
        deadline.abort(
          new GatewayError('timeout', `upstream did not answer within ${this.#timeoutMs} ms`),
        ),
      this.#timeoutMs,
    );
    const state: CallState = { rejected: new Set() };
    const retry = retryPolicyFor({
      maxRetries: this.#maxRetries,
      backoff: this.#backoff,
      deadlineAt,
      minAttemptMs: this.#minAttemptMs,
      waitAfter: (outcome) => {
        if (!('value' in outcome)) return 0;
        const reply = outcome.value as UpstreamReply;
        // A 429 is about one token (its cool-down is set in #attempt): wait only if no other is free.
        if (reply.status === 429) return this.#tokens.readyIn(state.rejected);
        return retryAfterMs(reply.retryAfter) ?? 0;
      },
    });
    retry.onRetry((outcome) => this.#retried(call, transientReason(outcome) ?? 'unknown'));

    try {
      const reply = await this.#breaker.policy.execute(
        ({ signal }) => retry.execute(({ signal: s }) => this.#attempt(call, state, s), signal),
        deadline.signal,
      );
      return judgeReply(call, reply);
    } catch (error) {
      // Only reachable if the circuit opened between the check above and execute().
      if (isBrokenCircuitError(error) || isIsolatedCircuitError(error)) throw this.#circuitOpen();
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /** One attempt with a working token: a token the upstream rejects is swapped for the next. */
  async #attempt(
    call: UpstreamCall,
    state: CallState,
    signal: AbortSignal,
  ): Promise<UpstreamReply> {
    for (;;) {
      const entry = this.#tokens.pick({ avoid: state.last, exclude: state.rejected });
      if (entry === undefined) throw this.#noUsableToken(call);
      state.last = entry;
      // Every request, retries included, passes the gate: the upstream counts each one.
      const send = () => this.#send(call, state, entry.token, signal);
      const reply = await (this.#gate ? this.#gate.run(send, signal) : send());
      if (!isCredentialRejection(reply)) {
        if (this.#tokens.accept(entry)) {
          call.log.warn(
            { token_fingerprint: entry.fingerprint },
            'upstream token back in rotation',
          );
        }
        const wait = reply.status === 429 ? retryAfterMs(reply.retryAfter) : undefined;
        if (wait !== undefined) this.#tokens.coolDown(entry, Date.now() + wait);
        return reply;
      }
      state.rejected.add(entry);
      this.#rejected(call, entry, reply);
      if (!this.#tokens.hasCandidate(state.rejected)) {
        throw new GatewayError('upstream_error', CREDENTIALS_REJECTED);
      }
      // Retry at once on the next token: not a transient retry, so outside maxRetries.
      this.#retried(call, 'token_rejected');
    }
  }

  async #send(
    call: UpstreamCall,
    state: CallState,
    token: string,
    signal: AbortSignal,
  ): Promise<UpstreamReply> {
    const started = performance.now();
    state.firstSentAt ??= started;
    let status: number | 'error' = 'error';
    try {
      const response = await this.#pool.request({
        method: 'POST',
        path: this.#pathPrefix + call.path,
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/json',
          accept: 'application/json',
          'x-request-id': call.traceId,
        },
        body: call.body,
        signal,
      });
      const body = Buffer.from(await response.body.arrayBuffer());
      status = response.statusCode;
      const json = parseJson(body);
      const traceId = (json as { trace_id?: unknown } | undefined)?.trace_id;
      call.report.upstream_status = status;
      call.report.upstream_trace_id =
        typeof traceId === 'string' ? traceId.slice(0, 128) : undefined;
      const retryAfter = response.headers['retry-after'];
      return {
        status,
        body,
        json,
        retryAfter: typeof retryAfter === 'string' ? retryAfter : undefined,
      };
    } catch (error) {
      call.report.upstream_status = undefined;
      call.report.upstream_trace_id = undefined;
      if (signal.aborted && signal.reason instanceof GatewayError) throw signal.reason;
      throw new GatewayError('upstream_error', 'upstream could not be reached', { cause: error });
    } finally {
      const ended = performance.now();
      call.report.upstream_ms = Math.round(ended - state.firstSentAt);
      this.#events.onAttempt?.(status, Math.round(ended - started));
    }
  }

  #retried(call: UpstreamCall, reason: string): void {
    call.report.retries++;
    this.#events.onRetry?.(reason);
  }

  /** Logs a 401/403 on one token (fingerprint only, never the token) and takes it out of rotation. */
  #rejected(call: UpstreamCall, entry: PooledToken, reply: UpstreamReply): void {
    const outcome = this.#tokens.reject(entry);
    const fields = {
      upstream_status: reply.status,
      upstream_code: upstreamErrorCode(reply.json),
      token_fingerprint: entry.fingerprint,
    };
    if (outcome === 'disabled') {
      call.log.error(fields, "upstream rejected one of the gateway's tokens; out of rotation");
      this.#events.onTokenDisabled?.(entry.fingerprint);
    } else {
      call.log.error(fields, "upstream rejected the gateway's own token or balance");
    }
  }

  #noUsableToken(call: UpstreamCall): GatewayError {
    call.log.error(
      { tokens: this.#tokens.size },
      'no upstream token is usable: the upstream rejected them all',
    );
    return new GatewayError('upstream_error', CREDENTIALS_REJECTED);
  }

  #circuitOpen(): GatewayError {
    return new GatewayError(
      'upstream_unavailable',
      'upstream is failing; the gateway has paused calls to it, retry later',
      { headers: { 'retry-after': secondsFromMs(this.#breaker.remainingMs()) } },
    );
  }

  async close(): Promise<void> {
    await this.#pool.close();
  }
}
