import type { Redis } from 'ioredis';
import { LRUCache } from 'lru-cache';
import { type StoreErrorMode, sharedOrLocal } from './store-fallback.ts';

export interface WindowCount {
  /** Requests counted in the current window, this one included. */
  current: number;
  /** Milliseconds until the window resets. */
  ttl: number;
}

/**
 * A fixed window per client in one hash (`s` window start, `c` count), timed by Redis's own clock
 * so replicas agree. No TTL: the compose Valkey evicts only keys with one (volatile-lru), so a
 * flood of cached answers can never reset a rate limit. One small key per client.
 */
const INCR_LUA = `
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window = tonumber(ARGV[1])
local start = tonumber(redis.call('HGET', KEYS[1], 's') or '-1')
if start < 0 or ms >= start + window or ms < start then
  redis.call('HSET', KEYS[1], 's', ms, 'c', 1)
  return {1, window}
end
return {redis.call('HINCRBY', KEYS[1], 'c', 1), start + window - ms}`;

export interface WindowCounterOptions {
  /** Shared counters; per replica when absent. */
  redis?: Redis;
  onStoreError: StoreErrorMode;
  onError?: (error: unknown) => void;
  keyPrefix?: string;
  /** Bound on per-replica counters (one per client). */
  maxLocalKeys?: number;
}

/**
 * Fixed-window request counters for the per-client rate limit. Written here rather than using
 * @fastify/rate-limit's stores because those have no fallback: with Redis down, `allow` must keep
 * limiting per replica and `deny` must refuse with 503, neither of which `skipOnError` offers.
 */
export class WindowCounter {
  readonly #options: WindowCounterOptions;
  readonly #local: LRUCache<string, { count: number; resetAt: number }>;
  readonly #prefix: string;

  constructor(options: WindowCounterOptions) {
    this.#options = options;
    this.#prefix = options.keyPrefix ?? 'agw:rl:';
    this.#local = new LRUCache({ max: options.maxLocalKeys ?? 10_000 });
  }

  incr(key: string, windowMs: number): Promise<WindowCount> {
    const { redis } = this.#options;
    return sharedOrLocal(
      redis &&
        (async () => {
          const [current, ttl] = (await redis.eval(INCR_LUA, 1, this.#prefix + key, windowMs)) as [
            number,
            number,
          ];
          return { current: Number(current), ttl: Number(ttl) };
        }),
      () => this.#incrLocal(key, windowMs),
      { mode: this.#options.onStoreError, onError: this.#options.onError },
      'rate-limit',
    );
  }

  #incrLocal(key: string, windowMs: number): WindowCount {
    const now = Date.now();
    let entry = this.#local.get(key);
    if (!entry || entry.resetAt <= now) entry = { count: 0, resetAt: now + windowMs };
    entry.count += 1;
    this.#local.set(key, entry);
    return { current: entry.count, ttl: entry.resetAt - now };
  }
}
