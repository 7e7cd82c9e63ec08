import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  OTHER_CLIENT_KEY,
  PNG_1X1,
  postJson,
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

const send = (g: TestGateway, key?: string, body?: unknown, url?: string) =>
  postJson(g, { key, body, url });

describe('per-client rate limit (in memory)', () => {
  it('admits max requests with ratelimit headers, then answers 429 without calling upstream', async () => {
    gw = await startGateway({}, { limits: { rateLimit: { max: 3, windowSeconds: 60 } } });
    const remaining: string[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await send(gw);
      expect(res.statusCode).toBe(200);
      expect(res.headers['ratelimit-limit']).toBe('3');
      expect(Number(res.headers['ratelimit-reset'])).toBeGreaterThan(0);
      remaining.push(String(res.headers['ratelimit-remaining']));
    }
    expect(remaining).toEqual(['2', '1', '0']);
    const refused = await send(gw);
    expect(refused.statusCode).toBe(429);
    expect(refused.json()).toEqual({
      success: false,
      error: {
        code: 'too_many_requests',
        message: expect.stringMatching(
          /rate limit of 3 requests per 60 s exceeded for client checkout-service/,
        ),
      },
      trace_id: refused.headers['x-request-id'],
    });
    expect(Number(refused.headers['retry-after'])).toBeGreaterThan(0);
    expect(refused.headers['ratelimit-remaining']).toBe('0');
    // Identical bodies: one upstream call, two cache hits, and the hits still count toward the limit.
    expect(gw.fake.callCount()).toBe(1);
  });

  it('leaves a second client unaffected and uses the default limit for it', async () => {
    gw = await startGateway(
      { RATE_LIMIT_MAX: '5' },
      { limits: { rateLimit: { max: 1, windowSeconds: 60 } } },
    );
    expect((await send(gw)).statusCode).toBe(200);
    expect((await send(gw)).statusCode).toBe(429);
    const other = await send(gw, OTHER_CLIENT_KEY);
    expect(other.statusCode).toBe(200);
    expect(other.headers['ratelimit-limit']).toBe('5');
  });

  it('counts both captcha routes against one limit, and never limits health routes', async () => {
    gw = await startGateway({}, { limits: { rateLimit: { max: 2, windowSeconds: 60 } } });
    const submitted = await send(gw, undefined, validBody({ async: true }));
    expect(submitted.statusCode).toBe(200);
    const polled = await send(
      gw,
      undefined,
      { task_id: submitted.json().task_id },
      '/captcha/tasks',
    );
    expect(polled.statusCode).toBe(200);
    expect((await send(gw, undefined, { task_id: 'x' }, '/captcha/tasks')).statusCode).toBe(429);
    for (let i = 0; i < 5; i++) {
      expect((await gw.app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200);
    }
  });

  it("checks the key first: an unknown key gets 401 and does not use up anyone's limit", async () => {
    gw = await startGateway({}, { limits: { rateLimit: { max: 1, windowSeconds: 60 } } });
    for (let i = 0; i < 3; i++)
      expect((await send(gw, 'agw_not_a_key_xxxxxxxxxxxxxxxxxxxxxxxx')).statusCode).toBe(401);
    expect((await send(gw)).statusCode).toBe(200);
  });

  it('opens a new window when the old one ends', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    gw = await startGateway({}, { limits: { rateLimit: { max: 1, windowSeconds: 10 } } });
    expect((await send(gw)).statusCode).toBe(200);
    vi.advanceTimersByTime(9_000);
    expect((await send(gw)).statusCode).toBe(429);
    vi.advanceTimersByTime(1_001);
    expect((await send(gw)).statusCode).toBe(200);
  });
});

describe('daily quota of billed upstream calls (in memory)', () => {
  const imageBody = (n: number) => validBody({ question: `question ${n}`, queries: [PNG_1X1] });

  it('refuses with 429 naming the quota and its UTC-midnight reset, without calling upstream', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(new Date('2026-11-29T15:00:00Z'));
    gw = await startGateway({}, { limits: { quota: { upstreamCallsPerDay: 2 } } });
    expect((await send(gw, undefined, imageBody(1))).statusCode).toBe(200);
    expect((await send(gw, undefined, imageBody(2))).statusCode).toBe(200);
    const refused = await send(gw, undefined, imageBody(3));
    expect(refused.statusCode).toBe(429);
    expect(refused.json().error).toEqual({
      code: 'too_many_requests',
      message:
        'daily quota of 2 upstream calls used up for client checkout-service; it resets at 2026-11-30T00:00:00Z (UTC midnight)',
    });
    expect(refused.headers['retry-after']).toBe(String(9 * 3600));
    expect(gw.fake.callCount()).toBe(2);
    // Another client has no quota and is unaffected.
    expect((await send(gw, OTHER_CLIENT_KEY, imageBody(4))).statusCode).toBe(200);
    // A new UTC day resets it.
    vi.setSystemTime(new Date('2026-11-30T00:00:01Z'));
    expect((await send(gw, undefined, imageBody(5))).statusCode).toBe(200);
  });

  it('counts only billed (successful) upstream calls, and never task polls', async () => {
    gw = await startGateway({}, { limits: { quota: { upstreamCallsPerDay: 1 } } });
    gw.fake.enqueueFaults({ kind: 'status', status: 400 }, { kind: 'malformed' });
    expect((await send(gw, undefined, imageBody(1))).statusCode).toBe(400);
    expect((await send(gw, undefined, imageBody(2))).statusCode).toBe(502);
    for (let i = 0; i < 3; i++) {
      expect((await send(gw, undefined, { task_id: `t${i}` }, '/captcha/tasks')).statusCode).toBe(
        404,
      );
    }
    expect((await send(gw, undefined, imageBody(3))).statusCode).toBe(200);
    expect((await send(gw, undefined, imageBody(4))).statusCode).toBe(429);
  });
});
