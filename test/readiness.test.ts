import { describe, expect, it } from 'vitest';
import {
  completionLines,
  completionOf,
  EVENT_BOUND,
  gatewayTest,
  metricSum,
  postJson,
  type TestGateway,
  validBody,
} from './helpers.ts';
import { canControlRedis, describeWithRedis } from './redis-server.ts';
import { replicasSharingRedis } from './replicas.ts';

const readyz = (g: TestGateway) => g.app.inject({ method: 'GET', url: '/readyz' });
const healthz = (g: TestGateway) => g.app.inject({ method: 'GET', url: '/healthz' });
/** gateway_readiness_check: 0 ok, 1 degraded, 2 failing. */
const checkGauge = (g: TestGateway, check: string) =>
  metricSum(g, 'gateway_readiness_check', { check });

describe('/readyz and /healthz', () => {
  gatewayTest(
    'ready: 200 with no checks, no key needed, nothing forwarded',
    async ({ gateway: g }) => {
      const ready = await readyz(g);
      expect(ready.statusCode).toBe(200);
      expect(ready.json()).toEqual({ status: 'ready', checks: {} });
      const live = await healthz(g);
      expect(live.statusCode).toBe(200);
      expect(live.json()).toEqual({ status: 'ok' });
      expect(g.fake.callCount()).toBe(0);
      for (const check of ['draining', 'upstream_circuit', 'upstream_tokens']) {
        expect(await checkGauge(g, check)).toBe(0);
      }
    },
  );

  gatewayTest(
    'draining: 503 not_ready; new requests 503 with connection: close; liveness stays 200',
    async ({ gateway: g }) => {
      g.app.startDraining();
      const ready = await readyz(g);
      expect(ready.statusCode).toBe(503);
      expect(ready.json()).toEqual({
        status: 'not_ready',
        checks: { draining: { status: 'failing', detail: 'the gateway is shutting down' } },
      });
      const refused = await postJson(g);
      expect(refused.statusCode).toBe(503);
      expect(refused.headers.connection).toBe('close');
      expect(refused.headers['retry-after']).toBe('1');
      expect(refused.json().error).toEqual({
        code: 'upstream_unavailable',
        message: 'the gateway is shutting down; retry on another instance',
      });
      expect(g.fake.callCount()).toBe(0);
      expect((await healthz(g)).statusCode).toBe(200);
      expect(await checkGauge(g, 'draining')).toBe(2);
    },
  );
});

describe('an open circuit breaker', () => {
  const test = gatewayTest.override('gatewaySettings', {
    env: {
      CIRCUIT_BREAKER_THRESHOLD: '2',
      CIRCUIT_BREAKER_COOLDOWN_MS: '60000',
      UPSTREAM_MAX_RETRIES: '0',
    },
  });

  test('is degraded, not unready: 200 naming the check, and cache hits are still served', async ({
    gateway: g,
  }) => {
    expect((await postJson(g)).statusCode).toBe(200); // stored
    g.fake.setDefaultFault({ kind: 'status', status: 500 });
    for (const question of ['a', 'b']) {
      expect((await postJson(g, { body: validBody({ question }) })).statusCode).toBe(500);
    }
    const calls = g.fake.callCount();
    const fastFail = await postJson(g, { body: validBody({ question: 'c' }) });
    expect(fastFail.statusCode).toBe(503);
    expect(fastFail.json().error.code).toBe('upstream_unavailable');
    expect(Number(fastFail.headers['retry-after'])).toBeGreaterThan(0);
    expect(g.fake.callCount()).toBe(calls);

    const ready = await readyz(g);
    expect(ready.statusCode).toBe(200);
    expect(ready.json()).toEqual({
      status: 'degraded',
      checks: {
        upstream_circuit: {
          status: 'degraded',
          detail: 'the upstream circuit breaker is open; cache hits are served',
        },
      },
    });
    const hit = await postJson(g);
    expect(hit.statusCode).toBe(200);
    expect(hit.headers['cache-status']).toBe('acedata-gateway; hit');

    expect(await metricSum(g, 'gateway_circuit_state')).toBe(2);
    expect(await metricSum(g, 'gateway_circuit_transitions_total', { state: 'open' })).toBe(1);
    expect(await checkGauge(g, 'upstream_circuit')).toBe(1);
  });
});

describe('upstream tokens out of rotation', () => {
  const tokens = ['tok-alpha-readiness', 'tok-bravo-readiness'];
  const test = gatewayTest.override('gatewaySettings', {
    env: { ACEDATA_API_TOKEN: tokens.join(',') },
    fakeOptions: { tokens },
  });

  test('one of two, then none: degraded with 200, and each token counted', async ({
    gateway: g,
  }) => {
    g.fake.revokeToken(tokens[0] as string, 'used_up');
    expect((await postJson(g, { body: validBody({ question: 'a' }) })).statusCode).toBe(200);
    let ready = await readyz(g);
    expect(ready.statusCode).toBe(200);
    expect(ready.json().checks).toEqual({
      upstream_tokens: { status: 'degraded', detail: '1 of 2 upstream tokens are usable' },
    });

    g.fake.revokeToken(tokens[1] as string, 'used_up');
    const refused = await postJson(g, { body: validBody({ question: 'b' }) });
    expect(refused.statusCode).toBe(403);
    expect(refused.json().error.code).toBe('used_up');
    ready = await readyz(g);
    expect(ready.statusCode).toBe(200);
    expect(ready.json()).toEqual({
      status: 'degraded',
      checks: {
        upstream_tokens: {
          status: 'degraded',
          detail: 'no upstream token is usable (0 of 2); cache hits are served',
        },
      },
    });
    // A cache hit is still served.
    const hit = await postJson(g, { body: validBody({ question: 'a' }) });
    expect(hit.headers['cache-status']).toBe('acedata-gateway; hit');

    expect(await metricSum(g, 'gateway_upstream_tokens_usable')).toBe(0);
    expect(await metricSum(g, 'gateway_upstream_tokens')).toBe(2);
    expect(
      await metricSum(g, 'gateway_upstream_token_transitions_total', {
        state: 'disabled',
        code: 'used_up',
      }),
    ).toBe(2);
    expect(await checkGauge(g, 'upstream_tokens')).toBe(1);
    const text = (await g.admin.inject({ method: 'GET', url: '/metrics' })).body;
    for (const token of tokens) expect(text).not.toContain(token);
  });
});

describe('probe log lines', () => {
  gatewayTest(
    '/healthz and /readyz complete at debug, even while draining; other requests at info',
    async ({ gateway: g }) => {
      const probes = [await healthz(g), await readyz(g)];
      const answered = await postJson(g);
      const unknown = await g.app.inject({ method: 'GET', url: '/nope' });
      g.app.startDraining();
      const draining = await readyz(g);
      expect(draining.statusCode).toBe(503);
      for (const res of [...probes, draining]) expect(completionOf(g, res)?.level).toBe(20);
      expect(completionOf(g, answered)?.level).toBe(30);
      expect(completionOf(g, unknown)?.level).toBe(30);
      const refused = await postJson(g);
      expect(completionOf(g, refused)?.level).toBe(40); // a 503 the gateway gave a client
    },
  );

  describe('at LOG_LEVEL=info', () => {
    const test = gatewayTest.override('gatewaySettings', { env: { LOG_LEVEL: 'info' } });

    test('probes write nothing; every other request its one line', async ({ gateway: g }) => {
      for (let i = 0; i < 5; i++) {
        await healthz(g);
        await readyz(g);
      }
      const answered = await postJson(g);
      expect(completionLines(g)).toHaveLength(1);
      expect(completionOf(g, answered)).toMatchObject({ level: 30, status: 200 });
    });
  });
});

describeWithRedis('Redis lost', () => {
  const shared = replicasSharingRedis();

  it.runIf(canControlRedis)(
    'under RATE_LIMIT_ON_STORE_ERROR=allow: degraded (200), serving',
    async () => {
      const g = await shared.replica({ RATE_LIMIT_ON_STORE_ERROR: 'allow' });
      expect(await checkGauge(g, 'redis')).toBe(0);
      await shared.redis.stop();
      await expect.poll(() => g.app.redis?.isReady(), EVENT_BOUND).toBe(false);
      const ready = await readyz(g);
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
      expect((await postJson(g)).statusCode).toBe(200);
      expect(await checkGauge(g, 'redis')).toBe(1);
    },
  );

  it.runIf(canControlRedis)(
    'under RATE_LIMIT_ON_STORE_ERROR=deny: not ready (503), refusing',
    async () => {
      const g = await shared.replica({ RATE_LIMIT_ON_STORE_ERROR: 'deny' });
      await shared.redis.stop();
      await expect.poll(() => g.app.redis?.isReady(), EVENT_BOUND).toBe(false);
      const ready = await readyz(g);
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
      const refused = await postJson(g);
      expect(refused.statusCode).toBe(503);
      expect(shared.fake.callCount()).toBe(0);
      expect(await checkGauge(g, 'redis')).toBe(2);
      await shared.redis.start();
      await expect.poll(() => g.app.redis?.isReady(), { timeout: 10_000 }).toBe(true);
      expect((await readyz(g)).statusCode).toBe(200);
      expect(await checkGauge(g, 'redis')).toBe(0);
    },
  );
});
