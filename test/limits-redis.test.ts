import { expect, it } from 'vitest';
import {
  completionOf,
  EVENT_BOUND,
  type GatewayOptions,
  OTHER_CLIENT_KEY,
  postJson,
  type TestGateway,
  validBody,
  within,
} from './helpers.ts';
import { canControlRedis, describeWithRedis } from './redis-server.ts';
import { readiness, replicasSharingRedis } from './replicas.ts';

const send = (g: TestGateway, key?: string, body?: unknown) => postJson(g, { key, body });

describeWithRedis('limits and quotas shared through Redis', () => {
  const shared = replicasSharingRedis();
  const replica = (limits: GatewayOptions['limits'], env: Record<string, string> = {}) =>
    shared.replica({ UPSTREAM_TIMEOUT_MS: '2000', ...env }, limits);
  const flush = () => shared.flush();

  it('one instance: the limit, the headers, the 429 envelope, and a second client unaffected', async () => {
    const g = await replica({ rateLimit: { max: 2, windowSeconds: 60 } });
    await flush();
    const first = await send(g);
    expect(first.statusCode).toBe(200);
    expect(first.headers['ratelimit-limit']).toBe('2');
    expect(first.headers['ratelimit-remaining']).toBe('1');
    expect((await send(g)).statusCode).toBe(200);
    const refused = await send(g);
    expect(refused.statusCode).toBe(429);
    expect(refused.json()).toMatchObject({ success: false, error: { code: 'too_many_requests' } });
    expect(refused.headers['retry-after']).toBeDefined();
    // The second request was a cache hit, and hits count toward the limit.
    expect(shared.fake.callCount()).toBe(1);
    expect((await send(g, OTHER_CLIENT_KEY)).statusCode).toBe(200);
  });

  it('three instances sharing Redis admit exactly max requests of one client', async () => {
    const replicas = [
      await replica({ rateLimit: { max: 10, windowSeconds: 60 } }),
      await replica({ rateLimit: { max: 10, windowSeconds: 60 } }),
      await replica({ rateLimit: { max: 10, windowSeconds: 60 } }),
    ];
    await flush();
    const results = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        send(replicas[i % 3] as TestGateway, undefined, validBody({ n: i })),
      ),
    );
    const statuses = results.map((r) => r.statusCode);
    expect(statuses.filter((s) => s === 200)).toHaveLength(10);
    expect(statuses.filter((s) => s === 429)).toHaveLength(30);
    expect(shared.fake.callCount()).toBe(10);
  });

  it('shares a daily quota across instances', async () => {
    const a = await replica({ quota: { upstreamCallsPerDay: 3 } });
    const b = await replica({ quota: { upstreamCallsPerDay: 3 } });
    await flush();
    const statuses = [];
    for (let i = 0; i < 6; i++)
      statuses.push((await send(i % 2 ? b : a, undefined, validBody({ n: i }))).statusCode);
    expect(statuses).toEqual([200, 200, 200, 429, 429, 429]);
    expect(shared.fake.callCount()).toBe(3);
  });

  it.runIf(canControlRedis)(
    'allow: with Redis stopped requests still answer promptly, limited per replica; limits resume after restart',
    async () => {
      const g = await replica({ rateLimit: { max: 2, windowSeconds: 60 } });
      await flush();
      expect((await send(g)).statusCode).toBe(200);
      await shared.redis.stop();
      await expect.poll(() => g.app.redis?.isReady(), EVENT_BOUND).toBe(false);
      // Fail-fast Redis settings (no offline queue): each request is answered, never left hanging.
      const during: Awaited<ReturnType<typeof send>>[] = [];
      for (let i = 0; i < 3; i++) during.push(await within(send(g), 5_000, 'an answer'));
      expect(during.map((r) => r.statusCode)).toEqual([200, 200, 429]);
      expect(completionOf(g, during[2] as (typeof during)[number])?.limit).toBe('rate_limit');
      // Degraded, not unready: this replica still serves what another one could.
      const ready = await g.app.inject({ method: 'GET', url: '/readyz' });
      expect(ready.statusCode).toBe(200);
      expect(ready.json()).toEqual({
        status: 'degraded',
        checks: {
          redis: {
            status: 'degraded',
            detail:
              'redis is unreachable: limits and quotas count per replica, cache and merging are local',
          },
        },
      });
      await shared.redis.start();
      await expect.poll(() => g.app.redis?.isReady(), { timeout: 5_000 }).toBe(true);
      // Redis came back empty: its shared window starts again from zero.
      expect((await send(g)).statusCode).toBe(200);
      expect((await send(g)).statusCode).toBe(200);
      expect((await send(g)).statusCode).toBe(429);
      await expect.poll(() => readiness(g), EVENT_BOUND).toBe('ready');
      const logged = g.logs().map((l) => l.msg);
      expect(
        logged.filter((m) => m === 'redis connection lost; falling back until it recovers'),
      ).toHaveLength(1);
      expect(logged.filter((m) => m === 'redis connection recovered')).toHaveLength(1);
    },
  );

  it.runIf(canControlRedis)(
    'deny: with Redis stopped requests are refused with 503, and recover after restart',
    async () => {
      const g = await replica(
        { rateLimit: { max: 100, windowSeconds: 60 } },
        { RATE_LIMIT_ON_STORE_ERROR: 'deny' },
      );
      await flush();
      expect((await send(g)).statusCode).toBe(200);
      await shared.redis.stop();
      await expect.poll(() => g.app.redis?.isReady(), EVENT_BOUND).toBe(false);
      const refused = await send(g, undefined, validBody({ question: 'not cached yet' }));
      expect(refused.statusCode).toBe(503);
      expect(refused.json()).toMatchObject({
        success: false,
        error: { code: 'upstream_unavailable' },
      });
      expect(refused.headers['retry-after']).toBe('1');
      expect(shared.fake.callCount()).toBe(1);
      const ready = await g.app.inject({ method: 'GET', url: '/readyz' });
      expect(ready.statusCode).toBe(503);
      expect(ready.json()).toEqual({
        status: 'not_ready',
        checks: {
          redis: {
            status: 'failing',
            detail: 'redis is unreachable and RATE_LIMIT_ON_STORE_ERROR=deny',
          },
        },
      });
      await shared.redis.start();
      await expect.poll(() => g.app.redis?.isReady(), { timeout: 5_000 }).toBe(true);
      expect((await send(g)).statusCode).toBe(200);
      expect((await g.app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200);
    },
  );
});
