import { LRUCache } from 'lru-cache';
import type { CachedAnswer, CacheStore } from './store.ts';

export interface MemoryCacheStoreOptions {
  /** CACHE_MAX_ENTRIES: least recently used entries are evicted beyond this. */
  maxEntries: number;
  /** CACHE_MAX_BYTES: and beyond this many bytes of answers (bodies plus keys). */
  maxBytes: number;
}

/**
 * The default store: an in-process LRU with a TTL per entry. Expiry is checked lazily on read (no
 * timer per entry). Time comes from `Date.now()` rather than lru-cache's default
 * `performance.now()`, so fake timers drive expiry in tests; the clock source makes no difference
 * at a resolution of seconds.
 */
export class MemoryCacheStore implements CacheStore {
  readonly #lru: LRUCache<string, CachedAnswer>;

  constructor(options: MemoryCacheStoreOptions) {
    this.#lru = new LRUCache<string, CachedAnswer>({
      max: options.maxEntries,
      maxSize: options.maxBytes,
      sizeCalculation: (answer, key) => answer.body.length + key.length,
      perf: { now: () => Date.now() },
      // No cached clock: lru-cache otherwise reuses one reading for 1 ms of real time.
      ttlResolution: 0,
    });
  }

  /** Entries currently held (expired ones count until they are read or evicted). */
  get size(): number {
    return this.#lru.size;
  }

  async get(key: string): Promise<CachedAnswer | undefined> {
    return this.#lru.get(key);
  }

  async set(key: string, answer: CachedAnswer, ttlSeconds: number): Promise<void> {
    if (!(ttlSeconds > 0)) return;
    this.#lru.set(key, { status: answer.status, body: answer.body }, { ttl: ttlSeconds * 1000 });
  }

  async close(): Promise<void> {
    this.#lru.clear();
  }
}
