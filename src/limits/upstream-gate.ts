import PQueue from 'p-queue';
import { GatewayError } from '../errors.ts';

export interface UpstreamGateOptions {
  /** Upstream calls in flight at once (UPSTREAM_MAX_CONCURRENCY). */
  maxConcurrency: number;
  /** Calls started per second across the whole token pool. */
  ratePerSecond: number;
  /** Calls allowed to wait for a slot (UPSTREAM_QUEUE_MAX); beyond it a call is refused at once. */
  maxQueued: number;
}

/**
 * Protects the upstream (and our bill) from bursts: a global cap on concurrent calls, a strict
 * sliding-window cap on calls started per second, and a bounded wait queue. p-queue does the
 * scheduling; this class only adds the queue bound and turns waits into the contract's errors.
 */
export class UpstreamGate {
  readonly #queue: PQueue;
  readonly #maxQueued: number;

  constructor(options: UpstreamGateOptions) {
    this.#maxQueued = options.maxQueued;
    this.#queue = new PQueue({
      concurrency: options.maxConcurrency,
      intervalCap: options.ratePerSecond,
      interval: 1_000,
      // The upstream counts requests per second per token; fixed windows would allow 2x bursts.
      strict: true,
    });
  }

  /**
   * Runs `fn` when a slot is free. Refuses with 503 `upstream_unavailable` when the queue is full,
   * or when `signal` aborts (the caller's deadline) while the call is still waiting.
   */
  async run<T>(fn: () => Promise<T>, signal: AbortSignal): Promise<T> {
    if (this.#queue.size >= this.#maxQueued && !this.#hasFreeSlot()) {
      throw new GatewayError(
        'upstream_unavailable',
        'the gateway is at its upstream capacity; retry later',
        {
          headers: { 'retry-after': '1' },
        },
      );
    }
    let started = false;
    try {
      return await this.#queue.add(
        () => {
          started = true;
          return fn();
        },
        { signal },
      );
    } catch (error) {
      if (!started && signal.aborted) {
        throw new GatewayError(
          'upstream_unavailable',
          'no upstream capacity freed up before the deadline; retry later',
          { headers: { 'retry-after': '1' }, cause: error },
        );
      }
      throw error;
    }
  }

  #hasFreeSlot(): boolean {
    return this.#queue.pending < this.#queue.concurrency && !this.#queue.isRateLimited;
  }

  /** Calls running and waiting, for metrics and tests. */
  get load(): { running: number; queued: number } {
    return { running: this.#queue.pending, queued: this.#queue.size };
  }
}
