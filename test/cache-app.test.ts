import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  authHeaders,
  OTHER_CLIENT_KEY,
  PNG_1X1,
  postJson,
  RECOGNITION,
  startGateway,
  type TestGateway,
  validBody,
} from './helpers.ts';

let gw: TestGateway | undefined;

afterEach(async () => {
  vi.useRealTimers();
  await gw?.close();
  gw = undefined;
});

const send = (g: TestGateway, body?: unknown, headers?: Record<string, string>, url?: string) =>
  postJson(g, { body, headers, url });

const cacheFields = (g: TestGateway) =>
  g
    .logs()
    .filter((l) => l.msg === 'request completed' && l.route === RECOGNITION)
    .map((l) => l.cache);

describe('answer cache', () => {
  it('stores a miss and answers the repeat from the cache with the exact same bytes', async () => {
    gw = await startGateway();
    const miss = await send(gw);
    expect(miss.statusCode).toBe(200);
    expect(miss.headers['cache-status']).toBe('acedata-gateway; fwd=uri-miss; stored');
    const hit = await send(gw);
    expect(hit.statusCode).toBe(200);
    expect(hit.headers['cache-status']).toBe('acedata-gateway; hit');
    expect(hit.rawPayload.equals(miss.rawPayload)).toBe(true);
    expect(gw.fake.callCount()).toBe(1);
    expect(cacheFields(gw)).toEqual(['miss', 'hit']);
  });

  it('treats the same image with a data: prefix or line wrapping, and async:false, as the same request', async () => {
    gw = await startGateway();
    await send(gw);
    const variants = [
      validBody({ queries: [`data:image/png;base64,${PNG_1X1}`] }),
      validBody({ queries: [`${PNG_1X1.slice(0, 30)}\n${PNG_1X1.slice(30)}`] }),
      validBody({ async: false, question: '  Please click each image   containing a bus ' }),
    ];
    for (const body of variants)
      expect((await send(gw, body)).headers['cache-status']).toBe('acedata-gateway; hit');
    expect(gw.fake.callCount()).toBe(1);
  });

  it('shares answers between clients: the cache key does not include the client', async () => {
    gw = await startGateway();
    await send(gw);
    const other = await send(gw, validBody(), { authorization: `Bearer ${OTHER_CLIENT_KEY}` });
    expect(other.headers['cache-status']).toBe('acedata-gateway; hit');
  });

  it('never stores errors: a failed call is retried upstream next time', async () => {
    gw = await startGateway({ UPSTREAM_MAX_RETRIES: '0' });
    gw.fake.enqueueFaults({ kind: 'status', status: 400 }, { kind: 'malformed' });
    expect((await send(gw)).statusCode).toBe(400);
    expect((await send(gw)).statusCode).toBe(502);
    const third = await send(gw);
    expect(third.statusCode).toBe(200);
    expect(third.headers['cache-status']).toBe('acedata-gateway; fwd=uri-miss; stored');
    expect(gw.fake.callCount()).toBe(3);
  });

  it('cache-control: no-cache skips the lookup but stores the fresh answer', async () => {
    gw = await startGateway();
    await send(gw);
    const fresh = await send(gw, validBody(), { 'cache-control': 'no-cache' });
    expect(fresh.headers['cache-status']).toBe('acedata-gateway; fwd=request; stored');
    expect(gw.fake.callCount()).toBe(2);
    expect((await send(gw)).headers['cache-status']).toBe('acedata-gateway; hit');
  });

  it('cache-control: no-store skips the lookup and the store', async () => {
    gw = await startGateway();
    const first = await send(gw, validBody(), { 'cache-control': 'max-age=0, no-store' });
    expect(first.headers['cache-status']).toBe('acedata-gateway; fwd=request');
    const second = await send(gw);
    expect(second.headers['cache-status']).toBe('acedata-gateway; fwd=uri-miss; stored');
    expect(gw.fake.callCount()).toBe(2);
  });

  it('never stores async submissions or task polls', async () => {
    gw = await startGateway();
    const a = await send(gw, validBody({ async: true }));
    const b = await send(gw, validBody({ async: true }));
    expect(a.headers['cache-status']).toBe('acedata-gateway; fwd=bypass');
    expect(b.json().task_id).not.toBe(a.json().task_id);
    const poll = { task_id: a.json().task_id };
    const p1 = await send(gw, poll, {}, '/captcha/tasks');
    const p2 = await send(gw, poll, {}, '/captcha/tasks');
    expect(p1.headers['cache-status']).toBeUndefined();
    expect(p2.statusCode).toBe(200);
    expect(gw.fake.callCount()).toBe(4);
  });

  it('expires entries after CACHE_TTL_SECONDS', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    gw = await startGateway({ CACHE_TTL_SECONDS: '10' });
    await send(gw);
    vi.advanceTimersByTime(9_000);
    expect((await send(gw)).headers['cache-status']).toBe('acedata-gateway; hit');
    vi.advanceTimersByTime(1_001);
    expect((await send(gw)).headers['cache-status']).toBe('acedata-gateway; fwd=uri-miss; stored');
    expect(gw.fake.callCount()).toBe(2);
  });

  it('CACHE_TTL_SECONDS=0 turns caching off', async () => {
    gw = await startGateway({ CACHE_TTL_SECONDS: '0' });
    for (let i = 0; i < 2; i++)
      expect((await send(gw)).headers['cache-status']).toBe('acedata-gateway; fwd=bypass');
    expect(gw.fake.callCount()).toBe(2);
    expect(cacheFields(gw)).toEqual(['bypass', 'bypass']);
  });

  it('keeps cache hits free of the daily quota', async () => {
    gw = await startGateway({}, { limits: { quota: { upstreamCallsPerDay: 1 } } });
    expect((await send(gw)).statusCode).toBe(200);
    for (let i = 0; i < 3; i++) expect((await send(gw)).statusCode).toBe(200);
    expect((await send(gw, validBody({ question: 'something else' }))).statusCode).toBe(429);
    expect(gw.fake.callCount()).toBe(1);
  });
});

describe('request merging in one process', () => {
  it('50 concurrent identical requests make one upstream call and get 50 identical answers', async () => {
    gw = await startGateway();
    gw.fake.setLatency(200);
    const g = gw;
    const results = await Promise.all(Array.from({ length: 50 }, () => send(g)));
    expect(gw.fake.callCount()).toBe(1);
    expect(results.map((r) => r.statusCode)).toEqual(Array(50).fill(200));
    expect(new Set(results.map((r) => r.body)).size).toBe(1);
    const statuses = results.map((r) => r.headers['cache-status']);
    expect(statuses.filter((s) => s === 'acedata-gateway; fwd=uri-miss; stored')).toHaveLength(1);
    expect(statuses.filter((s) => s === 'acedata-gateway; fwd=uri-miss; collapsed')).toHaveLength(
      49,
    );
    expect(cacheFields(gw).filter((c) => c === 'merged')).toHaveLength(49);
  });

  it('gives every merged request the same error when the shared call fails, and caches nothing', async () => {
    gw = await startGateway({ UPSTREAM_MAX_RETRIES: '0' });
    gw.fake.enqueueFaults({ kind: 'status', status: 400, message: 'bad image', afterMs: 150 });
    const g = gw;
    const results = await Promise.all(Array.from({ length: 10 }, () => send(g)));
    expect(gw.fake.callCount()).toBe(1);
    expect(new Set(results.map((r) => `${r.statusCode} ${r.body}`)).size).toBe(1);
    expect(results[0]?.statusCode).toBe(400);
    expect((await send(gw)).statusCode).toBe(200);
    expect(gw.fake.callCount()).toBe(2);
  });

  it('a merged request is free: only the owner uses its quota', async () => {
    gw = await startGateway({}, { limits: { quota: { upstreamCallsPerDay: 1 } } });
    gw.fake.setLatency(150);
    const g = gw;
    const [mine, theirs] = await Promise.all([
      send(g),
      send(g, validBody(), { authorization: `Bearer ${OTHER_CLIENT_KEY}` }),
    ]);
    expect([mine.statusCode, theirs.statusCode]).toEqual([200, 200]);
    expect(gw.fake.callCount()).toBe(1);
    // checkout-service owned the call and used its one unit.
    expect((await send(gw, validBody({ question: 'new' }))).statusCode).toBe(429);
  });
});

describe('repeats of byte-identical bodies', () => {
  it('are answered from the cache without parsing the body again', async () => {
    gw = await startGateway();
    const payload = JSON.stringify(validBody({ queries: [PNG_1X1, PNG_1X1] }));
    const first = await send(gw, JSON.parse(payload));
    expect(first.headers['cache-status']).toBe('acedata-gateway; fwd=uri-miss; stored');
    const parse = vi.spyOn(JSON, 'parse');
    let repeat: Awaited<ReturnType<typeof send>>;
    try {
      repeat = await gw.app.inject({
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
    expect(repeat.headers['cache-status']).toBe('acedata-gateway; hit');
    expect(repeat.rawPayload.equals(first.rawPayload)).toBe(true);
    expect(gw.fake.callCount()).toBe(1);
    const line = gw.logs().find((l) => l.trace_id === repeat.headers['x-request-id']);
    expect(line).toMatchObject({
      cache: 'hit',
      images: 2,
      body_bytes: payload.length,
      status: 200,
    });
  });

  it('still check the key and count toward the rate limit', async () => {
    gw = await startGateway({}, { limits: { rateLimit: { max: 2, windowSeconds: 60 } } });
    const payload = JSON.stringify(validBody());
    const inject = (headers: Record<string, string>) =>
      (gw as TestGateway).app.inject({ method: 'POST', url: RECOGNITION, headers, payload });
    expect((await inject(authHeaders())).statusCode).toBe(200);
    expect(
      (await inject(authHeaders('agw_wrong_key_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'))).statusCode,
    ).toBe(401);
    expect((await inject(authHeaders())).headers['cache-status']).toBe('acedata-gateway; hit');
    expect((await inject(authHeaders())).statusCode).toBe(429);
  });

  it('go the long way once the cached answer has expired, or with cache-control: no-cache', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    gw = await startGateway({ CACHE_TTL_SECONDS: '10' });
    await send(gw);
    expect(
      (await send(gw, validBody(), { 'cache-control': 'no-cache' })).headers['cache-status'],
    ).toBe('acedata-gateway; fwd=request; stored');
    vi.advanceTimersByTime(10_001);
    expect((await send(gw)).headers['cache-status']).toBe('acedata-gateway; fwd=uri-miss; stored');
    expect(gw.fake.callCount()).toBe(3);
  });
});
