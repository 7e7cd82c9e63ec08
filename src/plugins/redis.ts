import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import type { StoreErrorMode } from '../limits/store-fallback.ts';
import { connectRedis, type SharedRedis } from '../redis.ts';

declare module 'fastify' {
  interface FastifyInstance {
    /** The shared Redis connection, when REDIS_URL is set. */
    redis: SharedRedis | undefined;
  }
}

export interface RedisPluginOptions {
  url: string | undefined;
  /** RATE_LIMIT_ON_STORE_ERROR: what losing Redis means for readiness. */
  onStoreError: StoreErrorMode;
}

/**
 * Owns the Redis connection: opens it, reports it to /readyz, closes it with the app. Without
 * Redis, `allow` keeps serving with per-replica limits (degraded); `deny` refuses every limited
 * request, which another replica that still reaches Redis could serve (failing).
 */
const redisPlugin: FastifyPluginAsync<RedisPluginOptions> = async (app, { url, onStoreError }) => {
  const shared = url === undefined ? undefined : connectRedis(url, app.log);
  app.decorate('redis', shared);
  if (!shared) return;
  app.addReadinessCheck('redis', () => {
    if (shared.isReady()) return undefined;
    return onStoreError === 'allow'
      ? {
          status: 'degraded',
          detail:
            'redis is unreachable: limits and quotas count per replica, cache and merging are local',
        }
      : { status: 'failing', detail: 'redis is unreachable and RATE_LIMIT_ON_STORE_ERROR=deny' };
  });
  app.addHook('onClose', async () => {
    await shared.close();
  });
};

export default fp(redisPlugin, { name: 'redis', fastify: '5.x', dependencies: ['health'] });
