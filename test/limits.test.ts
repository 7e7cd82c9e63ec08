import { afterEach, describe, expect, vi } from 'vitest';
import {
  completionOf,
  gatewayTest,
  metricSum,
  OTHER_CLIENT_KEY,
  PNG_1X1,
  postJson,
  TASKS,
  type TestGateway,
  validBody,
} from './helpers.ts';

afterEach(() => {
  vi.useRealTimers();
});

const send = (g: TestGateway, key?: string, body?: unknown, url?: string) =>
  postJson(g, { key, body, url });

describe('per-client rate limit (in memory)', () => {
  const test = gatewayTest.override('gatewaySettings', {
    env: { RATE_LIMIT_MAX: '5' },
    limits: { rateLimit: { max: 3, windowSeconds: 60 } },
  });

  test('admits max requests with ratelimit headers, then answers 429 without calling upstream', async ({
    gateway: g,
  }) => {
    const remaining: string[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await send(g);
      expect(res.statusCode).toBe(200);
      expect(res.headers['ratelimit-limit']).toBe('3');
      expect(Number(res.headers['ratelimit-reset'])).toBeGreaterThan(0);
      remaining.push(String(res.headers['ratelimit-remaining']));
    }
    expect(remaining).toEqual(['2', '1', '0']);
    const refused = await send(g);
    expect(refused.statusCode).toBe(429);
    expect(refused.json()).toEqual({
      success: false,
      error: {
        code: 'too_many_requests',
        message: expect.stringMatching(
          /^rate limit of 3 requests per 60 s exceeded for client checkout-service; retry in /,
        ),
      },
      trace_id: refused.headers['x-request-id'],
    });
    expect(Number(refused.headers['retry-after'])).toBeGreaterThan(0);
    expect(refused.headers['ratelimit-remaining']).toBe('0');
    expect(completionOf(g, refused)).toMatchObject({
      status: 429,
      limit: 'rate_limit',
      error_code: 'too_many_requests',
    });
    // Identical bodies: one upstream call, two cache hits, and the hits count toward the limit.
    expect(g.fake.callCount()).toBe(1);
    expect(await metricSum(g, 'gateway_rate_limited_total', { client: 'checkout-service' })).toBe(
      1,
    );
    expect(await metricSum(g, 'gateway_quota_refused_total')).toBe(0);
  });

  test('leaves a second client unaffected and uses the default limit for it', async ({
    gateway: g,
  }) => {
    for (let i = 0; i < 3; i++) expect((await send(g)).statusCode).toBe(200);
    expect((await send(g)).statusCode).toBe(429);
    const other = await send(g, OTHER_CLIENT_KEY);
    expect(other.statusCode).toBe(200);
    expect(other.headers['ratelimit-limit']).toBe('5');
  });

  test('counts every captcha route against one limit, and never limits health routes', async ({
    gateway: g,
  }) => {
    const submitted = await send(g, undefined, validBody({ async: true }));
    expect(submitted.statusCode).toBe(201);
    expect(
      (await send(g, undefined, { task_id: submitted.json().task_id }, TASKS)).statusCode,
    ).toBe(200);
    expect(
      (await send(g, undefined, { task_id: submitted.json().task_id }, TASKS)).statusCode,
    ).toBe(200);
    expect((await send(g, undefined, { task_id: 'x' }, TASKS)).statusCode).toBe(429);
    for (let i = 0; i < 5; i++) {
      expect((await g.app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200);
      expect((await g.app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200);
    }
  });

  test("checks the key first: an unknown key gets 401 and uses up nobody's limit", async ({
    gateway: g,
  }) => {
    for (let i = 0; i < 5; i++) {
      expect((await send(g, 'agw_not_a_key_xxxxxxxxxxxxxxxxxxxxxxxx')).statusCode).toBe(401);
    }
    expect((await send(g)).headers['ratelimit-remaining']).toBe('2');
  });

  test('opens a new window when the old one ends (fake Date)', async ({ gateway: g }) => {
    vi.useFakeTimers({ toFake: ['Date'] });
    for (let i = 0; i < 3; i++) expect((await send(g)).statusCode).toBe(200);
    vi.advanceTimersByTime(59_000);
    const refused = await send(g);
    expect(refused.statusCode).toBe(429);
    expect(refused.headers['retry-after']).toBe('1');
    vi.advanceTimersByTime(1_001);
    expect((await send(g)).statusCode).toBe(200);
  });
});

describe('daily quota of billed upstream calls (in memory)', () => {
  const test = gatewayTest.override('gatewaySettings', {
    limits: { quota: { upstreamCallsPerDay: 2 } },
  });
  const imageBody = (n: number) => validBody({ question: `question ${n}`, queries: [PNG_1X1] });

  test('refuses with 429 naming the quota and its UTC-midnight reset, without calling upstream', async ({
    gateway: g,
  }) => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(new Date('2026-11-29T15:00:00Z'));
    expect((await send(g, undefined, imageBody(1))).statusCode).toBe(200);
    expect((await send(g, undefined, imageBody(2))).statusCode).toBe(200);
    const refused = await send(g, undefined, imageBody(3));
    expect(refused.statusCode).toBe(429);
    expect(refused.json().error).toEqual({
      code: 'too_many_requests',
      message:
        'daily quota of 2 upstream calls used up for client checkout-service; it resets at 2026-11-30T00:00:00Z (UTC midnight)',
    });
    expect(refused.headers['retry-after']).toBe(String(9 * 3600));
    expect(completionOf(g, refused)).toMatchObject({
      limit: 'quota',
      error_code: 'too_many_requests',
    });
    expect(g.fake.callCount()).toBe(2);
    // Quota refusals have their own metric, apart from the rate limit's.
    expect(await metricSum(g, 'gateway_quota_refused_total', { client: 'checkout-service' })).toBe(
      1,
    );
    expect(await metricSum(g, 'gateway_rate_limited_total')).toBe(0);
    // Another client has no quota and is unaffected.
    expect((await send(g, OTHER_CLIENT_KEY, imageBody(4))).statusCode).toBe(200);
    // A new UTC day resets it.
    vi.setSystemTime(new Date('2026-11-30T00:00:01Z'));
    expect((await send(g, undefined, imageBody(5))).statusCode).toBe(200);
  });

  test('gives the unit back for an answer the upstream did not bill; polls are free', async ({
    gateway: g,
  }) => {
    // Neither a 400 nor an unreachable upstream is billed.
    g.fake.enqueueFaults({ kind: 'status', status: 400 });
    expect((await send(g, undefined, imageBody(1))).statusCode).toBe(400);
    const task = await send(g, undefined, validBody({ async: true }));
    expect(task.statusCode).toBe(201);
    for (let i = 0; i < 3; i++) {
      expect((await send(g, undefined, { task_id: task.json().task_id }, TASKS)).statusCode).toBe(
        200,
      );
    }
    expect((await send(g, undefined, imageBody(2))).statusCode).toBe(200);
    const refused = await send(g, undefined, imageBody(3));
    expect(refused.statusCode).toBe(429);
    expect(g.fake.callCount()).toBe(6);
  });
});
