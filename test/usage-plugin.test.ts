import Fastify, { type FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { Redis } from 'ioredis';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { runClientsCli } from '../src/clients/cli.ts';
import { ClientRegistry, hashClientKey } from '../src/clients/registry.ts';
import { utcDay } from '../src/days.ts';
import clientsPlugin from '../src/plugins/clients.ts';
import requestContext, {
  type Completion,
  CompletionLogController,
} from '../src/plugins/request-context.ts';
import usagePlugin, { type UsagePluginOptions, usageRoutes } from '../src/plugins/usage.ts';
import { usageKey } from '../src/usage/store.ts';
import { describeWithRedis, startRedis } from './redis-server.ts';

const clients = new ClientRegistry([
  { id: 'alice', keySha256: hashClientKey('agw_alice'), quota: { upstreamCallsPerDay: 50 } },
  { id: 'bob', keySha256: hashClientKey('agw_bob') },
]);

/**
 * The smallest gateway-like app: request context, clients, usage, and one route whose query
 * says what the pipeline would have put in the report (client, cache outcome, billing, limit).
 */
async function build(options: Partial<UsagePluginOptions> & { before?: () => Promise<void> } = {}) {
  const app = Fastify({ logger: false, logController: new CompletionLogController() });
  await app.register(requestContext);
  if (options.before) {
    const before = options.before;
    await app.register(
      fp(async (instance) => {
        instance.addHook('onClose', before);
      }),
    );
  }
  await app.register(clientsPlugin, { clients });
  await app.register(usagePlugin, options);
  app.get<{
    Querystring: {
      client?: string;
      cache?: 'hit' | 'merged';
      billed?: string;
      limit?: NonNullable<Completion['limit']>;
    };
  }>('/work', async (request, reply) => {
    const { client, cache, billed, limit } = request.query;
    request.report.client = client;
    request.report.cache = cache;
    request.report.billed = billed === '1';
    request.report.limit = limit;
    return reply.code(limit ? 429 : 200).send({ ok: !limit });
  });
  await app.ready();
  return app;
}

const requests = [
  '/work?client=alice&billed=1',
  '/work?client=alice&cache=hit',
  '/work?client=alice&cache=merged',
  '/work?client=alice&limit=quota',
  '/work?client=bob&limit=rate_limit',
  '/work?client=bob&limit=client_in_flight',
  '/work', // no client: counted nowhere
];

async function send(app: FastifyInstance, urls = requests): Promise<void> {
  for (const url of urls) await app.inject({ method: 'GET', url });
}

/** An app that has served `requests`, and an admin server with the usage routes reading it. */
async function withAdmin() {
  const app = await build();
  apps.push(app);
  await send(app);
  const admin = Fastify({ logger: false });
  apps.push(admin);
  await admin.register(usageRoutes, { reader: app.usage });
  return { app, admin };
}

const apps: FastifyInstance[] = [];
afterEach(async () => {
  for (const app of apps.splice(0)) await app.close();
});

describe('usage plugin', () => {
  it('counts completed requests per client and reads them back with the quota', async () => {
    const registry = new Registry();
    const app = await build({ registry });
    apps.push(app);
    await send(app);

    const report = await app.usage.today();
    expect(report).toMatchObject({ day: utcDay(new Date()), source: 'replica' });
    expect(report.clients).toEqual([
      {
        id: 'alice',
        requests: 4,
        billed_calls: 1,
        cache_hits: 1,
        merged: 1,
        rate_limited: 0,
        quota_refused: 1,
        refused: 0,
        calls_saved: 2,
        quota_per_day: 50,
        quota_remaining: 49,
      },
      {
        id: 'bob',
        requests: 2,
        billed_calls: 0,
        cache_hits: 0,
        merged: 0,
        rate_limited: 1,
        quota_refused: 0,
        refused: 1,
        calls_saved: 0,
        quota_per_day: null,
        quota_remaining: null,
      },
    ]);
    expect((await app.usage.today('bob')).clients.map((c) => c.id)).toEqual(['bob']);

    const metrics = await registry.metrics();
    expect(metrics).toContain('gateway_client_usage_total{client="alice",kind="requests"} 4');
    expect(metrics).toContain('gateway_client_usage_total{client="alice",kind="billed_calls"} 1');
    expect(metrics).toContain('gateway_client_usage_total{client="bob",kind="refused"} 1');
    expect(metrics).not.toContain('anonymous');
  });

  it('labels metrics with the given bounded label function', async () => {
    const registry = new Registry();
    const app = await build({ registry, clientLabel: () => 'bounded' });
    apps.push(app);
    await send(app, ['/work?client=alice']);
    expect(await registry.metrics()).toContain(
      'gateway_client_usage_total{client="bounded",kind="requests"} 1',
    );
  });

  it('serves GET /usage and GET /usage/:client from the routes plugin (admin server only)', async () => {
    const { app, admin } = await withAdmin();

    const all = await admin.inject({ method: 'GET', url: '/usage' });
    expect(all.statusCode).toBe(200);
    expect(all.json()).toEqual(await app.usage.today());

    const one = await admin.inject({ method: 'GET', url: '/usage/alice' });
    expect(one.statusCode).toBe(200);
    expect(one.json()).toMatchObject({
      day: utcDay(new Date()),
      source: 'replica',
      client: { id: 'alice', requests: 4 },
    });
    for (const url of ['/usage/nobody', '/usage/not%20an%20id']) {
      const missing = await admin.inject({ method: 'GET', url });
      expect(missing.statusCode, url).toBe(404);
    }
    // The main app itself serves no /usage: it stays off the public port.
    expect((await app.inject({ method: 'GET', url: '/usage' })).statusCode).toBe(404);
  });

  it('clients usage asks the admin port when REDIS_URL is not set; a clear error when nothing answers', async () => {
    const { admin } = await withAdmin();
    await admin.listen({ host: '127.0.0.1', port: 0 });
    const address = admin.server.address();
    const port = typeof address === 'object' && address ? address.port : 0;

    const out = { stdout: '', stderr: '' };
    const io = (env: NodeJS.ProcessEnv) => ({
      stdout: (s: string) => {
        out.stdout += s;
      },
      stderr: (s: string) => {
        out.stderr += s;
      },
      env,
    });
    const env = { ADMIN_HOST: '0.0.0.0', ADMIN_PORT: String(port) };
    expect(await runClientsCli(['usage'], io(env))).toBe(0);
    expect(out.stdout).toContain('one gateway replica only');
    expect(out.stdout).toMatch(/^alice\s+4\s+1\/50\s+1\s+1\s+2\s+0\s+1\s+0$/m);

    out.stdout = '';
    expect(await runClientsCli(['usage', 'bob', '--json'], io(env))).toBe(0);
    expect(JSON.parse(out.stdout)).toMatchObject({ client: { id: 'bob', refused: 1 } });

    expect(await runClientsCli(['usage', 'nobody'], io(env))).toBe(1);
    expect(out.stderr).toContain('no client "nobody"');

    // A port nothing listens on.
    const closed = Fastify({ logger: false });
    await closed.listen({ host: '127.0.0.1', port: 0 });
    const closedAddress = closed.server.address();
    const closedPort = typeof closedAddress === 'object' && closedAddress ? closedAddress.port : 0;
    await closed.close();
    out.stderr = '';
    expect(await runClientsCli(['usage'], io({ ...env, ADMIN_PORT: String(closedPort) }))).toBe(1);
    expect(out.stderr).toContain(`no gateway answered at http://127.0.0.1:${closedPort}/usage`);
    expect(out.stderr).toContain('ECONNREFUSED');
    expect(out.stderr).toContain('or set REDIS_URL');
  });
});

describeWithRedis('usage plugin with Redis', () => {
  it('writes the last batch on close, before the Redis connection registered earlier closes', async () => {
    const server = await startRedis();
    const redis = new Redis(server.url, { maxRetriesPerRequest: 1 });
    const reader = new Redis(server.url);
    try {
      await redis.del(usageKey(utcDay(new Date())));
      // As in the gateway: Redis registered first (its onClose quits), usage after it.
      const app = await build({
        redis,
        flushIntervalMs: 60_000,
        before: async () => {
          await redis.quit();
        },
      });
      await send(app);
      const live = await app.usage.today('alice');
      expect(live.source).toBe('redis');
      expect(live.clients[0]?.requests).toBe(4); // pending counts included
      await app.close();
      expect(await reader.hgetall(usageKey(utcDay(new Date())))).toMatchObject({
        'alice|requests': '4',
        'alice|billed_calls': '1',
        'bob|rate_limited': '1',
      });
    } finally {
      reader.disconnect();
      redis.disconnect();
      await server.close();
    }
  });
});
