import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { QuotaReservation } from '../limits/quota.ts';
import type { UpstreamReply } from '../upstream/client.ts';
import { type CacheKeyBody, cacheKey } from './key.ts';
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
  route: string;
  body: CacheKeyBody & { async?: boolean };
  directives: CacheDirectives;
  /** Reserves the caller's quota for one billed call (a no-op without a quota). */
  reserveQuota: () => Promise<QuotaReservation>;
  /** Makes the upstream call for this request. */
  callUpstream: () => Promise<UpstreamReply>;
  /** Epoch ms after which a merged waiter gives up. */
  deadline: number;
  /** `rawDigest()` of the request's exact bytes, remembered when the answer is cacheable. */
  rawDigest?: string;
}

/** What a repeat of byte-identical request needs to be answered before it is even parsed. */
interface RawEntry {
  key: string;
  images: number;
}

/** A cache hit found from the raw request bytes alone. */
export interface RawHit extends Answer {
  images: number;
}

export interface Answer {
  status: number;
  body: Buffer;
  event: CacheEvent;
  /** RFC 9211 Cache-Status value. */
  cacheStatus: string;
}

const CACHE_NAME = 'acedata-gateway';

interface OwnedAnswer {
  status: number;
  body: Buffer;
  stored: boolean;
}

/**
 * Never pay twice for one answer: a lookup, then one upstream call per key in flight (merged in
 * process, and across replicas with Redis), storing only answers the contract allows. Quota is
 * reserved before joining and given back unless this request's own call was billed, so merged
 * requests are free and another client's quota can never fail this one.
 */
export class CachedAnswers {
  readonly #store: CacheStore | undefined;
  readonly #merger: RequestMerger;
  readonly #ttlSeconds: number;
  readonly #onEvent: (event: CacheEvent) => void;
  /**
   * Raw-bytes digest → cache key, for requests answered from the cache or stored. Bytes identical
   * to a request that was validated and answered need no parsing or validation again: a repeat is
   * recognised from a hash of its body alone (docs/benchmarks.md, hit scenario).
   */
  readonly #rawIndex: LRUCache<string, RawEntry> | undefined;

  constructor(options: {
    /** Undefined when caching is off (CACHE_TTL_SECONDS=0); merging still applies. */
    store: CacheStore | undefined;
    merger: RequestMerger;
    ttlSeconds: number;
    onEvent?: (event: CacheEvent) => void;
    /** Bound of the raw-bytes index; CACHE_MAX_ENTRIES. */
    maxEntries: number;
  }) {
    this.#store = options.ttlSeconds > 0 ? options.store : undefined;
    this.#rawIndex = this.#store ? new LRUCache({ max: options.maxEntries }) : undefined;
    this.#merger = options.merger;
    this.#ttlSeconds = options.ttlSeconds;
    this.#onEvent = options.onEvent ?? (() => {});
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
    return {
      ...this.#finish({ ...cached, event: 'hit', cacheStatus: `${CACHE_NAME}; hit` }),
      images: entry.images,
    };
  }

  #rememberRaw(request: AnswerRequest, key: string): void {
    if (request.rawDigest !== undefined) {
      this.#rawIndex?.set(request.rawDigest, { key, images: request.body.queries.length });
    }
  }

  async answer(request: AnswerRequest): Promise<Answer> {
    const { directives } = request;
    // Async submissions create a task per call and are never stored; a no-store request must not
    // feed or read shared state either. Both go straight to the upstream.
    if (request.body.async === true || directives.noStore) {
      const reply = await this.#billedCall(request);
      return this.#finish({
        ...reply,
        event: 'bypass',
        cacheStatus: `${CACHE_NAME}; fwd=${directives.noStore ? 'request' : 'bypass'}`,
      });
    }

    const key = cacheKey(request.route, request.body);
    const store = this.#store;
    if (store && !directives.noCache) {
      const cached = await store.get(key);
      if (cached) {
        this.#rememberRaw(request, key);
        return this.#finish({ ...cached, event: 'hit', cacheStatus: `${CACHE_NAME}; hit` });
      }
    }

    const reservation = await request.reserveQuota();
    let ownCallBilled = false;
    try {
      const merged = await this.#merger.run(
        key,
        async (): Promise<OwnedAnswer> => {
          const reply = await request.callUpstream();
          ownCallBilled = isBilled(reply.status);
          const stored = store !== undefined && isCacheable(reply.status, reply.json, false);
          if (stored)
            await store.set(key, { status: reply.status, body: reply.body }, this.#ttlSeconds);
          return { status: reply.status, body: reply.body, stored };
        },
        {
          deadline: request.deadline,
          getCached: store && !directives.noCache ? () => store.get(key) : undefined,
        },
      );
      const { status, body } = merged.value;
      if (merged.source === 'cache')
        return this.#finish({ status, body, event: 'hit', cacheStatus: `${CACHE_NAME}; hit` });
      if (merged.shared) {
        return this.#finish({
          status,
          body,
          event: 'merged',
          cacheStatus: `${CACHE_NAME}; fwd=uri-miss; collapsed`,
        });
      }
      if (!store)
        return this.#finish({
          status,
          body,
          event: 'bypass',
          cacheStatus: `${CACHE_NAME}; fwd=bypass`,
        });
      const stored = 'stored' in merged.value && merged.value.stored === true;
      if (stored) this.#rememberRaw(request, key);
      const fwd = directives.noCache ? 'request' : 'uri-miss';
      return this.#finish({
        status,
        body,
        event: 'miss',
        cacheStatus: `${CACHE_NAME}; fwd=${fwd}${stored ? '; stored' : ''}`,
      });
    } finally {
      if (!ownCallBilled) await reservation.release();
    }
  }

  async #billedCall(request: AnswerRequest): Promise<UpstreamReply> {
    const reservation = await request.reserveQuota();
    let billed = false;
    try {
      const reply = await request.callUpstream();
      billed = isBilled(reply.status);
      return reply;
    } finally {
      if (!billed) await reservation.release();
    }
  }

  #finish(answer: Answer): Answer {
    this.#onEvent(answer.event);
    return answer;
  }
}

/** The upstream bills successful results only. */
function isBilled(status: number): boolean {
  return status >= 200 && status < 300;
}
