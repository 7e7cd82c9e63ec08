import type { Redis } from 'ioredis';
import type { CachedAnswer, CacheStore } from './store.ts';

export interface RedisCacheStoreOptions {
  /** Key prefix; the full key is `<prefix><cache key>`. */
  prefix?: string;
  /**
   * Upper bound on one store command, on top of the client's own `commandTimeout`: a slow or
   * unreachable Redis costs a request at most this long, then reads as a miss.
   */
  timeoutMs?: number;
  /** Told about every Redis failure; the failure itself is swallowed (miss, or write dropped). */
  onError?: (error: unknown, op: 'get' | 'set') => void;
}

export const REDIS_CACHE_DEFAULTS = {
  prefix: 'agw:cache:',
  timeoutMs: 1_000,
} as const;

/**
 * Value layout: a 4-byte header — magic `0xA6`, format version `1`, status as uint16 big-endian —
 * then the body bytes exactly as the upstream sent them. Binary-safe, one GET per lookup, and a
 * value that does not start with the header (another writer, an older format) reads as a miss.
 */
const MAGIC = 0xa6;
const FORMAT_VERSION = 1;
const HEADER_BYTES = 4;

export function encodeAnswer(answer: CachedAnswer): Buffer {
  const header = Buffer.alloc(HEADER_BYTES);
  header[0] = MAGIC;
  header[1] = FORMAT_VERSION;
  header.writeUInt16BE(answer.status, 2);
  return Buffer.concat([header, answer.body]);
}

export function decodeAnswer(value: Buffer): CachedAnswer | undefined {
  if (value.length < HEADER_BYTES || value[0] !== MAGIC || value[1] !== FORMAT_VERSION) {
    return undefined;
  }
  return { status: value.readUInt16BE(2), body: value.subarray(HEADER_BYTES) };
}

/** The shared store when REDIS_URL is set: every replica reads the answers any replica paid for. */
export class RedisCacheStore implements CacheStore {
  readonly #redis: Redis;
  readonly #prefix: string;
  readonly #timeoutMs: number;
  readonly #onError: (error: unknown, op: 'get' | 'set') => void;

  constructor(redis: Redis, options: RedisCacheStoreOptions = {}) {
    this.#redis = redis;
    this.#prefix = options.prefix ?? REDIS_CACHE_DEFAULTS.prefix;
    this.#timeoutMs = options.timeoutMs ?? REDIS_CACHE_DEFAULTS.timeoutMs;
    this.#onError = options.onError ?? (() => {});
  }

  async get(key: string): Promise<CachedAnswer | undefined> {
    try {
      const value = await this.#bounded(this.#redis.getBuffer(this.#prefix + key));
      return value === null ? undefined : decodeAnswer(value);
    } catch (error) {
      this.#onError(error, 'get');
      return undefined;
    }
  }

  async set(key: string, answer: CachedAnswer, ttlSeconds: number): Promise<void> {
    if (!(ttlSeconds > 0)) return;
    try {
      await this.#bounded(
        this.#redis.set(this.#prefix + key, encodeAnswer(answer), 'EX', Math.ceil(ttlSeconds)),
      );
    } catch (error) {
      this.#onError(error, 'set');
    }
  }

  /** Races a command against `timeoutMs`; the command itself is left to ioredis to settle. */
  #bounded<T>(command: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`redis cache command timed out after ${this.#timeoutMs} ms`)),
        this.#timeoutMs,
      );
      timer.unref();
    });
    // A late rejection after the timeout won must not surface as an unhandled rejection.
    command.catch(() => {});
    return Promise.race([command, timeout]).finally(() => clearTimeout(timer));
  }
}
