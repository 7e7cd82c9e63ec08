import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import { CachedAnswers, parseCacheControl } from '../cache/cached-answers.ts';
import { MemoryCacheStore } from '../cache/memory-store.ts';
import { InflightMerger, type MergeEvent } from '../cache/merge.ts';
import { RedisMerger } from '../cache/redis-merge.ts';
import { RedisCacheStore } from '../cache/redis-store.ts';
import type { CacheStore } from '../cache/store.ts';

declare module 'fastify' {
  interface FastifyInstance {
    answers: CachedAnswers;
  }
  interface FastifyRequest {
    /** `answers.rawDigest()` of the body, on routes that answer repeats from raw bytes. */
    rawDigest: string | undefined;
  }
  interface FastifyContextConfig {
    /** Answers come from the cache and identical requests in flight are merged. */
    cached?: boolean;
  }
}

export interface CachePluginOptions {
  ttlSeconds: number;
  maxEntries: number;
  maxBytes: number;
  onMergeEvent?: (event: MergeEvent) => void;
}

/**
 * Owns the answer cache and the request merger — in memory by default, in Redis (shared by every
 * replica) when REDIS_URL is set — and the pipeline's raw-bytes stage: on cached routes, a
 * byte-identical repeat of a body answered before is answered from the cache before it is even
 * parsed (it was validated when its answer was stored).
 */
const cache: FastifyPluginAsync<CachePluginOptions> = async (app, options) => {
  const redis = app.redis?.client;
  const onError = (error: unknown, op: string) =>
    app.log.debug({ err: error, op }, 'cache store error');
  const store: CacheStore = redis
    ? new RedisCacheStore(redis, { onError })
    : new MemoryCacheStore({ maxEntries: options.maxEntries, maxBytes: options.maxBytes });
  const merger = redis
    ? new RedisMerger(redis, { onError, onEvent: options.onMergeEvent })
    : new InflightMerger({ onEvent: options.onMergeEvent });
  const answers = new CachedAnswers({
    store,
    merger,
    ttlSeconds: options.ttlSeconds,
    maxEntries: options.maxEntries,
  });
  app.decorate('answers', answers);
  if (merger instanceof RedisMerger) {
    app.addReadinessCheck('redis_merge', () =>
      merger.isReady() || !app.redis?.isReady()
        ? undefined
        : {
            status: 'degraded',
            detail: 'merging across replicas is down; requests merge per replica',
          },
    );
  }
  app.decorateRequest('rawDigest', undefined);

  app.addHook('preValidation', async (request, reply) => {
    const raw = request.rawBody;
    if (!request.routeOptions.config.cached || raw === undefined) return;
    const directives = parseCacheControl(request.headers['cache-control']);
    if (directives.noCache || directives.noStore) return;
    request.rawDigest = answers.rawDigest(request.routeOptions.url ?? '', raw);
    if (request.rawDigest === undefined) return;
    const hit = await answers.rawHit(request.rawDigest).catch(() => undefined);
    if (!hit) return;
    request.report.images = hit.images;
    request.report.cache = hit.event;
    return reply
      .code(hit.status)
      .header('cache-status', hit.cacheStatus)
      .type('application/json; charset=utf-8')
      .send(hit.body);
  });

  app.addHook('onClose', async () => {
    await merger.close();
    await store.close?.();
  });
};

// Registered before json-body on purpose: its raw-bytes hook must run before parsing.
export default fp(cache, { name: 'cache', fastify: '5.x', dependencies: ['redis', 'health'] });
