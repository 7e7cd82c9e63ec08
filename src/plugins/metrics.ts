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

/**
 * Counts every completed request: status, latency, cache outcome, billing and which limit refused
 * it, and reports each readiness check. The `/metrics` route itself is served on the admin port
 * (ops-routes).
 */
const metricsPlugin: FastifyPluginAsync<MetricsPluginOptions> = async (app, { metrics }) => {
  app.decorate('metrics', metrics);
  app.onRequestCompleted(metrics.observe);
  metrics.readReadinessFrom(() => app.runReadinessChecks());
};

export default fp(metricsPlugin, {
  name: 'metrics',
  fastify: '5.x',
  dependencies: ['request-context', 'health'],
});
