import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { CacheEvent } from './cache/cached-answers.ts';
import type { MergeEvent } from './cache/merge.ts';
import type { Completion } from './plugins/request-context.ts';
import type { CircuitLabel, UpstreamEvents } from './upstream/types.ts';

const CIRCUIT_VALUE: Record<CircuitLabel, number> = { closed: 0, half_open: 1, open: 2 };

/** The upstream's documented codes for a rejected token or account; others read `other`. */
const TOKEN_CODES = new Set([
  'invalid_token',
  'token_expired',
  'token_mismatched',
  'no_token',
  'used_up',
  'disabled',
]);

/** Request latencies span 1 ms (a cache hit) to the 130 s deadline. */
const REQUEST_BUCKETS = [
  0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 130,
];
/** Upstream answers typically take ~30 s. */
const UPSTREAM_BUCKETS = [0.05, 0.25, 1, 2.5, 5, 10, 15, 20, 25, 30, 40, 50, 60, 90, 120, 130];

/** What a readiness check found (plugins/health.ts); undefined when all is well. */
export interface ReadinessState {
  status: 'degraded' | 'failing';
}

/** Live numbers the gauges read at scrape time. */
export interface GaugeSources {
  circuit(): CircuitLabel;
  tokens(): { usable: number; total: number };
  gate(): { running: number; queued: number };
  inflight(): { bytes: number; requests: number };
}

/**
 * The gateway's Prometheus metrics, on a registry of its own (several apps can share a process in
 * tests). Label values are bounded: clients come from the registry (others read `anonymous`),
 * routes from the route table, statuses are HTTP codes, events and reasons are fixed sets. No
 * secret or image data is ever a label.
 */
export class GatewayMetrics {
  readonly registry = new Registry();
  readonly #isKnownClient: (id: string) => boolean;
  readonly #requests: Counter<'route' | 'status' | 'client'>;
  readonly #requestDuration: Histogram<'route'>;
  readonly #upstreamRequests: Counter<'status'>;
  readonly #upstreamDuration: Histogram;
  readonly #billed: Counter;
  readonly #cacheEvents: Counter<'event'>;
  readonly #mergeEvents: Counter<'event'>;
  readonly #rateLimited: Counter<'client'>;
  readonly #quotaRefused: Counter<'client'>;
  readonly #inflightRefused: Counter<'client' | 'limit'>;
  readonly #retries: Counter<'reason'>;
  readonly #budgetExhausted: Counter;
  readonly #callsSaved: Counter;
  readonly #circuitTransitions: Counter<'state'>;
  readonly #tokenTransitions: Counter<'state' | 'code'>;
  #sources: GaugeSources | undefined;

  constructor(options: { isKnownClient: (id: string) => boolean; defaultMetrics?: boolean }) {
    this.#isKnownClient = options.isKnownClient;
    const registers = [this.registry];
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
    const counter = <L extends string>(name: string, help: string, labelNames: L[] = []) =>
      new Counter<L>({ name, help, labelNames, registers });
    this.#requests = counter(
      'gateway_requests_total',
      'Requests answered, by route pattern, status and client id',
      ['route', 'status', 'client'],
    );
    this.#requestDuration = new Histogram({
      name: 'gateway_request_duration_seconds',
      help: 'Time from request to response, in the gateway',
      labelNames: ['route'],
      buckets: REQUEST_BUCKETS,
      registers,
    });
    this.#upstreamRequests = counter(
      'gateway_upstream_requests_total',
      "Requests sent upstream (retries included), by the upstream's status or 'error'",
      ['status'],
    );
    this.#upstreamDuration = new Histogram({
      name: 'gateway_upstream_duration_seconds',
      help: 'Duration of each upstream request',
      buckets: UPSTREAM_BUCKETS,
      registers,
    });
    this.#billed = counter(
      'gateway_upstream_billed_total',
      'Requests whose upstream call was billed (answered 2xx)',
    );
    this.#cacheEvents = counter(
      'gateway_cache_events_total',
      'Recognition requests by cache outcome: hit, miss, bypass, merged',
      ['event'],
    );
    this.#mergeEvents = counter(
      'gateway_merge_events_total',
      'Request merging: merged, remote, cached, takeover, fallback, timeout, lock_lost',
      ['event'],
    );
    this.#rateLimited = counter(
      'gateway_rate_limited_total',
      'Requests refused with 429 for a client rate limit',
      ['client'],
    );
    this.#quotaRefused = counter(
      'gateway_quota_refused_total',
      'Requests refused with 429 for a daily quota',
      ['client'],
    );
    this.#inflightRefused = counter(
      'gateway_inflight_refused_total',
      'Requests refused for in-flight limits: client_in_flight, bytes_in_flight',
      ['client', 'limit'],
    );
    this.#retries = counter(
      'gateway_upstream_retries_total',
      'Upstream requests re-sent, by reason (status_503, ECONNRESET, token_rejected, …)',
      ['reason'],
    );
    this.#budgetExhausted = counter(
      'gateway_upstream_retry_budget_exhausted_total',
      'Transient faults answered without a retry because the retry budget was spent',
    );
    this.#callsSaved = counter(
      'gateway_upstream_calls_saved_total',
      'Billed upstream calls avoided: cache hits plus merged requests',
    );
    this.#circuitTransitions = counter(
      'gateway_circuit_transitions_total',
      'Circuit breaker state changes, by the state entered',
      ['state'],
    );
    this.#tokenTransitions = counter(
      'gateway_upstream_token_transitions_total',
      "Upstream tokens leaving (disabled, with the upstream's code) or rejoining (enabled) rotation",
      ['state', 'code'],
    );

    const sources = () => this.#sources;
    const gauge = (name: string, help: string, read: (s: GaugeSources) => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          const s = sources();
          if (s) this.set(read(s));
        },
      });
    gauge(
      'gateway_circuit_state',
      'Upstream circuit breaker: 0 closed, 1 half-open, 2 open',
      (s) => CIRCUIT_VALUE[s.circuit()],
    );
    gauge(
      'gateway_upstream_tokens_usable',
      'Upstream tokens the upstream did not reject on their last use',
      (s) => s.tokens().usable,
    );
    gauge('gateway_upstream_tokens', 'Upstream tokens configured', (s) => s.tokens().total);
    gauge('gateway_upstream_in_flight', 'Upstream requests running now', (s) => s.gate().running);
    gauge(
      'gateway_upstream_queued',
      'Upstream requests waiting at the gate for a start slot',
      (s) => s.gate().queued,
    );
    gauge(
      'gateway_inflight_bytes',
      'Request body bytes held by requests in flight',
      (s) => s.inflight().bytes,
    );
    gauge(
      'gateway_inflight_requests',
      'Requests in flight on the limited routes',
      (s) => s.inflight().requests,
    );
  }

  /** Where the gauges read their values (the upstream client, gate and limits, once built). */
  readFrom(sources: GaugeSources): void {
    this.#sources = sources;
  }

  /**
   * One series per readiness check, so degraded states that keep /readyz at 200 (Redis lost under
   * `allow`, an open breaker, no usable token) are visible to alerts too.
   */
  readReadinessFrom(run: () => Promise<ReadonlyMap<string, ReadinessState | undefined>>): void {
    new Gauge({
      name: 'gateway_readiness_check',
      help: 'Readiness checks: 0 ok, 1 degraded (still serving, /readyz 200), 2 failing (/readyz 503)',
      labelNames: ['check'],
      registers: [this.registry],
      async collect() {
        for (const [check, result] of await run()) {
          this.set({ check }, result === undefined ? 0 : result.status === 'degraded' ? 1 : 2);
        }
      },
    });
  }

  /** Client ids outside the registry (or none) share one label value. */
  clientLabel(clientId: string | undefined): string {
    return clientId !== undefined && this.#isKnownClient(clientId) ? clientId : 'anonymous';
  }

  /** One completed request: counts, latency, cache outcome, billing and which limit refused it. */
  observe = (completion: Completion): void => {
    const { route, status, clientId, durationMs, cache, billed, limit } = completion;
    const client = this.clientLabel(clientId);
    this.#requests.inc({ route, status: String(status), client });
    this.#requestDuration.observe({ route }, durationMs / 1000);
    if (billed) this.#billed.inc();
    if (limit === 'rate_limit') this.#rateLimited.inc({ client });
    else if (limit === 'quota') this.#quotaRefused.inc({ client });
    else if (limit !== undefined) this.#inflightRefused.inc({ client, limit });
    if (cache !== undefined) this.cacheEvent(cache);
  };

  cacheEvent(event: CacheEvent): void {
    this.#cacheEvents.inc({ event });
    if (event === 'hit' || event === 'merged') this.#callsSaved.inc();
  }

  mergeEvent = (event: MergeEvent): void => {
    this.#mergeEvents.inc({ event });
  };

  /** Hooks for the upstream client. */
  readonly upstreamEvents: UpstreamEvents = {
    onAttempt: (status, ms) => {
      this.#upstreamRequests.inc({ status: String(status) });
      this.#upstreamDuration.observe(ms / 1000);
    },
    onRetry: (reason) => this.#retries.inc({ reason }),
    onRetryBudgetExhausted: () => this.#budgetExhausted.inc(),
    onCircuitState: (state) => this.#circuitTransitions.inc({ state }),
    onTokenState: (_fingerprint, state, code) =>
      this.#tokenTransitions.inc({
        state,
        code: code === undefined ? 'none' : TOKEN_CODES.has(code) ? code : 'other',
      }),
  };
}
