// The fake upstream against the upstream's public spec (AceDataCloud/Docs openapi/hcaptcha.json)
// and guides: the two solving endpoints, auth, every documented error, the rate limit, recording.
// Tasks: fake-upstream-tasks.test.ts; faults and control routes: fake-upstream-faults.test.ts.

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  callFake,
  deriveSolution,
  FAKE_UPSTREAM_DEFAULT_TOKEN,
  type FakeCallOptions,
  type FakeReply,
  type FakeUpstream,
  type FakeUpstreamOptions,
  RECOGNITION_PATH,
  type RevocationCode,
  startFakeUpstream,
  TASKS_PATH,
  TOKEN_PATH,
} from '../dev/fake-upstream.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const IMAGE = Buffer.from('\x89PNG\r\n\x1a\nfake').toString('base64');
const BODY = { question: 'Please click each image containing a bicycle', queries: [IMAGE] };
const SITE = { website_key: 'a5f74b19-9e45-40e0-b45d-47ff91b7a6c2', website_url: 'https://x.test' };
const T0 = 1_784_885_653_000;

/** The documented envelope with the exact code and message. */
function expectError(reply: FakeReply, status: number, code: string, message?: string): void {
  expect(reply.status).toBe(status);
  expect(reply.headers.get('content-type')).toBe('application/json');
  expect(reply.json).toEqual({
    success: false,
    error: { code, message: message ?? expect.any(String) },
    trace_id: expect.stringMatching(UUID),
  });
}

const errorMessage = (reply: FakeReply) =>
  (reply.json as { error: { message: string } }).error.message;

async function withFake<T>(
  options: FakeUpstreamOptions,
  fn: (fake: FakeUpstream) => Promise<T>,
): Promise<T> {
  const fake = await startFakeUpstream(options);
  try {
    return await fn(fake);
  } finally {
    await fake.close();
  }
}

let fake: FakeUpstream;
let clock = T0;
const recognize = (body: unknown = BODY, opts?: FakeCallOptions) =>
  callFake(fake.url, RECOGNITION_PATH, body, opts);
const solveToken = (body: unknown = SITE, opts?: FakeCallOptions) =>
  callFake(fake.url, TOKEN_PATH, body, opts);

beforeAll(async () => {
  fake = await startFakeUpstream({ now: () => clock });
});
afterAll(async () => {
  await fake.close();
});
afterEach(() => {
  fake.reset();
  clock = T0;
});

describe('recognition, sync', () => {
  it('answers 200 with the spec example shape and Unix-seconds timing fields', async () => {
    const reply = await recognize();
    expect(reply.status).toBe(200);
    expect(reply.headers.get('content-type')).toBe('application/json');
    expect(reply.json).toEqual({
      solution: {
        label: expect.stringMatching(/^[0-9a-f]{8}$/),
        box: ['360', '276'],
        confidences: 0.635,
      },
      started_at: T0 / 1000,
      finished_at: T0 / 1000,
      elapsed: 0,
    });
    expect((reply.json as { solution: unknown }).solution).toEqual(
      deriveSolution(BODY.question, BODY.queries),
    );
  });

  it('reports elapsed as finished_at - started_at from its clock', async () => {
    let tick = 0;
    await withFake({ now: () => T0 + 1_600 * tick++ }, async (f) => {
      const reply = await callFake(f.url, RECOGNITION_PATH, BODY);
      const { started_at, finished_at, elapsed } = reply.json as Record<string, number>;
      expect(started_at).toBeGreaterThan(T0 / 1000);
      expect(elapsed).toBe(1.6);
      expect(finished_at).toBeCloseTo((started_at ?? 0) + 1.6, 6);
    });
  });

  it('answers the same solution for the same question and queries, another otherwise', async () => {
    const label = (r: FakeReply) => (r.json as { solution: { label: string } }).solution.label;
    const a = await recognize();
    const b = await recognize({ ...BODY, extra: 'unknown fields are accepted' });
    const c = await recognize({ ...BODY, question: 'Please click each image containing a boat' });
    const d = await recognize({ ...BODY, queries: [IMAGE, IMAGE] });
    expect(b.text).toBe(a.text); // same clock, same inputs: same bytes
    expect(new Set([label(a), label(c), label(d)]).size).toBe(3);
  });

  it('needs no question (the spec marks no field required) and takes image URLs', async () => {
    const noQuestion = await recognize({ queries: [IMAGE] });
    expect(noQuestion.status).toBe(200);
    expect((noQuestion.json as { solution: unknown }).solution).toEqual(
      deriveSolution(undefined, [IMAGE]),
    );
    const urls = await recognize({
      queries: ['https://example.com/img.jpg'],
      question: '点击公交车',
    });
    expect(urls.status).toBe(200);
  });

  it('answers 400 bad_request naming the field for a body it cannot answer', async () => {
    expectError(await recognize(undefined, { raw: '{"queries":' }), 400, 'bad_request');
    const cases: [unknown, string][] = [
      [{}, 'queries'],
      [{ question: 'q' }, 'queries'],
      [{ queries: [] }, 'queries'],
      [{ queries: [''] }, 'queries.0'],
      [{ queries: [1] }, 'queries.0'],
      [{ queries: IMAGE }, 'queries'],
      [{ queries: [IMAGE], question: 7 }, 'question'],
      [{ queries: [IMAGE], async: 'true' }, 'async'],
      [[IMAGE], 'body'],
    ];
    for (const [body, field] of cases) {
      const reply = await recognize(body);
      expectError(reply, 400, 'bad_request');
      expect(errorMessage(reply).startsWith(`${field}: `), JSON.stringify(body)).toBe(true);
    }
  });

  it('adds no trace, rate-limit or retry-after headers and does not echo x-request-id', async () => {
    const reply = await recognize(BODY, { headers: { 'x-request-id': 'req-123' } });
    const names = [...reply.headers.keys()];
    expect(names.filter((n) => /request-id|trace|ratelimit|retry-after/.test(n))).toEqual([]);
  });
});

describe('async creation', () => {
  it('answers 201 {task_id, trace_id} on both solving endpoints, with no latency', async () => {
    await withFake({ latencyMs: 600_000 }, async (f) => {
      for (const [path, body] of [
        [RECOGNITION_PATH, { ...BODY, async: true }],
        [TOKEN_PATH, { ...SITE, async: true }],
      ] as const) {
        const reply = await callFake(f.url, path, body);
        expect(reply.status).toBe(201);
        expect(reply.json).toEqual({
          task_id: expect.stringMatching(UUID),
          trace_id: expect.stringMatching(UUID),
        });
      }
    });
  });

  it('async: false is a sync call', async () => {
    expect((await recognize({ ...BODY, async: false })).status).toBe(200);
  });
});

describe('token', () => {
  it('answers 200 with a fresh P1_ token and timing fields, a new token every call', async () => {
    const first = await solveToken({ ...SITE, rqdata: 'RQ', proxy: 'http://u:p@1.2.3.4:8080' });
    expect(first.status).toBe(200);
    expect(first.json).toEqual({
      token: expect.stringMatching(/^P1_eyJ[\w.-]+$/),
      started_at: T0 / 1000,
      finished_at: T0 / 1000,
      elapsed: 0,
    });
    const second = await solveToken();
    expect((second.json as { token: string }).token).not.toBe(
      (first.json as { token: string }).token,
    );
  });

  it('requires website_key and website_url as strings; rqdata, proxy, async typed', async () => {
    expectError(await solveToken(undefined, { raw: 'nope' }), 400, 'bad_request');
    const cases: [unknown, string][] = [
      [{}, 'website_key'],
      [{ website_url: SITE.website_url }, 'website_key'],
      [{ website_key: SITE.website_key }, 'website_url'],
      [{ ...SITE, website_key: '' }, 'website_key'],
      [{ ...SITE, website_url: 42 }, 'website_url'],
      [{ ...SITE, rqdata: {} }, 'rqdata'],
      [{ ...SITE, proxy: 1 }, 'proxy'],
      [{ ...SITE, async: 1 }, 'async'],
    ];
    for (const [body, field] of cases) {
      const reply = await solveToken(body);
      expectError(reply, 400, 'bad_request');
      expect(errorMessage(reply).startsWith(`${field}: `), JSON.stringify(body)).toBe(true);
    }
    expect((await solveToken({ ...SITE, extra: true })).status).toBe(200);
  });
});

describe('auth: the documented codes, statuses and messages on every endpoint', () => {
  const paths = [
    [RECOGNITION_PATH, BODY],
    [TOKEN_PATH, SITE],
    [TASKS_PATH, { task_id: 'x' }],
  ] as const;

  it('a missing token is 400 no_token', async () => {
    for (const [path, body] of paths) {
      const message = 'No token specified for the request.';
      expectError(await callFake(fake.url, path, body, { token: null }), 400, 'no_token', message);
      const basic = await callFake(fake.url, path, body, {
        token: null,
        headers: { authorization: 'Basic abc' },
      });
      expectError(basic, 400, 'no_token', message);
    }
  });

  it('an unknown token is 401 invalid_token', async () => {
    for (const [path, body] of paths) {
      const reply = await callFake(fake.url, path, body, { token: 'nope' });
      expectError(reply, 401, 'invalid_token', 'The specified token is invalid or wrong.');
    }
  });

  it('a revoked token is refused as revokeToken says, until reset', async () => {
    const revocations: [RevocationCode, number, string][] = [
      ['invalid_token', 401, 'The specified token is invalid or wrong.'],
      ['token_expired', 401, 'token expired.'],
      [
        'used_up',
        403,
        'Your balance is not sufficient for current request, please buy more in Ace Data Cloud.',
      ],
      [
        'disabled',
        400,
        'Your application has been disabled by Ace Data Cloud due to abnormal usage behavior, please contact our support to get more information.',
      ],
      ['token_mismatched', 400, 'The specified token is not matched with API.'],
    ];
    const tokens = revocations.map(([code]) => `token-${code}`);
    await withFake({ tokens: [...tokens, 'fine'] }, async (f) => {
      for (const [code] of revocations) f.revokeToken(`token-${code}`, code);
      for (const [code, status, message] of revocations) {
        for (const [path, body] of paths) {
          const reply = await callFake(f.url, path, body, { token: `token-${code}` });
          expectError(reply, status, code, message);
        }
      }
      expect((await callFake(f.url, RECOGNITION_PATH, BODY, { token: 'fine' })).status).toBe(200);
      f.reset();
      const again = await callFake(f.url, RECOGNITION_PATH, BODY, { token: 'token-used_up' });
      expect(again.status).toBe(200);
    });
  });

  it('auth comes before the body check', async () => {
    expectError(await recognize({}, { token: 'nope' }), 401, 'invalid_token');
  });
});

describe('unknown paths', () => {
  it('answer 404 no_api with the documented message, whatever the method', async () => {
    const message = 'API does not exist, please make sure url is correct.';
    for (const path of [
      '/captcha/recognition/recaptcha',
      '/captcha/task',
      '/',
      '/captcha/tasks/x',
    ]) {
      expectError(await callFake(fake.url, path, BODY), 404, 'no_api', message);
    }
    const get = await callFake(fake.url, RECOGNITION_PATH, undefined, { method: 'GET' });
    expectError(get, 404, 'no_api', message);
    expectError(await recognize(BODY, { token: null, method: 'PUT' }), 404, 'no_api', message);
  });
});

describe('rate limit', () => {
  it('is off by default', async () => {
    for (let i = 0; i < 100; i++) expect((await recognize()).status).toBe(200);
  });

  it('refuses calls above rateLimitPerSecond per token with 429 too_many_requests', async () => {
    let now = T0;
    await withFake({ tokens: ['a', 'b'], rateLimitPerSecond: 3, now: () => now }, async (f) => {
      const call = (token: string, path = RECOGNITION_PATH) =>
        callFake(f.url, path, path === TASKS_PATH ? { task_id: 'x' } : BODY, { token });
      expect((await call('a')).status).toBe(200);
      expect((await call('a')).status).toBe(200);
      expect((await call('a', TASKS_PATH)).status).toBe(404); // polls count too
      const refused = await call('a');
      expectError(refused, 429, 'too_many_requests', 'You have exceeded the rate limit.');
      expect(refused.headers.get('retry-after')).toBeNull();
      expect((await call('b')).status).toBe(200); // per token
      expectError(await call('nope'), 401, 'invalid_token'); // auth first, costs nothing
      now += 334; // one call's worth refills at 3/s
      expect((await call('a')).status).toBe(200);
      expect((await call('a')).status).toBe(429);
      now += 1_000;
      for (let i = 0; i < 3; i++) expect((await call('a')).status).toBe(200);
      expect((await call('a')).status).toBe(429);
    });
  });
});

describe('recording', () => {
  it('records method, path, headers, token, raw and parsed body, time', async () => {
    const raw = '{ "question" : "q",\n "queries": ["aGk="] }';
    await recognize(undefined, { raw, headers: { 'x-request-id': 'trace-1' } });
    await recognize(undefined, { raw: 'not json', token: 'other' });
    await callFake(fake.url, TASKS_PATH, { task_id: 'x' });
    await callFake(fake.url, '/nope', {}, { token: null });
    expect(fake.callCount()).toBe(4);
    expect(fake.callCount(RECOGNITION_PATH)).toBe(2);
    expect(fake.callCount(TASKS_PATH)).toBe(1);
    const [first, second] = fake.calls;
    expect(first).toMatchObject({
      method: 'POST',
      path: RECOGNITION_PATH,
      token: FAKE_UPSTREAM_DEFAULT_TOKEN,
      rawBody: raw,
      body: { question: 'q', queries: ['aGk='] },
      at: T0,
      closedEarly: false,
    });
    expect(first?.headers['x-request-id']).toBe('trace-1');
    expect(first?.headers.authorization).toBe(`Bearer ${FAKE_UPSTREAM_DEFAULT_TOKEN}`);
    expect(second).toMatchObject({ token: 'other', rawBody: 'not json', body: undefined });
    fake.reset();
    expect(fake.calls).toEqual([]);
  });

  it('waitForCalls resolves once that many calls arrived', async () => {
    await fake.waitForCalls(0);
    const waiting = fake.waitForCalls(2);
    let resolved = false;
    void waiting.then(() => {
      resolved = true;
    });
    await recognize();
    await Promise.resolve();
    expect(resolved).toBe(false);
    await recognize();
    await waiting;
    expect(fake.callCount()).toBe(2);
  });
});

describe('options', () => {
  it('are checked by the same schema: bad values throw naming the option', async () => {
    await expect(startFakeUpstream({ latencyMs: -1 })).rejects.toThrow(/latencyMs/);
    await expect(startFakeUpstream({ taskDeadlineMs: 0 })).rejects.toThrow(/taskDeadlineMs/);
    await expect(startFakeUpstream({ rateLimitPerSecond: 0 })).rejects.toThrow(RangeError);
    await expect(startFakeUpstream({ port: 70_000 })).rejects.toThrow(/port/);
    expect(() => fake.setLatency(-5)).toThrow(RangeError);
  });
});
