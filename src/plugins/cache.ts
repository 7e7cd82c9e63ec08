import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import { CachedAnswers, type CacheEvent } from '../cache/cached-answers.ts';
import { MemoryCacheStore } from '../cache/memory-store.ts';
import { InflightMerger, type MergeEvent } from '../cache/merge.ts';
import { RedisMerger } from '../cache/redis-merge.ts';
import { RedisCacheStore } from '../cache/redis-store.ts';
import type { CacheStore } from '../cache/store.ts';

declare module 'fastify' {
  interface FastifyInstance {
    answers: CachedAnswers;
  }
}

export interface CachePluginOptions {
  ttlSeconds: number;
  maxEntries: number;
  onCacheEvent?: (event: CacheEvent) => void;
  onMergeEvent?: (event: MergeEvent) => void;
}

/**
 * Owns the answer cache and the request merger: in memory by default, in Redis (shared by every
 * replica) when REDIS_URL is set. Closes the merger's subscriber connection with the app.
 */
const cache: FastifyPluginAsync<CachePluginOptions> = async (app, options) => {
  const redis = app.redis?.client;
  const onError = (error: unknown, op: string) =>
    app.log.debug({ err: error, op }, 'cache store error');
  const store: CacheStore = redis
    ? new RedisCacheStore(redis, { onError })
    : new MemoryCacheStore({ maxEntries: options.maxEntries });
  const merger = redis
    ? new RedisMerger(redis, { onError, onEvent: options.onMergeEvent })
    : new InflightMerger({ onEvent: options.onMergeEvent });
  app.decorate(
    'answers',
    new CachedAnswers({
      store,
      merger,
      ttlSeconds: options.ttlSeconds,
      maxEntries: options.maxEntries,
      onEvent: options.onCacheEvent,
    }),
  );
  app.addHook('onClose', async () => {
    await merger.close();
    await store.close?.();
  });
};

export default fp(cache, { name: 'cache', fastify: '5.x', dependencies: ['redis'] });
