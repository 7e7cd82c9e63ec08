import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import { z } from 'zod';
import { GatewayError } from '../errors.ts';

/** A readiness check: returns a problem description, or undefined when healthy. */
export type ReadinessCheck = () => Promise<string | undefined> | string | undefined;

declare module 'fastify' {
  interface FastifyInstance {
    /** Adds a named check that `/readyz` runs; a plugin owning a dependency registers its own. */
    addReadinessCheck(name: string, check: ReadinessCheck): void;
    /** Turns /readyz to 503 and refuses new requests; app.close() does it too (preClose). */
    startDraining(): void;
    readonly draining: boolean;
  }
  interface FastifyContextConfig {
    /** Still served while draining (health routes). */
    servedWhileDraining?: boolean;
  }
}

const livenessSchema = z.object({ status: z.literal('ok') }).meta({ id: 'Liveness' });
const readinessSchema = z
  .object({
    status: z.enum(['ready', 'not_ready']),
    failed: z.record(z.string(), z.string()).meta({ description: 'check name → what is wrong' }),
  })
  .meta({ id: 'Readiness' });

/**
 * `/healthz` (liveness), `/readyz` (readiness: every registered check passes and the gateway is
 * not draining), and the drain switch used by graceful shutdown.
 */
const health: FastifyPluginAsync = async (app) => {
  const checks = new Map<string, ReadinessCheck>();
  let draining = false;

  app.decorate('addReadinessCheck', (name: string, check: ReadinessCheck) => {
    checks.set(name, check);
  });
  app.decorate('startDraining', () => {
    draining = true;
  });
  app.decorate('draining', {
    getter: () => draining,
  });
  app.addHook('preClose', async () => {
    draining = true;
  });
  app.addReadinessCheck('draining', () => (draining ? 'the gateway is shutting down' : undefined));

  // Answers finished while draining close their connection, so the listener can shut without
  // waiting out keep-alive timeouts.
  app.addHook('onSend', (_request, reply, payload, done) => {
    if (draining) reply.header('connection', 'close');
    done(null, payload);
  });

  // Requests that arrive on kept-alive connections while draining: refuse them, and close.
  app.addHook('onRequest', (request, reply, done) => {
    if (!draining || request.routeOptions.config.servedWhileDraining) return done();
    reply.header('connection', 'close');
    done(
      new GatewayError(
        'upstream_unavailable',
        'the gateway is shutting down; retry on another instance',
        {
          headers: { 'retry-after': '1' },
        },
      ),
    );
  });

  app.get(
    '/healthz',
    {
      config: { servedWhileDraining: true },
      schema: {
        tags: ['operations'],
        summary: 'Liveness: 200 while the process serves',
        response: { 200: livenessSchema },
      },
    },
    async () => ({ status: 'ok' as const }),
  );

  app.get(
    '/readyz',
    {
      config: { servedWhileDraining: true },
      schema: {
        tags: ['operations'],
        summary: 'Readiness: 200 when the gateway can serve; 503 names the failed checks',
        response: { 200: readinessSchema, 503: readinessSchema },
      },
    },
    async (_request, reply) => {
      const failed: Record<string, string> = {};
      for (const [name, check] of checks) {
        const problem = await check();
        if (problem !== undefined) failed[name] = problem;
      }
      const ready = Object.keys(failed).length === 0;
      return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not_ready', failed });
    },
  );
};

export default fp(health, { name: 'health', fastify: '5.x', dependencies: ['request-context'] });
