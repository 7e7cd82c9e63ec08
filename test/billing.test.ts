import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { cacheKey } from '../src/cache/key.ts';
import {
  completionOf,
  EVENT_BOUND,
  gateHold,
  gatewayTest,
  metricSum,
  OTHER_CLIENT_KEY,
  postJson,
  RECOGNITION,
  TOKEN,
  validBody,
} from './helpers.ts';
import { describeWithRedis } from './redis-server.ts';
import { replicasSharingRedis } from './replicas.ts';

const BOUND = { timeout: 30_000 };
const today = () => new Date().toISOString().slice(0, 10);

afterEach(() => {
  vi.useRealTimers();
});

describe('an upstream 2xx is billed whatever the gateway answers', () => {
  const test = gatewayTest.override('gatewaySettings', {
    env: { UPSTREAM_MAX_RETRIES: '0' },
    limits: { quota: { upstreamCallsPerDay: 1 } },
  });

  test.for([
    ['a 200 without solution', RECOGNITION, validBody(), { kind: 'malformed' }],
    ['a 200 that is not JSON', RECOGNITION, validBody(), { kind: 'garbage', status: 200 }],
    [
      'an async submission answered without task_id',
      RECOGNITION,
      validBody({ async: true }),
      { kind: 'malformed' },
    ],
    [
      'a token 200 without token',
      TOKEN,
      { website_key: 'k', website_url: 'https://example.com' },
      { kind: 'malformed' },
    ],
  ] as const)(
    '%s: 502, and the quota unit is kept',
    async ([, url, body, fault], { gateway: g }) => {
      g.fake.enqueueFaults(fault);
      const res = await postJson(g, { url, body });
      expect(res.statusCode).toBe(502);
      expect(res.json().error).toEqual({
        code: 'upstream_error',
        message: 'the upstream sent a malformed reply',
      });
      expect(completionOf(g, res)).toMatchObject({ billed: true, upstream_status: 200 });
      expect(await metricSum(g, 'gateway_upstream_billed_total')).toBe(1);
      // The unit was used: the next call is refused, and not forwarded.
      const refused = await postJson(g, { body: validBody({ question: 'next' }) });
      expect(refused.statusCode).toBe(429);
      expect(completionOf(g, refused)?.limit).toBe('quota');
      expect(g.fake.callCount()).toBe(1);
    },
  );

  test('an upstream 4xx is not billed: the unit is given back', async ({ gateway: g }) => {
    g.fake.enqueueFaults({ kind: 'status', status: 400, code: 'bad_request' });
    const res = await postJson(g);
    expect(res.statusCode).toBe(400);
    expect(completionOf(g, res)?.billed).toBeUndefined();
    expect((await postJson(g, { body: validBody({ question: 'next' }) })).statusCode).toBe(200);
    expect(await metricSum(g, 'gateway_upstream_billed_total')).toBe(1);
  });
});

describe('a client at its quota joins a call in flight for free', () => {
  // Calls wait at the gate (one start a second, a frozen clock) until the test lets them start.
  const test = gatewayTest.override('gatewaySettings', {
    env: { UPSTREAM_RATE_PER_SECOND: '1' },
    limits: { quota: { upstreamCallsPerDay: 1 } },
  });

  test('gets the merged answer (not 429), and pays nothing', BOUND, async ({ gateway: g }) => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const hold = gateHold(g);
    await hold.takeSlot();
    // checkout-service uses its one unit.
    const own = postJson(g, { body: validBody({ question: 'its own call' }) });
    await hold.queued(1);
    await hold.releaseAll();
    expect((await own).statusCode).toBe(200);

    // other-service makes a call; checkout-service, at its quota, sends the identical request.
    const shared = validBody({ question: 'shared' });
    const owner = postJson(g, { key: OTHER_CLIENT_KEY, body: shared });
    await hold.queued(1);
    const joined = postJson(g, { body: shared });
    await expect
      .poll(() => metricSum(g, 'gateway_merge_events_total', { event: 'merged' }), EVENT_BOUND)
      .toBe(1);
    await hold.releaseAll();
    const [ownerAnswer, joinedAnswer] = await Promise.all([owner, joined]);
    expect(ownerAnswer.statusCode).toBe(200);
    expect(joinedAnswer.statusCode).toBe(200);
    expect(joinedAnswer.body).toBe(ownerAnswer.body);
    expect(joinedAnswer.headers['cache-status']).toBe('acedata-gateway; fwd=uri-miss; collapsed');
    expect(completionOf(g, joinedAnswer)).toMatchObject({
      cache: 'merged',
      client: 'checkout-service',
    });
    expect(completionOf(g, joinedAnswer)?.billed).toBeUndefined();

    // A call it would have to make itself is refused, and never forwarded.
    const calls = g.fake.callCount();
    const refused = await postJson(g, { body: validBody({ question: 'a call of its own' }) });
    expect(refused.statusCode).toBe(429);
    expect(g.fake.callCount()).toBe(calls);
    expect(await metricSum(g, 'gateway_quota_refused_total', { client: 'checkout-service' })).toBe(
      1,
    );
  });
});

describeWithRedis('billing across replicas sharing Redis', () => {
  const shared = replicasSharingRedis();
  let direct: Redis;

  beforeAll(() => {
    direct = new Redis(shared.redis.url);
  });
  afterAll(() => {
    direct.disconnect();
  });

  const quotaKey = (client: string) => `agw:quota:${today()}:${client}`;

  it('a client at its quota joins a call made on another replica for free', BOUND, async () => {
    const settings = { UPSTREAM_RATE_PER_SECOND: '1' };
    const limits = { quota: { upstreamCallsPerDay: 1 } };
    const a = await shared.replica(settings, limits);
    const b = await shared.replica(settings, limits);
    await shared.flush();
    // checkout-service used its unit today (on any replica).
    expect((await postJson(b, { body: validBody({ question: 'its own call' }) })).statusCode).toBe(
      200,
    );
    expect(await direct.get(quotaKey('checkout-service'))).toBe('1');

    vi.useFakeTimers({ toFake: ['Date'] });
    const hold = gateHold(a);
    await hold.takeSlot('slot of replica a');
    const body = validBody({ question: 'shared across replicas' });
    const owner = postJson(a, { key: OTHER_CLIENT_KEY, body });
    await hold.queued(1);
    const joined = postJson(b, { body });
    await expect
      .poll(async () => {
        const channel = `agw:done:${cacheKey(RECOGNITION, body)}`;
        return Number(((await direct.pubsub('NUMSUB', channel)) as [string, number])[1]);
      }, EVENT_BOUND)
      .toBe(1);
    await hold.releaseAll();
    const [ownerAnswer, joinedAnswer] = await Promise.all([owner, joined]);
    // Had Redis failed meanwhile, the joined request would have made its own call (a fallback).
    const fallbacks = await metricSum(b, 'gateway_merge_events_total', { event: 'fallback' });
    expect(fallbacks, 'a Redis failure made the joined request fall back').toBe(0);
    expect([ownerAnswer.statusCode, joinedAnswer.statusCode]).toEqual([200, 200]);
    expect(joinedAnswer.body).toBe(ownerAnswer.body);
    expect(await metricSum(b, 'gateway_merge_events_total', { event: 'remote' })).toBe(1);
    // Nothing was reserved for the free request; the counter has no TTL.
    expect(await direct.get(quotaKey('checkout-service'))).toBe('1');
    expect(await direct.ttl(quotaKey('checkout-service'))).toBe(-1);
    expect(await direct.get(quotaKey('other-service'))).toBeNull(); // no quota: nothing counted
  });

  it('the quota counter holds exactly the billed calls: unbilled ones are given back', async () => {
    const g = await shared.replica(
      { UPSTREAM_MAX_RETRIES: '0' },
      { quota: { upstreamCallsPerDay: 5 } },
    );
    await shared.flush();
    shared.fake.enqueueFaults(
      { kind: 'status', status: 400 },
      { kind: 'malformed' },
      { kind: 'status', status: 500 },
    );
    const statuses = [];
    for (const question of ['400', 'malformed', '500', 'ok']) {
      statuses.push((await postJson(g, { body: validBody({ question }) })).statusCode);
    }
    expect(statuses).toEqual([400, 502, 500, 200]);
    // The malformed 200 and the good 200 were billed; the 400 and the 500 were not.
    expect(await direct.get(quotaKey('checkout-service'))).toBe('2');
    // A cache hit changes nothing.
    expect((await postJson(g, { body: validBody({ question: 'ok' }) })).statusCode).toBe(200);
    expect(await direct.get(quotaKey('checkout-service'))).toBe('2');
  });
});
