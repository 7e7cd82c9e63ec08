import { afterEach, describe, expect, vi } from 'vitest';
import {
  authHeaders,
  completionLines,
  completionOf,
  EVENT_BOUND,
  gateHold,
  gatewayTest,
  metricSum,
  OTHER_CLIENT_KEY,
  PNG_1X1,
  postJson,
  RECOGNITION,
  TASKS,
  type TestGateway,
  validBody,
} from './helpers.ts';

afterEach(() => {
  vi.useRealTimers();
});

const send = (g: TestGateway, body?: unknown, headers?: Record<string, string>, url?: string) =>
  postJson(g, { body, headers, url });

const cacheFields = (g: TestGateway) =>
  completionLines(g)
    .filter((l) => l.route === RECOGNITION)
    .map((l) => l.cache);

const HIT = 'acedata-gateway; hit';
const STORED = 'acedata-gateway; fwd=uri-miss; stored';
const COLLAPSED = 'acedata-gateway; fwd=uri-miss; collapsed';

describe('answer cache', () => {
  gatewayTest(
    'stores a miss and answers the repeat with the exact same bytes',
    async ({ gateway: g }) => {
      const miss = await send(g);
      expect(miss.statusCode).toBe(200);
      expect(miss.headers['cache-status']).toBe(STORED);
      const hit = await send(g);
      expect(hit.statusCode).toBe(200);
      expect(hit.headers['cache-status']).toBe(HIT);
      expect(hit.rawPayload.equals(miss.rawPayload)).toBe(true);
      expect(g.fake.callCount()).toBe(1);
      expect(cacheFields(g)).toEqual(['miss', 'hit']);
      expect(completionOf(g, hit)?.billed).toBeUndefined();
      expect(await metricSum(g, 'gateway_cache_events_total', { event: 'hit' })).toBe(1);
      expect(await metricSum(g, 'gateway_upstream_calls_saved_total')).toBe(1);
    },
  );

  gatewayTest(
    'shares an entry only when the upstream would receive the same text',
    async ({ gateway: g }) => {
      await send(g);
      // Rewritten to the same forwarded text (data: prefix, line breaks), or the upstream's
      // default (async: false): the same request.
      const same = [
        validBody({ queries: [`data:image/png;base64,${PNG_1X1}`] }),
        validBody({ queries: [`${PNG_1X1.slice(0, 30)}\n${PNG_1X1.slice(30)}`] }),
        validBody({ async: false }),
      ];
      for (const body of same) expect((await send(g, body)).headers['cache-status']).toBe(HIT);
      expect(g.fake.callCount()).toBe(1);
      // Different text reaches the upstream: different requests.
      const different = [
        validBody({ question: '  Please click each image   containing a bus ' }),
        validBody({ question: 'Please click each image containing a\u3000bus' }),
      ];
      for (const body of different) {
        expect((await send(g, body)).headers['cache-status']).toBe(STORED);
      }
      // Numbers keep the client's spelling: 1.0 and 1 are different requests.
      const queries = JSON.stringify([PNG_1X1]);
      const statuses: unknown[] = [];
      for (const n of ['1.0', '1', '1.0']) {
        const res = await g.app.inject({
          method: 'POST',
          url: RECOGNITION,
          headers: authHeaders(),
          payload: `{"queries":${queries},"n":${n}}`,
        });
        statuses.push(res.headers['cache-status']);
      }
      expect(statuses).toEqual([STORED, STORED, HIT]);
      expect(g.fake.callCount()).toBe(5);
      expect(g.fake.calls.slice(-2).map((c) => c.rawBody)).toEqual([
        `{"queries":${queries},"n":1.0}`,
        `{"queries":${queries},"n":1}`,
      ]);
    },
  );

  gatewayTest(
    'shares answers between clients: the key does not include the client',
    async ({ gateway: g }) => {
      await send(g);
      const other = await postJson(g, { key: OTHER_CLIENT_KEY });
      expect(other.headers['cache-status']).toBe(HIT);
      expect(g.fake.callCount()).toBe(1);
    },
  );

  gatewayTest(
    'cache-control: no-cache skips the lookup but stores the fresh answer',
    async ({ gateway: g }) => {
      await send(g);
      const fresh = await send(g, validBody(), { 'cache-control': 'no-cache' });
      expect(fresh.headers['cache-status']).toBe('acedata-gateway; fwd=request; stored');
      expect(g.fake.callCount()).toBe(2);
      expect((await send(g)).headers['cache-status']).toBe(HIT);
    },
  );

  gatewayTest('cache-control: no-store skips the lookup and the store', async ({ gateway: g }) => {
    const first = await send(g, validBody(), { 'cache-control': 'max-age=0, no-store' });
    expect(first.headers['cache-status']).toBe('acedata-gateway; fwd=request');
    const second = await send(g);
    expect(second.headers['cache-status']).toBe(STORED);
    expect(g.fake.callCount()).toBe(2);
  });

  gatewayTest('never stores async submissions or task polls', async ({ gateway: g }) => {
    const a = await send(g, validBody({ async: true }));
    const b = await send(g, validBody({ async: true }));
    expect([a.statusCode, b.statusCode]).toEqual([201, 201]);
    expect(a.headers['cache-status']).toBe('acedata-gateway; fwd=bypass');
    expect(b.json().task_id).not.toBe(a.json().task_id);
    const poll = { task_id: a.json().task_id };
    const p1 = await send(g, poll, {}, TASKS);
    const p2 = await send(g, poll, {}, TASKS);
    expect(p1.headers['cache-status']).toBeUndefined();
    expect([p1.statusCode, p2.statusCode]).toEqual([200, 200]);
    expect(g.fake.callCount()).toBe(4);
  });

  describe('errors', () => {
    const test = gatewayTest.override('gatewaySettings', { env: { UPSTREAM_MAX_RETRIES: '0' } });

    test('are never stored: a failed call is made again next time', async ({ gateway: g }) => {
      g.fake.enqueueFaults({ kind: 'status', status: 400 }, { kind: 'malformed' });
      const refused = await send(g);
      expect(refused.statusCode).toBe(400);
      expect(refused.headers['cache-status']).toBe('acedata-gateway; fwd=uri-miss');
      expect((await send(g)).statusCode).toBe(502);
      const third = await send(g);
      expect(third.statusCode).toBe(200);
      expect(third.headers['cache-status']).toBe(STORED);
      expect(g.fake.callCount()).toBe(3);
    });
  });

  describe('expiry', () => {
    const test = gatewayTest.override('gatewaySettings', { env: { CACHE_TTL_SECONDS: '10' } });

    test('after CACHE_TTL_SECONDS (fake Date)', async ({ gateway: g }) => {
      vi.useFakeTimers({ toFake: ['Date'] });
      await send(g);
      vi.advanceTimersByTime(9_000);
      expect((await send(g)).headers['cache-status']).toBe(HIT);
      vi.advanceTimersByTime(1_001);
      expect((await send(g)).headers['cache-status']).toBe(STORED);
      expect(g.fake.callCount()).toBe(2);
    });
  });

  describe('CACHE_TTL_SECONDS=0', () => {
    const test = gatewayTest.override('gatewaySettings', { env: { CACHE_TTL_SECONDS: '0' } });

    test('turns caching off', async ({ gateway: g }) => {
      for (let i = 0; i < 2; i++) {
        expect((await send(g)).headers['cache-status']).toBe('acedata-gateway; fwd=bypass');
      }
      expect(g.fake.callCount()).toBe(2);
      expect(cacheFields(g)).toEqual(['bypass', 'bypass']);
    });
  });

  describe('and the daily quota', () => {
    const test = gatewayTest.override('gatewaySettings', {
      limits: { quota: { upstreamCallsPerDay: 1 } },
    });

    test('a cache hit is free', async ({ gateway: g }) => {
      expect((await send(g)).statusCode).toBe(200);
      for (let i = 0; i < 3; i++) expect((await send(g)).statusCode).toBe(200);
      const refused = await send(g, validBody({ question: 'something else' }));
      expect(refused.statusCode).toBe(429);
      expect(completionOf(g, refused)?.limit).toBe('quota');
      expect(g.fake.callCount()).toBe(1);
    });
  });
});

describe('request merging in one process', () => {
  // Calls are held at the gate (one start a second, a frozen clock) until every request joined.
  const test = gatewayTest.override('gatewaySettings', {
    env: { UPSTREAM_RATE_PER_SECOND: '1', UPSTREAM_MAX_RETRIES: '0' },
  });

  test('50 concurrent identical requests make one upstream call and get identical answers', async ({
    gateway: g,
  }) => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const hold = gateHold(g);
    await hold.takeSlot();
    const runs = Array.from({ length: 50 }, () => send(g));
    await hold.queued(1);
    await expect
      .poll(() => metricSum(g, 'gateway_merge_events_total', { event: 'merged' }), EVENT_BOUND)
      .toBe(49);
    hold.next();
    const results = await Promise.all(runs);
    expect(g.fake.callCount(RECOGNITION)).toBe(2); // the slot-taker's and the merged one
    expect(results.map((r) => r.statusCode)).toEqual(Array(50).fill(200));
    expect(new Set(results.map((r) => r.body)).size).toBe(1);
    const statuses = results.map((r) => r.headers['cache-status']);
    expect(statuses.filter((s) => s === STORED)).toHaveLength(1);
    expect(statuses.filter((s) => s === COLLAPSED)).toHaveLength(49);
    expect(cacheFields(g).filter((c) => c === 'merged')).toHaveLength(49);
    expect(await metricSum(g, 'gateway_cache_events_total', { event: 'merged' })).toBe(49);
    // Only the call that was made is billed.
    expect(completionLines(g).filter((l) => l.billed === true)).toHaveLength(2);
  });

  test('every merged request gets the same error, and nothing is cached', async ({
    gateway: g,
  }) => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const hold = gateHold(g);
    await hold.takeSlot();
    g.fake.enqueueFaults({ kind: 'status', status: 400, message: 'bad image' });
    const runs = Array.from({ length: 10 }, () => send(g));
    await expect
      .poll(() => metricSum(g, 'gateway_merge_events_total', { event: 'merged' }), EVENT_BOUND)
      .toBe(9);
    hold.next();
    const results = await Promise.all(runs);
    expect(g.fake.callCount(RECOGNITION)).toBe(2);
    expect(new Set(results.map((r) => `${r.statusCode} ${r.body}`)).size).toBe(1);
    expect(results[0]?.statusCode).toBe(400);
    hold.next();
    expect((await send(g)).statusCode).toBe(200);
    expect(g.fake.callCount(RECOGNITION)).toBe(3);
  });

  test("a merged request that gets the shared call's error is logged and counted as merged", async ({
    gateway: g,
  }) => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const hold = gateHold(g);
    await hold.takeSlot();
    // Unreachable: the owner's call fails with the gateway's own 502 (thrown, not an answer).
    g.fake.setDefaultFault({ kind: 'reset' });
    const runs = Array.from({ length: 4 }, () => send(g));
    await expect
      .poll(() => metricSum(g, 'gateway_merge_events_total', { event: 'merged' }), EVENT_BOUND)
      .toBe(3);
    hold.releaseAll();
    const results = await Promise.all(runs);
    expect(results.map((r) => r.statusCode)).toEqual([502, 502, 502, 502]);
    const caches = results.map((r) => completionOf(g, r)?.cache);
    expect(caches.filter((cache) => cache === 'merged')).toHaveLength(3);
    expect(await metricSum(g, 'gateway_cache_events_total', { event: 'merged' })).toBe(3);
  });
});

describe('repeats of byte-identical bodies', () => {
  gatewayTest(
    'are answered from the cache without parsing the body again',
    async ({ gateway: g }) => {
      const payload = JSON.stringify(validBody({ queries: [PNG_1X1, PNG_1X1] }));
      const first = await send(g, JSON.parse(payload));
      expect(first.headers['cache-status']).toBe(STORED);
      const parse = vi.spyOn(JSON, 'parse');
      let repeat: Awaited<ReturnType<typeof send>>;
      try {
        repeat = await g.app.inject({
          method: 'POST',
          url: RECOGNITION,
          headers: authHeaders(),
          payload,
        });
        expect(
          parse.mock.calls.filter(([text]) => String(text).length === payload.length),
        ).toHaveLength(0);
      } finally {
        parse.mockRestore();
      }
      expect(repeat.statusCode).toBe(200);
      expect(repeat.headers['cache-status']).toBe(HIT);
      expect(repeat.rawPayload.equals(first.rawPayload)).toBe(true);
      expect(g.fake.callCount()).toBe(1);
      expect(completionOf(g, repeat)).toMatchObject({
        cache: 'hit',
        images: 2,
        body_bytes: payload.length,
        status: 200,
      });
    },
  );

  describe('with a rate limit', () => {
    const test = gatewayTest.override('gatewaySettings', {
      limits: { rateLimit: { max: 2, windowSeconds: 60 } },
    });

    test('still check the key and count toward the rate limit', async ({ gateway: g }) => {
      const payload = JSON.stringify(validBody());
      const inject = (headers: Record<string, string>) =>
        g.app.inject({ method: 'POST', url: RECOGNITION, headers, payload });
      expect((await inject(authHeaders())).statusCode).toBe(200);
      expect(
        (await inject(authHeaders('agw_wrong_key_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'))).statusCode,
      ).toBe(401);
      expect((await inject(authHeaders())).headers['cache-status']).toBe(HIT);
      expect((await inject(authHeaders())).statusCode).toBe(429);
    });
  });

  describe('with a TTL', () => {
    const test = gatewayTest.override('gatewaySettings', { env: { CACHE_TTL_SECONDS: '10' } });

    test('go the long way once the answer expired, or with cache-control: no-cache', async ({
      gateway: g,
    }) => {
      vi.useFakeTimers({ toFake: ['Date'] });
      await send(g);
      expect(
        (await send(g, validBody(), { 'cache-control': 'no-cache' })).headers['cache-status'],
      ).toBe('acedata-gateway; fwd=request; stored');
      vi.advanceTimersByTime(10_001);
      expect((await send(g)).headers['cache-status']).toBe(STORED);
      expect(g.fake.callCount()).toBe(3);
    });
  });
});
