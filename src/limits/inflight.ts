import { GatewayError } from '../errors.ts';

export interface InflightLimitsOptions {
  /** INFLIGHT_BYTES_MAX: request bodies held at once, all clients together. */
  maxBytes: number;
  /** CLIENT_INFLIGHT_BYTES_MAX: one client's share of it. */
  maxBytesPerClient: number;
}

/** One admitted request's hold on the budgets; released exactly once. */
export interface InflightHold {
  /** The body turned out smaller than reserved (a chunked body is reserved at the body limit). */
  shrinkTo(bytes: number): void;
  release(): void;
}

interface ClientUse {
  requests: number;
  bytes: number;
}

const RETRY_SOON = { 'retry-after': '1' };

/**
 * What one replica holds at once: a global budget of body bytes, each client's share of it, and
 * each client's number of requests in flight. Every upstream call holds its request for seconds
 * to minutes, so these — not the rate — decide what one client can do to the others. Over a
 * budget the answer is immediate (never an out-of-memory crash): 429 when the client is over its
 * own share (it can slow down), 503 when the gateway as a whole is full.
 */
export class InflightLimits {
  readonly #options: InflightLimitsOptions;
  readonly #clients = new Map<string, ClientUse>();
  #bytes = 0;

  constructor(options: InflightLimitsOptions) {
    this.#options = options;
  }

  /** Bytes held and requests in flight, for metrics. */
  get load(): { bytes: number; requests: number } {
    let requests = 0;
    for (const use of this.#clients.values()) requests += use.requests;
    return { bytes: this.#bytes, requests };
  }

  /** Admits one request of `bytes`, or throws the refusal. */
  admit(clientId: string, maxRequests: number, bytes: number): InflightHold {
    const use = this.#clients.get(clientId) ?? { requests: 0, bytes: 0 };
    if (use.requests >= maxRequests) {
      throw new GatewayError(
        'too_many_requests',
        `client ${clientId} already has ${maxRequests} requests in flight, its limit; retry when one has finished`,
        { headers: RETRY_SOON, limit: 'client_in_flight' },
      );
    }
    if (use.bytes + bytes > this.#options.maxBytesPerClient) {
      throw new GatewayError(
        'too_many_requests',
        `client ${clientId} has its share of request bytes in flight (${this.#options.maxBytesPerClient} bytes); retry when a request has finished`,
        { headers: RETRY_SOON, limit: 'bytes_in_flight' },
      );
    }
    if (this.#bytes + bytes > this.#options.maxBytes) {
      throw new GatewayError(
        'upstream_unavailable',
        'the gateway holds as many request bytes as its memory budget allows; retry shortly',
        { headers: RETRY_SOON, limit: 'bytes_in_flight' },
      );
    }
    use.requests++;
    use.bytes += bytes;
    this.#bytes += bytes;
    this.#clients.set(clientId, use);
    let held = bytes;
    let released = false;
    return {
      shrinkTo: (actual) => {
        if (released || actual >= held) return;
        use.bytes -= held - actual;
        this.#bytes -= held - actual;
        held = actual;
      },
      release: () => {
        if (released) return;
        released = true;
        use.requests--;
        use.bytes -= held;
        this.#bytes -= held;
        if (use.requests === 0) this.#clients.delete(clientId);
      },
    };
  }
}
