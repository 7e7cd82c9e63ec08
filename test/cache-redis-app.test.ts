import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { type FakeUpstream, startFakeUpstream } from '../dev/fake-upstream.ts';
import { authHeaders, startGateway, type TestGateway, validBody } from './helpers.ts';
import { describeWithRedis, startRedis, type TestRedis } from './redis-server.ts';

const RECOGNITION = '/captcha/recognition/hcaptcha';

const send = (g: TestGateway, body: unknown = validBody()) =>
  g.app.inject({
    method: 'POST',
    url: RECOGNITION,
    headers: authHeaders(),
    payload: JSON.stringify(body),
  });

describeWithRedis('cache and merging across replicas sharing Redis', () => {
  let redis: TestRedis;
  let fake: FakeUpstream;
  let replicas: TestGateway[] = [];

  beforeAll(async () => {
    redis = await startRedis();
    fake = await startFakeUpstream();
  });
  afterAll(async () => {
    await fake.close();
    await redis.close();
  });
  afterEach(async () => {
    await Promise.all(replicas.map((g) => g.close()));
    replicas = [];
    fake.reset();
  });

  async function twoReplicas(env: Record<string, string> = {}) {
    for (let i = 0; i < 2; i++) {
      const g = await startGateway({ REDIS_URL: redis.url, ...env }, { fake });
      await expect.poll(() => g.app.redis?.isReady()).toBe(true);
      replicas.push(g);
    }
    await replicas[0]?.app.redis?.client.flushall();
    return replicas as [TestGateway, TestGateway];
  }

  it('20 concurrent identical requests split across two replicas make exactly one upstream call', async () => {
    const [a, b] = await twoReplicas();
    fake.setLatency(300);
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => send(i % 2 ? b : a)));
    expect(fake.callCount()).toBe(1);
    expect(results.map((r) => r.statusCode)).toEqual(Array(20).fill(200));
    expect(new Set(results.map((r) => r.body)).size).toBe(1);
    const statuses = results.map((r) => r.headers['cache-status']);
    expect(statuses.filter((s) => s === 'acedata-gateway; fwd=uri-miss; stored')).toHaveLength(1);
    expect(
      statuses.every(
        (s) => typeof s === 'string' && /; (hit|fwd=uri-miss; (stored|collapsed))$/.test(s),
      ),
    ).toBe(true);
  });

  it("answers one replica's repeat from the other replica's stored answer", async () => {
    const [a, b] = await twoReplicas();
    const first = await send(a);
    const repeat = await send(b);
    expect(repeat.headers['cache-status']).toBe('acedata-gateway; hit');
    expect(repeat.rawPayload.equals(first.rawPayload)).toBe(true);
    expect(fake.callCount()).toBe(1);
  });

  it('shares an upstream error with the merged requests of both replicas and caches nothing', async () => {
    const [a, b] = await twoReplicas({ UPSTREAM_MAX_RETRIES: '0' });
    fake.enqueueFaults({ kind: 'status', status: 400, message: 'bad image', afterMs: 300 });
    const results = await Promise.all(Array.from({ length: 6 }, (_, i) => send(i % 2 ? b : a)));
    expect(results.map((r) => r.statusCode)).toEqual(Array(6).fill(400));
    expect(fake.callCount()).toBe(1);
    expect((await send(b)).statusCode).toBe(200);
    expect(fake.callCount()).toBe(2);
  });
});
