/**
 * Request merging ("singleflight"): identical requests in flight at once make one upstream call,
 * and every merged request gets that call's answer or its error (docs/api.md → Cache and request
 * merging). Nothing here caches: an entry lives only while its call runs. An error marked
 * `personal` (the owner's own quota) is not shared: a waiter that sees one tries again itself.
 */
import { GatewayError } from '../errors.ts';

/** What crosses replicas: an upstream answer to pass through (status and exact body bytes). */
export interface MergePayload {
  status: number;
  body: Buffer;
}

/** Where a merged answer came from. */
export type MergeSource =
  /** This request ran `fn` itself (including a takeover and a Redis-down fallback). */
  | 'owner'
  /** It shared a call running in this process. */
  | 'local'
  /** It shared a call running on another replica, delivered over pub/sub. */
  | 'remote'
  /** The answer was already in the cache by the time it looked again. */
  | 'cache';

export interface MergeResult<T> {
  value: T;
  /** True when another request's call produced the value (`source` is not `owner`). */
  shared: boolean;
  source: MergeSource;
}

/** Countable events, for metrics. */
export type MergeEvent =
  /** A request joined a call already in flight in this process. */
  | 'merged'
  /** A request got its answer from another replica's call. */
  | 'remote'
  /** A waiter found the answer in the cache on its re-check. */
  | 'cached'
  /** A waiter took the lock of an owner that vanished without answering, and ran the call. */
  | 'takeover'
  /** Redis failed; the request ran with in-process merging only. */
  | 'fallback'
  /** A waiter reached its deadline. */
  | 'timeout'
  /** An owner found its lock gone or taken while its call was still running. */
  | 'lock_lost';

export interface MergeHooks {
  onEvent?: (event: MergeEvent) => void;
  /** Redis failures; each is survived (fallback, or the lock simply expires). */
  onError?: (error: unknown, op: string) => void;
}

export interface MergeRunOptions {
  /** Epoch ms after which a waiter gives up with a `timeout` GatewayError; `fn` keeps it too. */
  deadline: number;
  /**
   * Looks the answer up in the cache. A waiter calls it after subscribing, so an answer stored
   * (and announced) between its lock attempt and its subscription is still found.
   */
  getCached?: () => Promise<MergePayload | undefined>;
}

/** The common shape of both mergers, so the route does not care whether Redis is configured. */
export interface RequestMerger {
  run<T extends MergePayload>(
    key: string,
    fn: () => Promise<T>,
    options: MergeRunOptions,
  ): Promise<MergeResult<T | MergePayload>>;
  close(): Promise<void>;
}

// Hand-written rather than async-cache-dedupe: that package couples dedupe with its own cache
// (storage, TTLs, per-function `define`) and shares only cached values across processes; we need
// dedupe of raw upstream answers only, plus cross-replica locking with error propagation.
/** In-process merging: one call per key at a time; waiters share its value or its rejection. */
export class InflightMerger implements RequestMerger {
  readonly #inflight = new Map<string, Promise<unknown>>();
  readonly #onEvent: (event: MergeEvent) => void;

  constructor(hooks: Pick<MergeHooks, 'onEvent'> = {}) {
    this.#onEvent = hooks.onEvent ?? (() => {});
  }

  /** Calls in flight right now. */
  get size(): number {
    return this.#inflight.size;
  }

  async run<T>(
    key: string,
    fn: () => Promise<T>,
    _options?: MergeRunOptions,
  ): Promise<MergeResult<T>> {
    for (;;) {
      const existing = this.#inflight.get(key) as Promise<T> | undefined;
      if (existing === undefined)
        return { value: await this.#own(key, fn), shared: false, source: 'owner' };
      this.#onEvent('merged');
      try {
        return { value: await existing, shared: true, source: 'local' };
      } catch (error) {
        if (!isPersonal(error)) throw error;
      }
    }
  }

  #own<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const call = Promise.resolve().then(fn);
    this.#inflight.set(key, call);
    // Registered before any waiter's await, so the entry is gone by the time anyone sees the
    // result: a later request starts a fresh call, and an error is never reused.
    const forget = () => {
      if (this.#inflight.get(key) === call) this.#inflight.delete(key);
    };
    call.then(forget, forget);
    return call;
  }

  async close(): Promise<void> {}
}

/** An error about the owner's request alone (its quota), which merged requests must not inherit. */
export function isPersonal(error: unknown): boolean {
  return error instanceof GatewayError && error.personal;
}
