import type { Redis } from 'ioredis';
import { LRUCache } from 'lru-cache';
import { type StoreErrorMode, sharedOrLocal } from './store-fallback.ts';

export interface WindowCount {
  /** Requests counted in the current window, this one included. */
  current: number;
  /** Milliseconds until the window resets. */
  ttl: number;
}

/** Same algorithm as @fastify/rate-limit's RedisStore: INCR, start the window on the first hit. */
const INCR_LUA = `
local current = redis.call('INCR', KEYS[1])
local ttl
if current == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
else
  ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    ttl = tonumber(ARGV[1])
  end
end
return {current, ttl}`;

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
