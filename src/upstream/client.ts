import { isBrokenCircuitError, isIsolatedCircuitError } from 'cockatiel';
import { Pool } from 'undici';
import { GatewayError } from '../errors.ts';
import type { UpstreamGate } from './gate.ts';
import {
  BACKOFF_DEFAULTS,
  Breaker,
  errorCode,
  isUpstreamFault,
  type JudgedReply,
  retryPolicyFor,
  TRANSIENT_STATUSES,
  transientReason,
} from './policy.ts';
import { credentialProblem, judgeReply, parseJson, upstreamErrorCode } from './reply.ts';
import { retryAfterMs, secondsFromMs } from './retry-after.ts';
import type { RetryBudget } from './retry-budget.ts';
import type { SecretMask } from './secrets.ts';
import { type PooledToken, TokenPool } from './token-pool.ts';
import type { CircuitLabel, UpstreamCall, UpstreamEvents, UpstreamReply } from './types.ts';

export type {
  CircuitLabel,
  CoreLogger,
  UpstreamCall,
  UpstreamCallReport,
  UpstreamEvents,
  UpstreamPath,
  UpstreamReply,
} from './types.ts';

/** Named defaults for the connection pool; each one is a deliberate choice, not undici's default. */
export const POOL_DEFAULTS = {
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
  /** Upper bound of the least deadline left for an attempt to start (see minAttemptMs). */
  minAttemptMs: 1_000,
  /** A 429 without retry-after cools its token down this long. */
  defaultCoolDownMs: 1_000,
} as const;

export interface UpstreamClientOptions {
  baseUrl: string;
  tokens: readonly string[];
  /** UPSTREAM_TIMEOUT_MS: what a request gets in all; the request's own deadline is passed per call. */
  timeoutMs: number;
  /** Calls in flight at once: the connection pool's size. */
  maxConnections: number;
  maxRetries?: number;
  /** Full-jitter exponential backoff: attempt n waits random [0, min(max, initial·2ⁿ⁻¹)). */
  backoff?: { initialDelayMs?: number; maxDelayMs?: number };
  /** An attempt starts only if this much deadline is left; default min(1 s, timeoutMs/10). */
  minAttemptMs?: number;
  breakerThreshold?: number;
  breakerCooldownMs?: number;
  tokenRecheckMs?: number;
  events?: UpstreamEvents;
  pool?: { [K in keyof typeof POOL_DEFAULTS]?: number };
  /** Admission of every attempt (rate, concurrency, fair queue). */
  gate?: UpstreamGate;
  /** Per-token rate the gate gets for each usable token. */
  ratePerToken?: number;
  retryBudget?: RetryBudget;
  secrets?: SecretMask;
}

/** What one call remembers across its attempts. */
interface CallState {
  readonly rejected: Set<PooledToken>;
  last?: PooledToken;
  firstSentAt?: number;
  /** The last token rejection, which decides the answer when no token is left. */
  lastRejection?: 'rejected' | 'used_up' | 'disabled';
}

/**
 * The client left before its call was sent, so it is not sent. Personal: a request merged into
 * this one starts over (and sends the call itself) instead of inheriting a stranger's departure.
 */
function clientLeft(cause: unknown): GatewayError {
  return new GatewayError('upstream_unavailable', 'the client left before its call was sent', {
    personal: true,
    cause,
  });
}

const CREDENTIALS_REJECTED =
  "the gateway's upstream credentials were rejected; this is the gateway's account, not your key — tell the gateway's operator";

/**
 * Ace Data Cloud's API, called safely: the request's deadline, transient faults retried within a
 * retry budget, a circuit breaker that sees only upstream trouble, a token pool that survives a
 * rejected or exhausted token, and fair admission at the gate. No Fastify here.
 */
export class UpstreamClient {
  readonly #pool: Pool;
  readonly #pathPrefix: string;
  readonly #tokens: TokenPool;
  readonly #timeoutMs: number;
  readonly #maxRetries: number;
  readonly #backoff: { initialDelayMs: number; maxDelayMs: number };
  readonly #minAttemptMs: number;
  readonly #maxResponseBytes: number;
  readonly #breaker: Breaker;
  readonly #events: UpstreamEvents;
  readonly #gate: UpstreamGate | undefined;
  readonly #ratePerToken: number | undefined;
  readonly #budget: RetryBudget | undefined;
  readonly #secrets: SecretMask | undefined;
  /** Why the last token left rotation: the answer while none is usable. */
  #lastRejection: CallState['lastRejection'];

  constructor(options: UpstreamClientOptions) {
    const url = new URL(options.baseUrl);
    const pool = { ...POOL_DEFAULTS, ...options.pool };
    this.#pathPrefix = url.pathname.replace(/\/+$/, '');
    this.#maxResponseBytes = pool.maxResponseBytes;
    this.#timeoutMs = options.timeoutMs;
    this.#maxRetries = options.maxRetries ?? RESILIENCE_DEFAULTS.maxRetries;
    this.#backoff = { ...BACKOFF_DEFAULTS, ...options.backoff };
    this.#minAttemptMs =
      options.minAttemptMs ?? Math.min(RESILIENCE_DEFAULTS.minAttemptMs, options.timeoutMs / 10);
    this.#events = options.events ?? {};
    this.#gate = options.gate;
    this.#ratePerToken = options.ratePerToken;
    this.#budget = options.retryBudget;
    this.#secrets = options.secrets;
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
      connections: options.maxConnections,
      pipelining: 1,
      connectTimeout: pool.connectTimeoutMs,
      keepAliveTimeout: pool.keepAliveTimeoutMs,
      keepAliveMaxTimeout: pool.keepAliveMaxTimeoutMs,
      // The request's deadline is the real bound; these only stop a stuck socket.
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
      maxResponseSize: pool.maxResponseBytes,
    });
  }

  /** For /readyz and a gauge. After the cool-down it reads half_open: the next call probes. */
  circuitState(): CircuitLabel {
    return this.#breaker.state();
  }

  /** Tokens in rotation and in all, for /readyz and a gauge. */
  tokenState(): { usable: number; total: number } {
    return { usable: this.#tokens.usableCount(), total: this.#tokens.size };
  }

  /**
   * Forwards one request within its deadline, retrying transient faults. Resolves with an answer
   * to pass through unchanged; rejects with a GatewayError for every outcome the contract maps.
   */
  async call(call: UpstreamCall): Promise<UpstreamReply> {
    if (!this.#tokens.hasCandidate()) throw this.#noUsableToken(call, this.#lastRejection);
    if (this.#breaker.rejectsNow()) throw this.#circuitOpen();
    // A request that spent its deadline in queues and merges is answered now rather than sent to
    // be cut off (retries are held to the same rule by the policy). Checked before the breaker
    // runs it: a half-open breaker must not take such a call as its probe, which would close it
    // without the upstream having been asked.
    if (Date.now() + this.#minAttemptMs > call.deadline) {
      throw new GatewayError(
        'timeout',
        'too little of the request deadline is left to call the upstream',
      );
    }

    const deadline = new AbortController();
    const timer = setTimeout(
      () => deadline.abort(new GatewayError('timeout', 'the request deadline passed')),
      Math.max(0, call.deadline - Date.now()),
    );
    const state: CallState = { rejected: new Set() };
    const retry = retryPolicyFor({
      kind: call.kind,
      maxRetries: this.#maxRetries,
      backoff: this.#backoff,
      deadlineAt: call.deadline,
      minAttemptMs: this.#minAttemptMs,
      waitAfter: (outcome) => {
        if (!('value' in outcome)) return 0;
        const reply = outcome.value as UpstreamReply;
        // A 429 is about one token (its cool-down is set in #attempt): wait only if no other is free.
        if (reply.status === 429) return this.#tokens.readyIn(state.rejected);
        return retryAfterMs(reply.retryAfter) ?? 0;
      },
      mayRetry: () => {
        if (!this.#budget || this.#budget.tryRetry()) return true;
        call.report.retry_budget_exhausted = true;
        this.#events.onRetryBudgetExhausted?.();
        return false;
      },
    });
    retry.onRetry((outcome) =>
      this.#retried(call, transientReason(outcome, call.kind) ?? 'unknown'),
    );
    this.#budget?.recordCall();

    try {
      const judged = await this.#breaker.policy.execute(async ({ signal }) => {
        const reply = await retry.execute(({ signal: s }) => this.#attempt(call, state, s), signal);
        return { reply, upstreamFault: isUpstreamFault(reply.status, call.kind) };
      }, deadline.signal);
      return judgeReply(call, (judged as JudgedReply<UpstreamReply>).reply, () =>
        this.#tokens.readyIn(),
      );
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
      if (entry === undefined) throw this.#noUsableToken(call, state.lastRejection);
      state.last = entry;
      // Waiting (cool-down, gate) ends when the deadline passes or the client leaves.
      const waiting = call.abandoned ? AbortSignal.any([signal, call.abandoned]) : signal;
      const send = () => this.#send(call, state, entry.token, signal);
      let reply: UpstreamReply;
      try {
        await this.#coolDown(entry, call, waiting);
        // Every request, retries included, passes the gate: the upstream counts each one.
        reply = await (this.#gate
          ? this.#gate.run(
              { clientId: call.clientId, deadline: call.deadline, signal: waiting },
              send,
            )
          : send());
      } catch (error) {
        if (call.abandoned?.aborted) throw clientLeft(error);
        throw error;
      }
      const problem = credentialProblem(reply);
      if (problem === undefined) {
        // A transient answer (5xx, 429, 408) may come before the token is even looked at.
        const vouches = !TRANSIENT_STATUSES.has(reply.status);
        if (vouches && this.#tokens.accept(entry)) {
          this.#tokenState(call, entry, 'enabled', undefined);
        }
        if (reply.status === 429) {
          const wait = retryAfterMs(reply.retryAfter) ?? RESILIENCE_DEFAULTS.defaultCoolDownMs;
          this.#tokens.coolDown(entry, Date.now() + wait);
        }
        return reply;
      }
      state.rejected.add(entry);
      state.lastRejection = problem;
      this.#lastRejection = problem;
      this.#rejected(call, entry, reply);
      if (!this.#tokens.hasCandidate(state.rejected)) throw this.#noUsableToken(call, problem);
      // Retry at once on the next token: not a transient retry, so outside maxRetries and budget.
      this.#retried(call, 'token_rejected');
    }
  }

  /**
   * The upstream asked (429 + retry-after) not to use this token until later: wait for it when
   * the wait fits the deadline, or answer 429 now with how long to wait.
   */
  async #coolDown(entry: PooledToken, call: UpstreamCall, signal: AbortSignal): Promise<void> {
    const wait = entry.coolUntil - Date.now();
    if (wait <= 0) return;
    if (Date.now() + wait + this.#minAttemptMs > call.deadline) {
      throw new GatewayError(
        'too_many_requests',
        `the upstream is saturated and asked the gateway to slow down; retry in ${secondsFromMs(wait)} s`,
        { headers: { 'retry-after': secondsFromMs(wait) } },
      );
    }
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(done, wait);
      function done() {
        signal.removeEventListener('abort', aborted);
        resolve();
      }
      function aborted() {
        clearTimeout(timer);
        reject(signal.reason);
      }
      signal.addEventListener('abort', aborted, { once: true });
    });
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
      const raw = Buffer.from(await response.body.arrayBuffer());
      const body = this.#secrets ? this.#secrets.mask(raw, call.clientKey) : raw;
      status = response.statusCode;
      // Polls are free; a task's result is billed once, counted at its submission.
      if (call.kind === 'solve' && status >= 200 && status < 300) call.report.billed = true;
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
      if (signal.aborted) {
        // The deadline passed while the upstream had the request. It is the upstream's fault only
        // if it had a fair chance: a request that waited in queues and merges before being sent
        // with little time left says nothing about the upstream's health.
        const inFlightMs = performance.now() - started;
        throw new GatewayError(
          'timeout',
          'the upstream did not answer before the request deadline',
          {
            upstreamFault: inFlightMs >= this.#timeoutMs / 2,
            cause: signal.reason,
          },
        );
      }
      if (errorCode(error) === 'UND_ERR_RES_EXCEEDED_MAX_SIZE') {
        // An answer, only too big to be one: malformed, not an outage (the breaker ignores it).
        throw new GatewayError(
          'upstream_error',
          `the upstream sent a reply larger than the gateway accepts (${this.#maxResponseBytes} bytes)`,
          { cause: error },
        );
      }
      throw new GatewayError('upstream_error', 'the upstream could not be reached', {
        cause: error,
        upstreamFault: true,
      });
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

  /** Logs a rejection of one token (fingerprint only, never the token); takes it out of rotation. */
  #rejected(call: UpstreamCall, entry: PooledToken, reply: UpstreamReply): void {
    const outcome = this.#tokens.reject(entry);
    const code = upstreamErrorCode(reply.json);
    const fields = {
      upstream_status: reply.status,
      upstream_code: code,
      token_fingerprint: entry.fingerprint,
    };
    if (outcome === 'disabled') {
      call.log.error(fields, "the upstream rejected one of the gateway's tokens; out of rotation");
      this.#tokenState(call, entry, 'disabled', code);
    } else {
      call.log.error(fields, "the upstream rejected the gateway's token or account");
    }
  }

  #tokenState(
    call: UpstreamCall,
    entry: PooledToken,
    state: 'disabled' | 'enabled',
    code: string | undefined,
  ): void {
    if (state === 'enabled') {
      call.log.warn({ token_fingerprint: entry.fingerprint }, 'upstream token back in rotation');
    }
    this.#events.onTokenState?.(entry.fingerprint, state, code);
    if (this.#ratePerToken !== undefined) {
      this.#gate?.setRate(this.#ratePerToken * Math.max(1, this.#tokens.usableCount()));
    }
  }

  /**
   * No token is left: the answer an SDK understands. A balance or a disabled account answers as
   * the upstream does (403 `used_up` / `disabled`: the SDK raises its balance or disabled error
   * and stops retrying); a rejected token is the gateway's misconfiguration, 502.
   */
  #noUsableToken(call: UpstreamCall, last: CallState['lastRejection']): GatewayError {
    call.log.error({ tokens: this.#tokens.size }, 'no upstream token is usable');
    // When a token will be tried again: the soonest a client's retry can meet a working one.
    const recheck = this.#tokens.recheckIn();
    const headers = { 'retry-after': secondsFromMs(Number.isFinite(recheck) ? recheck : 0) };
    if (last === 'used_up') {
      return new GatewayError(
        'used_up',
        "the balance of the gateway's Ace Data Cloud account is used up; tell the gateway's operator",
        { headers },
      );
    }
    if (last === 'disabled') {
      return new GatewayError(
        'disabled',
        "the gateway's Ace Data Cloud account or token is disabled; tell the gateway's operator",
        { headers },
      );
    }
    return new GatewayError('upstream_error', CREDENTIALS_REJECTED, { headers });
  }

  #circuitOpen(): GatewayError {
    return new GatewayError(
      'upstream_unavailable',
      'the upstream is failing; the gateway has paused calls to it, retry later',
      { headers: { 'retry-after': secondsFromMs(this.#breaker.remainingMs()) } },
    );
  }

  async close(): Promise<void> {
    await this.#pool.close();
  }
}
