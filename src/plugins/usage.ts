import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import type { Redis } from 'ioredis';
import { Counter, type Registry } from 'prom-client';
import { CLIENT_ID_PATTERN } from '../clients/schema.ts';
import { GatewayError } from '../errors.ts';
import { USAGE_KINDS } from '../usage/counts.ts';
import { UsageRecorder } from '../usage/recorder.ts';
import { type UsageReader, usageReport } from '../usage/report.ts';
import { RedisUsageStore } from '../usage/store.ts';

declare module 'fastify' {
  interface FastifyInstance {
    /** Today's usage per client (every replica's when Redis is configured). */
    usage: UsageReader;
  }
}

export interface UsagePluginOptions {
  /** Shared Redis (REDIS_URL): usage then covers every replica. */
  redis?: Redis;
  /** prom-client registry for `gateway_client_usage_total`; none → no metric. */
  registry?: Registry;
  /** Bounded client label (GatewayMetrics.clientLabel); default: known client ids, else 'anonymous'. */
  clientLabel?: (clientId: string | undefined) => string;
  /** How long counts wait before one batched Redis write (default 1 s). */
  flushIntervalMs?: number;
  /** Clock, for tests. */
  now?: () => Date;
}

/** Counts every completed request of a known client per UTC day; see src/usage/. */
const usagePlugin: FastifyPluginAsync<UsagePluginOptions> = async (app, options) => {
  const recorder = new UsageRecorder({
    shared: options.redis && new RedisUsageStore(options.redis),
    flushIntervalMs: options.flushIntervalMs,
    now: options.now,
    onError: (err) => app.log.debug({ err }, 'usage store error; counted on this replica'),
  });
  const label =
    options.clientLabel ??
    ((id: string | undefined) => (id !== undefined && app.clients.has(id) ? id : 'anonymous'));
  const counter =
    options.registry &&
    new Counter({
      name: 'gateway_client_usage_total',
      help: `Requests of each client by kind: ${USAGE_KINDS.join(', ')} (per replica)`,
      labelNames: ['client', 'kind'],
      registers: [options.registry],
    });

  app.onRequestCompleted((completion) => {
    const kinds = recorder.record(completion);
    if (!counter || kinds.length === 0) return;
    const client = label(completion.clientId);
    for (const kind of kinds) counter.inc({ client, kind });
  });
  app.decorate('usage', {
    today: async (clientId?: string) => usageReport(await recorder.today(), app.clients, clientId),
  });
  // Registered after Redis, so this runs before the connection closes: the last batch is written.
  app.addHook('onClose', async () => {
    await recorder.close();
  });
};

export interface UsageRoutesOptions {
  reader: UsageReader;
}

/**
 * `GET /usage` and `GET /usage/:client`: for operators, so register it on the admin server only
 * (ADMIN_PORT), never on the public port. Encapsulated: it adds nothing to the app around it.
 */
export const usageRoutes: FastifyPluginAsync<UsageRoutesOptions> = async (app, { reader }) => {
  app.get('/usage', async () => reader.today());
  app.get<{ Params: { client: string } }>('/usage/:client', async (request) => {
    const { client } = request.params;
    const report = CLIENT_ID_PATTERN.test(client) ? await reader.today(client) : undefined;
    const usage = report?.clients[0];
    if (!report || !usage) {
      throw new GatewayError('not_found', 'no such client, and no usage counted for it today');
    }
    return { day: report.day, source: report.source, client: usage };
  });
};

export default fp(usagePlugin, {
  name: 'usage',
  fastify: '5.x',
  dependencies: ['request-context', 'clients'],
});
