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

/** Counts every completed request. The `/metrics` route itself lives in the operations routes. */
const metricsPlugin: FastifyPluginAsync<MetricsPluginOptions> = async (app, { metrics }) => {
  app.decorate('metrics', metrics);
  app.onRequestCompleted(({ route, status, clientId, durationMs }) => {
    metrics.observeRequest(route, status, clientId, durationMs / 1000);
  });
};

export default fp(metricsPlugin, {
  name: 'metrics',
  fastify: '5.x',
  dependencies: ['request-context', 'auth'],
});
