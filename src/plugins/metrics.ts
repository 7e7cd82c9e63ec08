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
  app.onRequestCompleted((request, status, durationMs) => {
    metrics.observeRequest(
      request.routeOptions.url ?? 'unmatched',
      status,
      request.client?.id,
      durationMs / 1000,
    );
  });
};

export default fp(metricsPlugin, {
  name: 'metrics',
  fastify: '5.x',
  dependencies: ['request-context', 'auth'],
});
