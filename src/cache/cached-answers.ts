import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { UpstreamReply } from '../upstream/types.ts';
import type { RequestMerger } from './merge.ts';
import { type CacheStore, isCacheable } from './store.ts';

/** What the completion log line's `cache` field and the cache metric record. */
export type CacheEvent = 'hit' | 'miss' | 'bypass' | 'merged';

/** The request's `cache-control` directives that concern us (RFC 9111 §5.2.1). */
export interface CacheDirectives {
  /** Skip the lookup; the fresh answer is still stored. */
  noCache: boolean;
  /** Skip the lookup and the store. */
  noStore: boolean;
}

export function parseCacheControl(header: string | string[] | undefined): CacheDirectives {
  const directives = new Set(
    (Array.isArray(header) ? header.join(',') : (header ?? ''))
      .toLowerCase()
      .split(',')
      .map((d) => d.trim().split('=')[0]),
  );
  return { noCache: directives.has('no-cache'), noStore: directives.has('no-store') };
}

export interface AnswerRequest {
  /** cacheKey() of what is forwarded. */
  key: string;
  directives: CacheDirectives;
  /** Makes this request's own upstream call (quota included); used when no answer can be shared. */
  call: () => Promise<UpstreamReply>;
  /** Epoch ms: the request's deadline, which a merged waiter keeps too. */
  deadline: number;
  /** `rawDigest()` of the request's exact bytes, remembered when the answer is cacheable. */
  rawDigest?: string;
  /** Images in the request, remembered with the raw digest for the log line of a raw hit. */
  images: number;
  /** Called when this request turns out to share another's call, even if that call fails. */
  onShared?: () => void;
}

export interface Answer {
  status: number;
  body: Buffer;
  /** The upstream's `retry-after`, passed on with an error it answered (not across replicas). */
  retryAfter?: string;
  event: CacheEvent;
  /** RFC 9211 Cache-Status value. */
  cacheStatus: string;
}

/** A cache hit found from the raw request bytes alone. */
export interface RawHit extends Answer {
  images: number;
}

const CACHE_NAME = 'acedata-gateway';
const HIT = `${CACHE_NAME}; hit`;

/**
 * Never pay twice for one answer: a lookup, then one upstream call per key in flight (merged in
 * process, and across replicas with Redis), storing only answers the contract allows. Who pays
 * for the call is the caller's business (`call` reserves quota); merged requests pay nothing.
 */
export class CachedAnswers {
  readonly #store: CacheStore | undefined;
  readonly #merger: RequestMerger;
  readonly #ttlSeconds: number;
  /**
   * Raw-bytes digest → cache key, for requests answered from the cache or stored. Bytes identical
   * to a request that was validated and answered need no parsing or validation again: a repeat is
   * recognised from a hash of its body alone (docs/benchmarks.md, hit scenario).
   */
  readonly #rawIndex: LRUCache<string, { key: string; images: number }> | undefined;

  constructor(options: {
    /** Undefined when caching is off (CACHE_TTL_SECONDS=0); merging still applies. */
    store: CacheStore | undefined;
    merger: RequestMerger;
    ttlSeconds: number;
    /** Bound of the raw-bytes index; CACHE_MAX_ENTRIES. */
    maxEntries: number;
  }) {
    this.#store = options.ttlSeconds > 0 ? options.store : undefined;
    this.#rawIndex = this.#store ? new LRUCache({ max: options.maxEntries }) : undefined;
    this.#merger = options.merger;
    this.#ttlSeconds = options.ttlSeconds;
  }

  /** Identifies a request by its route and exact body bytes (undefined when caching is off). */
  rawDigest(route: string, body: Buffer): string | undefined {
    if (!this.#rawIndex) return undefined;
    return createHash('sha256').update(route).update('\0').update(body).digest('base64');
  }

  /** A cache hit for bytes seen before, without parsing them; undefined means "go the long way". */
  async rawHit(rawDigest: string): Promise<RawHit | undefined> {
    const entry = this.#rawIndex?.get(rawDigest);
    if (!entry || !this.#store) return undefined;
    const cached = await this.#store.get(entry.key);
    if (!cached) return undefined;
    return { ...cached, event: 'hit', cacheStatus: HIT, images: entry.images };
  }

  /** Forwards without reading or feeding shared state (async submissions, `no-store`). */
  async bypass(call: () => Promise<UpstreamReply>, directives: CacheDirectives): Promise<Answer> {
    const { status, body, retryAfter } = await call();
    const fwd = directives.noStore ? 'request' : 'bypass';
    return { status, body, retryAfter, event: 'bypass', cacheStatus: `${CACHE_NAME}; fwd=${fwd}` };
  }

  async answer(request: AnswerRequest): Promise<Answer> {
    const { key, directives } = request;
    if (directives.noStore) return this.bypass(request.call, directives);
    const store = this.#store;
    const lookup = store && !directives.noCache ? () => store.get(key) : undefined;
    const cached = await lookup?.();
    if (cached) {
      this.#rememberRaw(request);
      return { ...cached, event: 'hit', cacheStatus: HIT };
    }

    let ownCall = false;
    const merged = await this.#merger
      .run(
        key,
        async () => {
          ownCall = true;
          const reply = await request.call();
          const stored = store !== undefined && isCacheable(reply.status, reply.json);
          if (stored)
            await store.set(key, { status: reply.status, body: reply.body }, this.#ttlSeconds);
          return { status: reply.status, body: reply.body, retryAfter: reply.retryAfter, stored };
        },
        { deadline: request.deadline, getCached: lookup },
      )
      .catch((error: unknown) => {
        // A merged request that gets the shared call's error (or times out waiting for it).
        if (!ownCall) request.onShared?.();
        throw error;
      });
    const { status, body } = merged.value;
    const retryAfter = 'retryAfter' in merged.value ? merged.value.retryAfter : undefined;
    if (merged.source === 'cache') return { status, body, event: 'hit', cacheStatus: HIT };
    if (merged.shared) {
      const cacheStatus = `${CACHE_NAME}; fwd=uri-miss; collapsed`;
      return { status, body, retryAfter, event: 'merged', cacheStatus };
    }
    if (!store) {
      return {
        status,
        body,
        retryAfter,
        event: 'bypass',
        cacheStatus: `${CACHE_NAME}; fwd=bypass`,
      };
    }
    const stored = 'stored' in merged.value && merged.value.stored === true;
    if (stored) this.#rememberRaw(request);
    const fwd = directives.noCache ? 'request' : 'uri-miss';
    const cacheStatus = `${CACHE_NAME}; fwd=${fwd}${stored ? '; stored' : ''}`;
    return { status, body, retryAfter, event: 'miss', cacheStatus };
  }

  #rememberRaw(request: AnswerRequest): void {
    if (request.rawDigest !== undefined) {
      this.#rawIndex?.set(request.rawDigest, { key: request.key, images: request.images });
    }
  }
}
