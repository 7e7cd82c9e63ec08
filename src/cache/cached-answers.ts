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

  constructor(options: {
    /** Undefined when caching is off (CACHE_TTL_SECONDS=0); merging still applies. */
    store: CacheStore | undefined;
    merger: RequestMerger;
    ttlSeconds: number;
    onEvent?: (event: CacheEvent) => void;
  }) {
    this.#store = options.ttlSeconds > 0 ? options.store : undefined;
    this.#merger = options.merger;
    this.#ttlSeconds = options.ttlSeconds;
    this.#onEvent = options.onEvent ?? (() => {});
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
      if (cached)
        return this.#finish({ ...cached, event: 'hit', cacheStatus: `${CACHE_NAME}; hit` });
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
