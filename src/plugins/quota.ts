import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import { DailyQuota, RedisQuotaCounter } from '../limits/quota.ts';
import type { StoreErrorMode } from '../limits/store-fallback.ts';

declare module 'fastify' {
  interface FastifyInstance {
    quota: DailyQuota;
  }
  interface FastifyContextConfig {
    /** Upstream calls made by this route count toward the client's daily quota (billed calls). */
    countsTowardQuota?: boolean;
  }
}

export interface QuotaPluginOptions {
  onStoreError: StoreErrorMode;
}

/** Daily quotas of billed upstream calls, shared through Redis when it is configured. */
const quota: FastifyPluginAsync<QuotaPluginOptions> = async (app, options) => {
  const redis = app.redis?.client;
  app.decorate(
    'quota',
    new DailyQuota({
      shared: redis ? new RedisQuotaCounter(redis) : undefined,
      onStoreError: options.onStoreError,
      onError: (error) => app.log.debug({ err: error }, 'quota store error'),
    }),
  );
};

export default fp(quota, { name: 'quota', fastify: '5.x', dependencies: ['redis'] });
