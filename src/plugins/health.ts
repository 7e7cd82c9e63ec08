import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import { z } from 'zod';
import { GatewayError } from '../errors.ts';

/**
 * What a readiness check found: `degraded` still serves (report it, keep the traffic), `failing`
 * means this replica cannot serve what another could (take it out of the load balancer).
 */
export type CheckResult = { status: 'degraded' | 'failing'; detail: string } | undefined;
export type ReadinessCheck = () => CheckResult | Promise<CheckResult>;

declare module 'fastify' {
  interface FastifyInstance {
    /** Adds a named check that `/readyz` runs; a plugin owning a dependency registers its own. */
    addReadinessCheck(name: string, check: ReadinessCheck): void;
    /** Runs every check: name → what it found (undefined: all is well). For /readyz and metrics. */
    runReadinessChecks(): Promise<ReadonlyMap<string, CheckResult>>;
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
    status: z.enum(['ready', 'degraded', 'not_ready']),
    checks: z
      .record(z.string(), z.object({ status: z.enum(['degraded', 'failing']), detail: z.string() }))
      .meta({ description: 'check name → what is wrong; empty when all is well' }),
  })
  .meta({ id: 'Readiness' });

/**
 * `/healthz` (liveness), `/readyz` (readiness), and the drain switch used by graceful shutdown.
 * Readiness answers "send me traffic": 503 only while draining or when a check is `failing`;
 * degraded states (Redis lost under RATE_LIMIT_ON_STORE_ERROR=allow, an open breaker — cache hits
 * still work —, no usable token) are named in the body with 200, so a load balancer does not
 * drop every replica at once for trouble they all share.
 */
const health: FastifyPluginAsync = async (app) => {
  const checks = new Map<string, ReadinessCheck>();
  let draining = false;

  app.decorate('addReadinessCheck', (name: string, check: ReadinessCheck) => {
    checks.set(name, check);
  });
  app.decorate('runReadinessChecks', async () => {
    const results = new Map<string, CheckResult>();
    for (const [name, check] of checks) results.set(name, await check());
    return results;
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
  app.addReadinessCheck('draining', () =>
    draining ? { status: 'failing', detail: 'the gateway is shutting down' } : undefined,
  );

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
      config: { servedWhileDraining: true, quietLog: true },
      schema: {
        tags: ['operations'],
        summary: 'Liveness: 200 while the process serves',
        response: {
          200: {
            description: 'The process serves',
            content: { 'application/json': { schema: livenessSchema } },
          },
        },
      },
    },
    async () => ({ status: 'ok' as const }),
  );

  app.get(
    '/readyz',
    {
      config: { servedWhileDraining: true, quietLog: true },
      schema: {
        tags: ['operations'],
        summary: 'Readiness: 503 only while draining or when this replica cannot serve',
        description:
          'Degraded states (Redis lost under RATE_LIMIT_ON_STORE_ERROR=allow, circuit breaker open, no usable upstream token) are reported in the body with 200.',
        response: {
          200: {
            description: 'Send traffic: ready, or degraded with each problem named',
            content: { 'application/json': { schema: readinessSchema } },
          },
          503: {
            description: 'Draining, or this replica cannot serve what another could',
            content: { 'application/json': { schema: readinessSchema } },
          },
        },
      },
    },
    async (_request, reply) => {
      const found: Record<string, { status: 'degraded' | 'failing'; detail: string }> = {};
      for (const [name, result] of await app.runReadinessChecks()) {
        if (result !== undefined) found[name] = result;
      }
      const results = Object.values(found);
      const failing = results.some((r) => r.status === 'failing');
      const status = failing ? 'not_ready' : results.length > 0 ? 'degraded' : 'ready';
      return reply.code(failing ? 503 : 200).send({ status, checks: found });
    },
  );
};

export default fp(health, { name: 'health', fastify: '5.x', dependencies: ['request-context'] });
