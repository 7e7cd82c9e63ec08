import type { Redis } from 'ioredis';
import { LRUCache } from 'lru-cache';

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

const dayOf = (ms: number) => new Date(ms).toISOString().slice(0, 10);

/** Days back whose hashes a write deletes: yesterday's stays, it is still read. */
const STALE_DAYS = [2, 3, 4, 5, 6, 7, 8];

/**
 * One hash per UTC day, task id → client id. No TTL (the compose Valkey evicts keys with one,
 * and an evicted owner would lock its client out of its own task); the writer deletes the hashes
 * of two to eight days ago, so a gateway idle for up to a week leaves nothing behind. A lookup
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
    await this.#redis
      .multi()
      .hset(this.#prefix + dayOf(now), taskId, clientId)
      .del(...STALE_DAYS.map((days) => this.#prefix + dayOf(now - days * 86_400_000)))
      .exec();
  }

  async ownerOf(taskId: string, now = Date.now()): Promise<string | undefined> {
    const [today, yesterday] = await Promise.all([
      this.#redis.hget(this.#prefix + dayOf(now), taskId),
      this.#redis.hget(this.#prefix + dayOf(now - 86_400_000), taskId),
    ]);
    return today ?? yesterday ?? undefined;
  }
}
