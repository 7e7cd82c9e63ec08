import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import type { GatewayMetrics } from '../metrics.ts';

declare module 'fastify' {
  interface FastifyInstance {
    metrics: GatewayMetrics;
  }
}

export interface MetricsPluginOptions {
  metrics: GatewayMetrics;
}

/** Counts every answered request. The `/metrics` route itself lives in the operations routes. */
const metricsPlugin: FastifyPluginAsync<MetricsPluginOptions> = async (app, { metrics }) => {
  app.decorate('metrics', metrics);
  app.addHook('onResponse', async (request, reply) => {
    metrics.observeRequest(
      request.routeOptions.url ?? 'unmatched',
      reply.statusCode,
      request.client?.id,
      reply.elapsedTime / 1000,
    );
  });
};

export default fp(metricsPlugin, { name: 'metrics', fastify: '5.x', dependencies: ['auth'] });
