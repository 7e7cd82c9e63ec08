import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import type { UpstreamClient } from '../upstream/client.ts';

declare module 'fastify' {
  interface FastifyInstance {
    upstream: UpstreamClient;
  }
}

export interface UpstreamPluginOptions {
  client: UpstreamClient;
}

/**
 * Owns the upstream client: exposes it to routes, reports an open circuit to /readyz (a replica
 * that can only fail fast should leave the load balancer), and closes the pool with the app.
 */
const upstream: FastifyPluginAsync<UpstreamPluginOptions> = async (app, { client }) => {
  app.decorate('upstream', client);
  app.addReadinessCheck('upstream_circuit', () =>
    client.circuitState() === 'open' ? 'the upstream circuit breaker is open' : undefined,
  );
  app.addHook('onClose', async () => {
    await client.close();
  });
};

export default fp(upstream, { name: 'upstream', fastify: '5.x', dependencies: ['health'] });
