import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';

/** A readiness check: returns a problem description, or undefined when healthy. */
export type ReadinessCheck = () => Promise<string | undefined> | string | undefined;

declare module 'fastify' {
  interface FastifyInstance {
    /** Adds a named check that `/readyz` runs; a plugin owning a dependency registers its own. */
    addReadinessCheck(name: string, check: ReadinessCheck): void;
  }
}

/** `/healthz` (liveness) and `/readyz` (readiness: every registered check passes). */
const health: FastifyPluginAsync = async (app) => {
  const checks = new Map<string, ReadinessCheck>();
  app.decorate('addReadinessCheck', (name: string, check: ReadinessCheck) => {
    checks.set(name, check);
  });

  app.get('/healthz', { config: { auth: false } }, async () => ({ status: 'ok' }));

  app.get('/readyz', { config: { auth: false } }, async (_request, reply) => {
    const failed: Record<string, string> = {};
    for (const [name, check] of checks) {
      const problem = await check();
      if (problem !== undefined) failed[name] = problem;
    }
    const ready = Object.keys(failed).length === 0;
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not_ready', failed });
  });
};

export default fp(health, { name: 'health', fastify: '5.x' });
