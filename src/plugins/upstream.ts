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
 * Owns the upstream client: exposes it to routes, reports its trouble to /readyz as degraded (an
 * open breaker still lets cache hits through, and every replica shares the upstream: taking them
 * all out of the load balancer would help nobody), and closes the pool with the app.
 */
const upstream: FastifyPluginAsync<UpstreamPluginOptions> = async (app, { client }) => {
  app.decorate('upstream', client);
  app.addReadinessCheck('upstream_circuit', () =>
    client.circuitState() === 'open'
      ? {
          status: 'degraded',
          detail: 'the upstream circuit breaker is open; cache hits are served',
        }
      : undefined,
  );
  app.addReadinessCheck('upstream_tokens', () => {
    const { usable, total } = client.tokenState();
    if (usable === total) return undefined;
    return usable === 0
      ? {
          status: 'degraded',
          detail: `no upstream token is usable (0 of ${total}); cache hits are served`,
        }
      : { status: 'degraded', detail: `${usable} of ${total} upstream tokens are usable` };
  });
  app.addHook('onClose', async () => {
    await client.close();
  });
};

export default fp(upstream, { name: 'upstream', fastify: '5.x', dependencies: ['health'] });
