import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import { connectRedis, type SharedRedis } from '../redis.ts';

declare module 'fastify' {
  interface FastifyInstance {
    /** The shared Redis connection, when REDIS_URL is set. */
    redis: SharedRedis | undefined;
  }
}

export interface RedisPluginOptions {
  url: string | undefined;
}

/** Owns the Redis connection: opens it, reports it to /readyz, closes it with the app. */
const redisPlugin: FastifyPluginAsync<RedisPluginOptions> = async (app, { url }) => {
  const shared = url === undefined ? undefined : connectRedis(url, app.log);
  app.decorate('redis', shared);
  if (!shared) return;
  app.addReadinessCheck('redis', () =>
    shared.isReady() ? undefined : 'redis is configured but unreachable',
  );
  app.addHook('onClose', async () => {
    await shared.close();
  });
};

export default fp(redisPlugin, { name: 'redis', fastify: '5.x', dependencies: ['health'] });
