import rateLimit, { type FastifyRateLimitStore } from '@fastify/rate-limit';
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { GatewayError } from '../errors.ts';
import type { StoreErrorMode } from '../limits/store-fallback.ts';
import { WindowCounter } from '../limits/window-counter.ts';

export interface RateLimitPluginOptions {
  defaultMax: number;
  defaultWindowSeconds: number;
  onStoreError: StoreErrorMode;
}

const windowSecondsOf = (request: FastifyRequest, fallback: number) =>
  request.client?.rateLimit?.windowSeconds ?? fallback;

/**
 * Per-client rate limits with @fastify/rate-limit, keyed by the authenticated client id. Routes opt
 * in with `config.rateLimit: {}`; the route-level hook runs after the global auth hook, so the
 * client is known. Counters live in Redis when it is configured (see WindowCounter).
 */
const clientRateLimit: FastifyPluginAsync<RateLimitPluginOptions> = async (app, options) => {
  const counter = new WindowCounter({
    redis: app.redis?.client,
    onStoreError: options.onStoreError,
    onError: (error) => app.log.debug({ err: error }, 'rate-limit store error'),
  });

  /** One store for every route, so a client's requests to both captcha routes share one limit. */
  class SharedCounterStore implements FastifyRateLimitStore {
    incr(
      key: string,
      callback: (error: Error | null, result?: { current: number; ttl: number }) => void,
      timeWindow: number,
    ) {
      counter.incr(key, timeWindow).then(
        (result) => callback(null, result),
        (error: Error) => callback(error),
      );
    }
    child() {
      return this;
    }
  }

  await app.register(rateLimit, {
    global: false,
    hook: 'onRequest',
    enableDraftSpec: true,
    store: SharedCounterStore,
    keyGenerator: (request) => request.client?.id ?? 'anonymous',
    max: (request) => request.client?.rateLimit?.max ?? options.defaultMax,
    timeWindow: (request) => windowSecondsOf(request, options.defaultWindowSeconds) * 1000,
    // The plugin sets retry-after and the ratelimit-* headers itself.
    errorResponseBuilder: (request, context) =>
      new GatewayError(
        'too_many_requests',
        `rate limit of ${context.max} requests per ${windowSecondsOf(request, options.defaultWindowSeconds)} s exceeded for client ${request.client?.id ?? 'anonymous'}; retry in ${context.after}`,
        { limit: 'rate_limit' },
      ),
  });
};

export default fp(clientRateLimit, {
  name: 'client-rate-limit',
  fastify: '5.x',
  dependencies: ['auth', 'redis'],
});
