import type { Redis } from 'ioredis';
import { dayBefore } from '../days.ts';
import { addCounts, type DayCounts } from './counts.ts';

/** Where usage counts live: this process's memory, or Redis (shared by every replica). */
export interface UsageStore {
  /** Adds a batch of counts to `day`. */
  add(day: string, counts: DayCounts): Promise<void>;
  /** Every count of `day`. */
  read(day: string): Promise<DayCounts>;
}

/** This replica's counts. Keeps today and yesterday only. */
export class MemoryUsageStore implements UsageStore {
  readonly #days = new Map<string, DayCounts>();

  /** Synchronous, for the request path. */
  addNow(day: string, counts: DayCounts): void {
    let fields = this.#days.get(day);
    if (!fields) {
      fields = new Map();
      this.#days.set(day, fields);
      const oldest = dayBefore(day, 1);
      for (const known of this.#days.keys()) if (known < oldest) this.#days.delete(known);
    }
    addCounts(fields, counts);
  }

  async add(day: string, counts: DayCounts): Promise<void> {
    this.addNow(day, counts);
  }

  async read(day: string): Promise<DayCounts> {
    return new Map(this.#days.get(day));
  }
}

export const USAGE_KEY_PREFIX = 'agw:usage:';

/** `agw:usage:<YYYY-MM-DD>`: one hash per day, field `<client>|<kind>`. */
export function usageKey(day: string): string {
  return `${USAGE_KEY_PREFIX}${day}`;
}

/** How many days before yesterday a writer deletes (a longer outage leaves a small hash). */
const CLEANUP_DAYS = 30;

/**
 * Usage in Redis. Day hashes have no TTL: the compose Valkey evicts keys with a TTL under memory
 * pressure (volatile-lru) and never those without, so counts survive; instead, once a day per
 * process, the writer deletes the days before yesterday. One MULTI per batch: every field of a
 * batch is applied, or none is.
 */
export class RedisUsageStore implements UsageStore {
  readonly #redis: Redis;
  /** The newest day whose older days this process has deleted. */
  #cleanedFor = '';

  constructor(redis: Redis) {
    this.#redis = redis;
  }

  async add(day: string, counts: DayCounts): Promise<void> {
    const key = usageKey(day);
    const multi = this.#redis.multi();
    for (const [field, count] of counts) multi.hincrby(key, field, count);
    const cleaning = day > this.#cleanedFor;
    if (cleaning) {
      const old = Array.from({ length: CLEANUP_DAYS }, (_, i) => usageKey(dayBefore(day, i + 2)));
      multi.del(...old);
    }
    const results = await multi.exec();
    const failed = results?.find(([error]) => error)?.[0];
    if (results === null || failed) throw failed ?? new Error('usage batch discarded');
    if (cleaning) this.#cleanedFor = day;
  }

  async read(day: string): Promise<DayCounts> {
    const hash = await this.#redis.hgetall(usageKey(day));
    return new Map(Object.entries(hash).map(([field, value]) => [field, Number(value)]));
  }
}
