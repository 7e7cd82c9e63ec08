import type { Redis } from 'ioredis';
import { dayBefore, SWEPT_DAYS_BACK, utcDay } from '../days.ts';
import { GatewayError } from '../errors.ts';
import { type StoreErrorMode, sharedOrLocal } from './store-fallback.ts';

/** A counter store for daily quotas: reserve one unit below a limit, or give one back. */
export interface QuotaCounter {
  /**
   * Adds one to today's count if that stays within `limit`; resolves the new count, or -1 when
   * full. `stale` are earlier days' keys of the same client, which the store may delete.
   */
  reserve(key: string, limit: number, stale: readonly string[]): Promise<number>;
  release(key: string): Promise<void>;
}

/** Per-replica counters (the default, and the fallback while Redis is down). */
export class MemoryQuotaCounter implements QuotaCounter {
  readonly #counts = new Map<string, number>();

  async reserve(key: string, limit: number, stale: readonly string[]): Promise<number> {
    for (const old of stale) this.#counts.delete(old);
    const count = this.#counts.get(key) ?? 0;
    if (count >= limit) return -1;
    this.#counts.set(key, count + 1);
    return count + 1;
  }

  async release(key: string): Promise<void> {
    const count = this.#counts.get(key) ?? 0;
    if (count > 0) this.#counts.set(key, count - 1);
  }
}

/**
 * Atomic check-and-increment, so replicas sharing one Redis never admit more than the limit.
 * Counters carry no TTL: the compose Valkey evicts only keys with one (volatile-lru), so a flood
 * of cached answers can never evict a quota. Earlier days' keys are deleted here instead.
 */
const RESERVE_LUA = `
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
local count = redis.call('INCR', KEYS[1])
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

  async reserve(key: string, limit: number, stale: readonly string[]): Promise<number> {
    return Number(await this.#redis.eval(RESERVE_LUA, 1 + stale.length, key, ...stale, limit));
  }

  async release(key: string): Promise<void> {
    await this.#redis.eval(RELEASE_LUA, 1, key);
  }
}

export interface DailyQuotaOptions {
  /** Shared counter (Redis); when absent, counters are per replica. */
  shared?: QuotaCounter;
  /** While the shared counter fails: count per replica (`allow`) or refuse (`deny`). */
  onStoreError: StoreErrorMode;
  onError?: (error: unknown) => void;
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
    const today = utcDay(now);
    const key = this.#keyOf(clientId, today);
    const stale = SWEPT_DAYS_BACK.map((days) => this.#keyOf(clientId, dayBefore(today, days)));
    const counter = await this.#counterFor(async (c) => c.reserve(key, perDay, stale));
    if (counter.result === -1) throw quotaRefusal(clientId, perDay, now);
    return {
      release: () => counter.store.release(key).catch((error) => this.#options.onError?.(error)),
    };
  }

  #keyOf(clientId: string, day: string): string {
    return `${this.#prefix}${day}:${clientId}`;
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

/** 429 with the time to midnight; `personal`: a request merged into this one is not refused. */
function quotaRefusal(clientId: string, perDay: number, now: Date): GatewayError {
  const midnight = nextUtcMidnight(now);
  const seconds = Math.ceil((midnight.getTime() - now.getTime()) / 1000);
  return new GatewayError(
    'too_many_requests',
    `daily quota of ${perDay} upstream calls used up for client ${clientId}; it resets at ${midnight.toISOString().slice(0, 19)}Z (UTC midnight)`,
    { headers: { 'retry-after': String(seconds) }, personal: true, limit: 'quota' },
  );
}

export function nextUtcMidnight(now: Date): Date {
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1));
}
