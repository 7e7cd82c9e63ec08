import type { Redis } from 'ioredis';
import { GatewayError } from '../errors.ts';
import { type StoreErrorMode, sharedOrLocal } from './store-fallback.ts';

/** A counter store for daily quotas: reserve one unit below a limit, or give one back. */
export interface QuotaCounter {
  /** Adds one to `key` if that stays within `limit`; resolves the new count, or -1 when full. */
  reserve(key: string, limit: number, ttlSeconds: number): Promise<number>;
  release(key: string): Promise<void>;
  used(key: string): Promise<number>;
}

/** Per-replica counters (the default, and the fallback while Redis is down). */
export class MemoryQuotaCounter implements QuotaCounter {
  readonly #counts = new Map<string, { count: number; expiresAt: number }>();

  async reserve(key: string, limit: number, ttlSeconds: number): Promise<number> {
    const now = Date.now();
    const entry = this.#counts.get(key);
    const current =
      entry && entry.expiresAt > now ? entry : { count: 0, expiresAt: now + ttlSeconds * 1000 };
    if (current.count >= limit) return -1;
    current.count += 1;
    this.#counts.set(key, current);
    this.#sweep(now);
    return current.count;
  }

  async release(key: string): Promise<void> {
    const entry = this.#counts.get(key);
    if (entry && entry.count > 0) entry.count -= 1;
  }

  async used(key: string): Promise<number> {
    const entry = this.#counts.get(key);
    return entry && entry.expiresAt > Date.now() ? entry.count : 0;
  }

  /** Yesterday's keys expire; one key per client per day keeps this map small. */
  #sweep(now: number): void {
    for (const [key, entry] of this.#counts) if (entry.expiresAt <= now) this.#counts.delete(key);
  }
}

/** Atomic check-and-increment, so replicas sharing one Redis never admit more than the limit. */
const RESERVE_LUA = `
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if count > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return -1
end
return count`;

const RELEASE_LUA = `
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count > 0 then return redis.call('DECR', KEYS[1]) end
return 0`;

export class RedisQuotaCounter implements QuotaCounter {
  readonly #redis: Redis;

  constructor(redis: Redis) {
    this.#redis = redis;
  }

  async reserve(key: string, limit: number, ttlSeconds: number): Promise<number> {
    return Number(await this.#redis.eval(RESERVE_LUA, 1, key, limit, ttlSeconds));
  }

  async release(key: string): Promise<void> {
    await this.#redis.eval(RELEASE_LUA, 1, key);
  }

  async used(key: string): Promise<number> {
    return Number((await this.#redis.get(key)) ?? 0);
  }
}

export interface DailyQuotaOptions {
  /** Shared counter (Redis); when absent, counters are per replica. */
  shared?: QuotaCounter;
  /** While the shared counter fails: count per replica (`allow`) or refuse (`deny`). */
  onStoreError: StoreErrorMode;
  onError?: (error: unknown) => void;
  onRefused?: (clientId: string) => void;
  keyPrefix?: string;
}

/** A reservation for one billed upstream call; give it back if the call was not billed. */
export interface QuotaReservation {
  release(): Promise<void>;
}

const NOTHING_RESERVED: QuotaReservation = { release: async () => {} };

/**
 * Daily per-client quotas of billed upstream calls, reset at UTC midnight. A unit is reserved
 * before the call (so concurrent calls cannot overshoot) and released when the call turned out
 * not to be billed (the upstream bills only successful results).
 */
export class DailyQuota {
  readonly #fallback = new MemoryQuotaCounter();
  readonly #options: DailyQuotaOptions;
  readonly #prefix: string;

  constructor(options: DailyQuotaOptions) {
    this.#options = options;
    this.#prefix = options.keyPrefix ?? 'agw:quota:';
  }

  async reserve(
    clientId: string,
    perDay: number | undefined,
    now = new Date(),
  ): Promise<QuotaReservation> {
    if (perDay === undefined) return NOTHING_RESERVED;
    const day = now.toISOString().slice(0, 10);
    const key = `${this.#prefix}${clientId}:${day}`;
    // Kept two days so a clock skew between replicas around midnight cannot revive a count.
    const ttlSeconds = 2 * 86_400;
    const counter = await this.#counterFor(async (c) => c.reserve(key, perDay, ttlSeconds));
    if (counter.result === -1) {
      this.#options.onRefused?.(clientId);
      const resetsAt = `${nextUtcMidnight(now).toISOString().slice(0, 19)}Z`;
      throw new GatewayError(
        'too_many_requests',
        `daily quota of ${perDay} upstream calls used up for client ${clientId}; it resets at ${resetsAt} (UTC midnight)`,
        {
          headers: {
            'retry-after': String(
              Math.ceil((nextUtcMidnight(now).getTime() - now.getTime()) / 1000),
            ),
          },
        },
      );
    }
    return {
      release: () => counter.store.release(key).catch((error) => this.#options.onError?.(error)),
    };
  }

  #counterFor(
    op: (counter: QuotaCounter) => Promise<number>,
  ): Promise<{ store: QuotaCounter; result: number }> {
    const { shared } = this.#options;
    return sharedOrLocal(
      shared && (async () => ({ store: shared, result: await op(shared) })),
      async () => ({ store: this.#fallback, result: await op(this.#fallback) }),
      { mode: this.#options.onStoreError, onError: this.#options.onError },
      'quota',
    );
  }
}

export function nextUtcMidnight(now: Date): Date {
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1));
}
