import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { CacheEvent } from './cache/cached-answers.ts';
import type { CircuitLabel, UpstreamEvents } from './upstream/client.ts';

const CIRCUIT_VALUE: Record<CircuitLabel, number> = { closed: 0, half_open: 1, open: 2 };

/** Request latencies span 1 ms (a cache hit) to the 130 s deadline. */
const REQUEST_BUCKETS = [
  0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 130,
];
/** Upstream answers typically take ~30 s. */
const UPSTREAM_BUCKETS = [0.05, 0.25, 1, 2.5, 5, 10, 15, 20, 25, 30, 40, 50, 60, 90, 120, 130];

/**
 * The gateway's Prometheus metrics, on a registry of its own (several apps can share a process in
 * tests). Label values are bounded: clients come from the registry, routes from the route table,
 * statuses are HTTP codes. No secret or image data is ever a label.
 */
export class GatewayMetrics {
  readonly registry = new Registry();
  readonly #knownClients: ReadonlySet<string>;
  readonly #requests: Counter<'route' | 'status' | 'client'>;
  readonly #requestDuration: Histogram<'route'>;
  readonly #upstreamRequests: Counter<'status'>;
  readonly #upstreamDuration: Histogram;
  readonly #cacheEvents: Counter<'event'>;
  readonly #rateLimited: Counter<'client'>;
  readonly #retries: Counter;
  readonly #callsSaved: Counter;
  #circuitState: () => CircuitLabel = () => 'closed';

  constructor(options: { clientIds: readonly string[]; defaultMetrics?: boolean }) {
    this.#knownClients = new Set(options.clientIds);
    const registers = [this.registry];
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
    this.#requests = new Counter({
      name: 'gateway_requests_total',
      help: 'Requests answered, by route pattern, status and client id',
      labelNames: ['route', 'status', 'client'],
      registers,
    });
    this.#requestDuration = new Histogram({
      name: 'gateway_request_duration_seconds',
      help: 'Time from request to response, in the gateway',
      labelNames: ['route'],
      buckets: REQUEST_BUCKETS,
      registers,
    });
    this.#upstreamRequests = new Counter({
      name: 'gateway_upstream_requests_total',
      help: "Requests sent upstream (retries included), by the upstream's status or 'error'",
      labelNames: ['status'],
      registers,
    });
    this.#upstreamDuration = new Histogram({
      name: 'gateway_upstream_duration_seconds',
      help: 'Duration of each upstream request',
      buckets: UPSTREAM_BUCKETS,
      registers,
    });
    this.#cacheEvents = new Counter({
      name: 'gateway_cache_events_total',
      help: 'Recognition requests by cache outcome: hit, miss, bypass, merged',
      labelNames: ['event'],
      registers,
    });
    this.#rateLimited = new Counter({
      name: 'gateway_rate_limited_total',
      help: 'Requests refused with 429 for a client rate limit or daily quota',
      labelNames: ['client'],
      registers,
    });
    this.#retries = new Counter({
      name: 'gateway_upstream_retries_total',
      help: 'Upstream requests re-sent after a transient fault or a rejected token',
      registers,
    });
    this.#callsSaved = new Counter({
      name: 'gateway_upstream_calls_saved_total',
      help: 'Billed upstream calls avoided: cache hits plus merged requests',
      registers,
    });
    const circuitState = () => this.#circuitState();
    new Gauge({
      name: 'gateway_circuit_state',
      help: 'Upstream circuit breaker: 0 closed, 1 half-open, 2 open',
      registers,
      collect() {
        this.set(CIRCUIT_VALUE[circuitState()]);
      },
    });
  }

  /** Client ids outside the registry (or none) share one label value. */
  clientLabel(clientId: string | undefined): string {
    return clientId !== undefined && this.#knownClients.has(clientId) ? clientId : 'anonymous';
  }

  observeRequest(
    route: string,
    status: number,
    clientId: string | undefined,
    seconds: number,
  ): void {
    this.#requests.inc({ route, status: String(status), client: this.clientLabel(clientId) });
    this.#requestDuration.observe({ route }, seconds);
  }

  cacheEvent = (event: CacheEvent): void => {
    this.#cacheEvents.inc({ event });
    if (event === 'hit' || event === 'merged') this.#callsSaved.inc();
  };

  rateLimited = (clientId: string | undefined): void => {
    this.#rateLimited.inc({ client: this.clientLabel(clientId) });
  };

  /** Hooks for the upstream client. */
  readonly upstreamEvents: UpstreamEvents = {
    onAttempt: (status, ms) => {
      this.#upstreamRequests.inc({ status: String(status) });
      this.#upstreamDuration.observe(ms / 1000);
    },
    onRetry: () => this.#retries.inc(),
  };

  /** Where the circuit gauge reads its state (the upstream client, once built). */
  readCircuitFrom(read: () => CircuitLabel): void {
    this.#circuitState = read;
  }
}
