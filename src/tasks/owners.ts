import type { Redis } from 'ioredis';
import { LRUCache } from 'lru-cache';
import { dayBefore, SWEPT_DAYS_BACK, utcDay } from '../days.ts';

/**
 * Who created each async task: a task belongs to the client that submitted it, and only that
 * client may poll it. Kept a day (the upstream's own task deadline is 120 s; a day covers any
 * sensible polling). In memory per replica by default; in Redis when configured, so any replica
 * can answer a poll.
 */
export interface TaskOwners {
  record(taskId: string, clientId: string): Promise<void>;
  ownerOf(taskId: string): Promise<string | undefined>;
}

export const TASK_OWNER_TTL_MS = 86_400_000;

export class MemoryTaskOwners implements TaskOwners {
  readonly #owners: LRUCache<string, string>;

  constructor(options: { maxEntries: number; ttlMs?: number }) {
    this.#owners = new LRUCache({
      max: options.maxEntries,
      ttl: options.ttlMs ?? TASK_OWNER_TTL_MS,
      // Date.now(), so fake timers drive expiry in tests.
      perf: { now: () => Date.now() },
      ttlResolution: 0,
    });
  }

  async record(taskId: string, clientId: string): Promise<void> {
    this.#owners.set(taskId, clientId);
  }

  async ownerOf(taskId: string): Promise<string | undefined> {
    return this.#owners.get(taskId);
  }
}

/**
 * One hash per UTC day, task id → client id. No TTL (the compose Valkey evicts keys with one,
 * and an evicted owner would lock its client out of its own task); the writer deletes the hashes
 * of the days before yesterday (SWEPT_DAYS_BACK). A lookup
 * reads today's and yesterday's, which covers at least a day.
 */
export class RedisTaskOwners implements TaskOwners {
  readonly #redis: Redis;
  readonly #prefix: string;

  constructor(redis: Redis, prefix = 'agw:tasks:') {
    this.#redis = redis;
    this.#prefix = prefix;
  }

  async record(taskId: string, clientId: string, now = Date.now()): Promise<void> {
    const today = utcDay(new Date(now));
    await this.#redis
      .multi()
      .hset(this.#prefix + today, taskId, clientId)
      .del(...SWEPT_DAYS_BACK.map((days) => this.#prefix + dayBefore(today, days)))
      .exec();
  }

  async ownerOf(taskId: string, now = Date.now()): Promise<string | undefined> {
    const day = utcDay(new Date(now));
    const [today, yesterday] = await Promise.all([
      this.#redis.hget(this.#prefix + day, taskId),
      this.#redis.hget(this.#prefix + dayBefore(day, 1), taskId),
    ]);
    return today ?? yesterday ?? undefined;
  }
}
