import { expect, it } from 'vitest';
import { postJson, type TestGateway } from './helpers.ts';
import { describeWithRedis } from './redis-server.ts';
import { replicasSharingRedis } from './replicas.ts';

const send = (g: TestGateway, body?: unknown) => postJson(g, { body });

describeWithRedis('cache and merging across replicas sharing Redis', () => {
  const shared = replicasSharingRedis();

  async function twoReplicas(env: Record<string, string> = {}) {
    const replicas = [await shared.replica(env), await shared.replica(env)] as const;
    await shared.flush();
    return replicas;
  }

  it('20 concurrent identical requests split across two replicas make exactly one upstream call', async () => {
    const [a, b] = await twoReplicas();
    shared.fake.setLatency(300);
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => send(i % 2 ? b : a)));
    expect(shared.fake.callCount()).toBe(1);
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
    expect(shared.fake.callCount()).toBe(1);
  });

  it('shares an upstream error with the merged requests of both replicas and caches nothing', async () => {
    const [a, b] = await twoReplicas({ UPSTREAM_MAX_RETRIES: '0' });
    shared.fake.enqueueFaults({ kind: 'status', status: 400, message: 'bad image', afterMs: 300 });
    const results = await Promise.all(Array.from({ length: 6 }, (_, i) => send(i % 2 ? b : a)));
    expect(results.map((r) => r.statusCode)).toEqual(Array(6).fill(400));
    expect(shared.fake.callCount()).toBe(1);
    expect((await send(b)).statusCode).toBe(200);
    expect(shared.fake.callCount()).toBe(2);
  });
});
