import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, expect, it, vi } from 'vitest';
import { cacheKey } from '../src/cache/key.ts';
import {
  EVENT_BOUND,
  gateHold,
  metricSum,
  postJson,
  RECOGNITION,
  type TestGateway,
  validBody,
} from './helpers.ts';
import { describeWithRedis } from './redis-server.ts';
import { replicasSharingRedis } from './replicas.ts';

const send = (g: TestGateway, body?: unknown) => postJson(g, { body });
const HIT = 'acedata-gateway; hit';
const STORED = 'acedata-gateway; fwd=uri-miss; stored';
const COLLAPSED = 'acedata-gateway; fwd=uri-miss; collapsed';

describeWithRedis('cache and merging across replicas sharing Redis', () => {
  const shared = replicasSharingRedis();
  let direct: Redis;

  beforeAll(() => {
    direct = new Redis(shared.redis.url);
  });
  afterAll(() => {
    direct.disconnect();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  /** Two replicas whose upstream calls wait at their gates until the test lets one start. */
  async function heldReplicas(env: Record<string, string> = {}) {
    const settings = { UPSTREAM_RATE_PER_SECOND: '1', ...env };
    const replicas = [await shared.replica(settings), await shared.replica(settings)] as const;
    await shared.flush();
    vi.useFakeTimers({ toFake: ['Date'] });
    const holds = replicas.map((g) => gateHold(g));
    await holds[0]?.takeSlot('slot of replica a');
    await holds[1]?.takeSlot('slot of replica b');
    return { replicas, holds };
  }

  const merged = (gs: readonly TestGateway[], event: string) =>
    Promise.all(gs.map((g) => metricSum(g, 'gateway_merge_events_total', { event }))).then((n) =>
      n.reduce((a, b) => a + b, 0),
    );

  /** The key's done channel has a subscriber: the other replica waits for the owner's answer. */
  const remoteWaiter = (body = validBody()) =>
    expect
      .poll(async () => {
        const channel = `agw:done:${cacheKey(RECOGNITION, body)}`;
        const reply = (await direct.pubsub('NUMSUB', channel)) as [string, number];
        return Number(reply[1]);
      }, EVENT_BOUND)
      .toBe(1);

  it('20 concurrent identical requests split across two replicas make exactly one upstream call', async () => {
    const { replicas, holds } = await heldReplicas();
    const [a, b] = replicas;
    const calls = shared.fake.callCount();
    const runs = Array.from({ length: 20 }, (_, i) => send(i % 2 ? b : a));
    // Nine join locally on each replica; one request per replica takes part across replicas.
    await expect.poll(() => merged(replicas, 'merged'), EVENT_BOUND).toBe(18);
    await remoteWaiter();
    for (const hold of holds) hold.next();
    const results = await Promise.all(runs);
    expect(shared.fake.callCount()).toBe(calls + 1);
    expect(results.map((r) => r.statusCode)).toEqual(Array(20).fill(200));
    expect(new Set(results.map((r) => r.body)).size).toBe(1);
    const statuses = results.map((r) => r.headers['cache-status']);
    expect(statuses.filter((s) => s === STORED)).toHaveLength(1);
    expect(statuses.filter((s) => s === COLLAPSED)).toHaveLength(19);
    expect(await merged(replicas, 'remote')).toBe(1);
  });

  it("answers one replica's repeat from the other replica's stored answer", async () => {
    const a = await shared.replica();
    const b = await shared.replica();
    await shared.flush();
    const first = await send(a);
    const repeat = await send(b);
    expect(repeat.headers['cache-status']).toBe(HIT);
    expect(repeat.rawPayload.equals(first.rawPayload)).toBe(true);
    expect(shared.fake.callCount()).toBe(1);
  });

  it('shares an upstream error with the merged requests of both replicas and caches nothing', async () => {
    const { replicas, holds } = await heldReplicas({ UPSTREAM_MAX_RETRIES: '0' });
    const [a, b] = replicas;
    const calls = shared.fake.callCount();
    shared.fake.enqueueFaults({ kind: 'status', status: 400, message: 'bad image' });
    const runs = Array.from({ length: 6 }, (_, i) => send(i % 2 ? b : a));
    await expect.poll(() => merged(replicas, 'merged'), EVENT_BOUND).toBe(4);
    await remoteWaiter();
    for (const hold of holds) hold.next();
    const results = await Promise.all(runs);
    expect(results.map((r) => r.statusCode)).toEqual(Array(6).fill(400));
    expect(new Set(results.map((r) => r.json().error.message))).toEqual(new Set(['bad image']));
    expect(shared.fake.callCount()).toBe(calls + 1);
    for (const hold of holds) hold.next();
    const again = await send(b);
    expect(again.statusCode).toBe(200);
    expect(again.headers['cache-status']).toBe(STORED);
    expect(shared.fake.callCount()).toBe(calls + 2);
  });
});
