import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { cacheKey } from '../src/cache/key.ts';
import {
  completionOf,
  EVENT_BOUND,
  gateHold,
  gatewayTest,
  metricSum,
  postJson,
  RECOGNITION,
  type TestGateway,
  validBody,
} from './helpers.ts';
import { canControlRedis, describeWithRedis } from './redis-server.ts';
import { replicasSharingRedis } from './replicas.ts';

/**
 * A request's deadline is UPSTREAM_TIMEOUT_MS from its arrival, and whatever it waits for — a
 * merged call, a takeover, a fallback, the gate — fits inside it. Each test makes the wrong
 * behaviour (a fresh deadline started late) take at least half a deadline longer than the right
 * one, and bounds the answer by the request's own deadline plus that half: a bound drawn from the
 * scenario, not a timing margin.
 */
const T = 3_000;
const OWN_DEADLINE_BOUND_MS = T * 1.5;
const BOUND = { timeout: 30_000 };

afterEach(() => {
  vi.useRealTimers();
});

const durationOf = (g: TestGateway, res: { headers: Record<string, unknown> }) =>
  Number(completionOf(g, res)?.duration_ms);

const lockOf = (body: unknown) => `agw:lock:${cacheKey(RECOGNITION, body as never)}`;
const doneOf = (body: unknown) => `agw:done:${cacheKey(RECOGNITION, body as never)}`;

describe('a merged waiter in one process', () => {
  const test = gatewayTest.override('gatewaySettings', { env: { UPSTREAM_TIMEOUT_MS: String(T) } });

  test('gets the shared 504 no later than its own deadline', BOUND, async ({ gateway: g }) => {
    g.fake.enqueueFaults({ kind: 'hang' });
    const owner = postJson(g);
    await g.fake.waitForCalls(1);
    const waiter = await postJson(g);
    const ownerAnswer = await owner;
    for (const res of [ownerAnswer, waiter]) {
      expect(res.statusCode).toBe(504);
      expect(res.json().error.code).toBe('timeout');
    }
    expect(await metricSum(g, 'gateway_merge_events_total', { event: 'merged' })).toBe(1);
    expect(g.fake.callCount()).toBe(1);
    // It shares the owner's deadline, which came first: never later than its own.
    expect(durationOf(g, waiter)).toBeLessThanOrEqual(durationOf(g, ownerAnswer));
    expect(durationOf(g, ownerAnswer)).toBeLessThan(OWN_DEADLINE_BOUND_MS);
  });
});

describe('the upstream queue (UPSTREAM_QUEUE_MAX, deadlines at the gate)', () => {
  describe('a full queue', () => {
    const test = gatewayTest.override('gatewaySettings', {
      env: { UPSTREAM_RATE_PER_SECOND: '1', UPSTREAM_QUEUE_MAX: '2' },
    });

    test(
      'answers 503 at once, with retry-after, forwarding nothing',
      BOUND,
      async ({ gateway: g }) => {
        expect(g.config.derived.upstreamQueueMax).toBe(2);
        vi.useFakeTimers({ toFake: ['Date'] });
        const hold = gateHold(g);
        await hold.takeSlot();
        const calls = g.fake.callCount();
        const queued = [1, 2].map((n) => postJson(g, { body: validBody({ question: `q${n}` }) }));
        await hold.queued(2);
        const refused = await postJson(g, { body: validBody({ question: 'q3' }) });
        // At once: the two before it are still waiting.
        expect(await metricSum(g, 'gateway_upstream_queued')).toBe(2);
        expect(refused.statusCode).toBe(503);
        expect(refused.headers['retry-after']).toBe('1');
        expect(refused.json().error).toEqual({
          code: 'upstream_unavailable',
          message: 'the gateway is at its upstream capacity; retry later',
        });
        expect(g.fake.callCount()).toBe(calls);
        await hold.releaseAll();
        expect((await Promise.all(queued)).map((r) => r.statusCode)).toEqual([200, 200]);
      },
    );
  });

  describe('a queue longer than the deadline', () => {
    // One start a second and a 3 s deadline: a third call in one client's queue cannot start in time.
    const test = gatewayTest.override('gatewaySettings', {
      env: {
        UPSTREAM_RATE_PER_SECOND: '1',
        UPSTREAM_TIMEOUT_MS: String(T),
        CLIENT_MAX_IN_FLIGHT: '10', // the derived default (capacity 3 / 2) would refuse first
      },
    });

    test(
      'answers 504 at once when the queue shows the call cannot start in time, and 504 (not 503) to calls that waited until their deadline',
      BOUND,
      async ({ gateway: g }) => {
        vi.useFakeTimers({ toFake: ['Date'] });
        const hold = gateHold(g);
        await hold.takeSlot();
        const calls = g.fake.callCount();
        const queued = [1, 2].map((n) => postJson(g, { body: validBody({ question: `q${n}` }) }));
        await hold.queued(2);
        const cannotFit = await postJson(g, { body: validBody({ question: 'q3' }) });
        expect(await metricSum(g, 'gateway_upstream_queued')).toBe(2); // at once
        expect(cannotFit.statusCode).toBe(504);
        expect(cannotFit.json().error).toEqual({
          code: 'timeout',
          message:
            'the upstream queue is too long for this request to start before its deadline; retry later',
        });
        expect(cannotFit.headers['retry-after']).toBe('3');
        // The clock never moves on: the queued calls never get a slot, and give up at their deadline.
        for (const res of await Promise.all(queued)) {
          expect(res.statusCode).toBe(504);
          expect(res.json().error.code).toBe('timeout');
          expect(res.headers['retry-after']).toBe('1');
          expect(durationOf(g, res)).toBeLessThan(OWN_DEADLINE_BOUND_MS);
        }
        expect(g.fake.callCount()).toBe(calls);
        // Queue waits are the gateway's own: the breaker saw no upstream fault.
        expect(g.app.upstream.circuitState()).toBe('closed');
      },
    );
  });
});

describeWithRedis('deadlines across replicas sharing Redis', () => {
  const shared = replicasSharingRedis();
  let direct: Redis;

  beforeAll(() => {
    direct = new Redis(shared.redis.url);
    direct.on('error', () => {}); // the fallback test stops the server under it
  });
  afterAll(() => {
    direct.disconnect();
  });

  const replica = async () => {
    const g = await shared.replica({ UPSTREAM_TIMEOUT_MS: String(T) });
    await shared.flush();
    return g;
  };
  const mergeEvents = (g: TestGateway, event: string) =>
    metricSum(g, 'gateway_merge_events_total', { event });
  const subscribed = (body: unknown) =>
    expect
      .poll(
        async () => Number(((await direct.pubsub('NUMSUB', doneOf(body))) as [string, number])[1]),
        EVENT_BOUND,
      )
      .toBe(1);

  it(
    "a waiter whose deadline comes before a dead owner's lock expires answers 504 at its own deadline",
    BOUND,
    async () => {
      const g = await replica();
      const body = validBody();
      await direct.set(lockOf(body), 'a-dead-owner', 'PX', 60_000);
      const res = await postJson(g, { body });
      expect(res.statusCode).toBe(504);
      expect(res.json().error).toEqual({
        code: 'timeout',
        message: 'no answer before the deadline while waiting for an identical request in flight',
      });
      expect(durationOf(g, res)).toBeGreaterThanOrEqual(T - 1);
      expect(durationOf(g, res)).toBeLessThan(OWN_DEADLINE_BOUND_MS);
      expect(shared.fake.callCount()).toBe(0);
      expect(await mergeEvents(g, 'timeout')).toBe(1);
      expect(await mergeEvents(g, 'takeover')).toBe(0);
    },
  );

  it('a waiter that takes over from a dead owner keeps its own deadline', BOUND, async () => {
    const g = await replica();
    const body = validBody();
    // The dead owner's lock expires half a deadline after the request arrives; the upstream then
    // hangs. A taker-over with a fresh deadline would answer at 1.5 T; its own deadline is T.
    await direct.set(lockOf(body), 'a-dead-owner', 'PX', T / 2);
    shared.fake.enqueueFaults({ kind: 'hang' });
    const res = await postJson(g, { body });
    expect(await mergeEvents(g, 'takeover')).toBe(1);
    expect(shared.fake.callCount()).toBe(1);
    expect(res.statusCode).toBe(504);
    expect(res.json().error.code).toBe('timeout');
    expect(durationOf(g, res)).toBeLessThan(OWN_DEADLINE_BOUND_MS);
  });

  it.runIf(canControlRedis)(
    'a waiter that falls back when Redis fails keeps its own deadline',
    BOUND,
    async () => {
      const g = await replica();
      const body = validBody();
      await direct.set(lockOf(body), 'an-owner-elsewhere', 'PX', 60_000);
      shared.fake.enqueueFaults({ kind: 'hang' });
      vi.useFakeTimers({ toFake: ['Date'] });
      const started = performance.now();
      const waiting = postJson(g, { body });
      await subscribed(body);
      // Half of the request's deadline is used up (on its clock) before Redis fails.
      vi.advanceTimersByTime(T / 2);
      await shared.redis.stop();
      const res = await waiting;
      const elapsed = performance.now() - started;
      expect(await mergeEvents(g, 'fallback')).toBe(1);
      expect(res.statusCode).toBe(504);
      expect(res.json().error.code).toBe('timeout');
      expect(shared.fake.callCount()).toBe(1);
      // Its call got what was left of its deadline (T/2 of real time), not a fresh T.
      expect(elapsed).toBeLessThan(T);
    },
  );

  it(
    'an owner whose lock is taken while its call runs counts lock_lost (fake setInterval: the refresh)',
    BOUND,
    async () => {
      const g = await replica();
      const body = validBody();
      shared.fake.enqueueFaults({ kind: 'hang' });
      vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
      const owner = postJson(g, { body });
      await shared.fake.waitForCalls(1);
      await expect.poll(() => direct.exists(lockOf(body)), EVENT_BOUND).toBe(1);
      await direct.set(lockOf(body), 'someone-else', 'PX', 60_000);
      vi.advanceTimersByTime(5_000); // the owner's refresh, every lockTtlMs / 3
      await expect.poll(() => mergeEvents(g, 'lock_lost'), EVENT_BOUND).toBe(1);
      vi.useRealTimers();
      const res = await owner;
      expect(res.statusCode).toBe(504);
      expect(durationOf(g, res)).toBeLessThan(OWN_DEADLINE_BOUND_MS);
      // The lock was not ours any more: left as the other owner set it.
      expect(await direct.get(lockOf(body))).toBe('someone-else');
    },
  );
});
