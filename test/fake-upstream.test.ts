import { createHash } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  deriveSolution,
  FAKE_UPSTREAM_DEFAULT_TOKEN,
  type FakeUpstream,
  type FakeUpstreamOptions,
  startFakeUpstream,
} from '../dev/fake-upstream.ts';

const RECOGNITION = '/captcha/recognition/hcaptcha';
const TASKS = '/captcha/tasks';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const IMAGE = Buffer.from('\x89PNG\r\n\x1a\nfake').toString('base64');
const BODY = { question: 'Please click each image containing a bicycle', queries: [IMAGE] };

interface Reply {
  status: number;
  headers: Headers;
  text: string;
  json: unknown;
}

async function call(
  base: string,
  path: string,
  body: unknown,
  opts: { token?: string | null; headers?: Record<string, string>; raw?: string } = {},
): Promise<Reply> {
  const headers: Record<string, string> = { 'content-type': 'application/json', ...opts.headers };
  const token = opts.token === undefined ? FAKE_UPSTREAM_DEFAULT_TOKEN : opts.token;
  if (token !== null) headers.authorization = `Bearer ${token}`;
  const res = await fetch(base + path, {
    method: 'POST',
    headers,
    body: opts.raw ?? JSON.stringify(body),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

function expectEnvelope(reply: Reply, status: number, code: string): void {
  expect(reply.status).toBe(status);
  expect(reply.headers.get('content-type')).toBe('application/json');
  expect(reply.json).toEqual({
    success: false,
    error: { code, message: expect.any(String) },
    trace_id: expect.stringMatching(UUID),
  });
}

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
const recognize = (body: unknown = BODY, opts?: Parameters<typeof call>[3]) =>
  call(fake.url, RECOGNITION, body, opts);

beforeAll(async () => {
  fake = await startFakeUpstream();
});
afterAll(async () => {
  await fake.close();
});
afterEach(() => {
  fake.reset();
});

describe('sync recognition', () => {
  it('answers the documented success shape', async () => {
    const reply = await recognize();
    expect(reply.status).toBe(200);
    expect(reply.headers.get('content-type')).toBe('application/json');
    expect(reply.json).toEqual({
      solution: {
        label: expect.stringMatching(/^[0-9a-f]{8}$/),
        box: ['360', '276'],
        confidences: 0.635,
      },
      elapsed: 0,
    });
    expect(reply.json).toEqual({
      solution: deriveSolution(BODY.question, BODY.queries),
      elapsed: 0,
    });
  });

  it('is byte-for-byte deterministic for identical inputs and differs otherwise', async () => {
    const a = await recognize();
    const b = await recognize({ ...BODY, extra: 'forwarded fields are accepted' });
    const c = await recognize({ ...BODY, question: 'Please click each image containing a boat' });
    const d = await recognize({ ...BODY, queries: [IMAGE, IMAGE] });
    expect(b.text).toBe(a.text);
    const label = (r: Reply) => (r.json as { solution: { label: string } }).solution.label;
    expect(new Set([label(a), label(c), label(d)]).size).toBe(3);
  });

  it('adds no trace or rate-limit headers and does not echo x-request-id', async () => {
    const reply = await recognize(BODY, { headers: { 'x-request-id': 'req-123' } });
    const names = [...reply.headers.keys()];
    expect(names.filter((n) => /request-id|trace|ratelimit|retry-after/.test(n))).toEqual([]);
  });

  it('reports the configured latency as elapsed seconds', async () => {
    fake.setLatency(40);
    const started = Date.now();
    const reply = await recognize();
    expect(Date.now() - started).toBeGreaterThanOrEqual(35);
    expect((reply.json as { elapsed: number }).elapsed).toBe(0);
    fake.reset();
    await withFake({ latencyMs: 31_600 }, async (slow) => {
      slow.setLatency(50);
      const r = await call(slow.url, RECOGNITION, BODY);
      expect((r.json as { elapsed: number }).elapsed).toBe(0.1);
    });
  });
});

describe('auth', () => {
  it('refuses a missing token with 400 no_token', async () => {
    expectEnvelope(await recognize(BODY, { token: null }), 400, 'no_token');
    expectEnvelope(
      await recognize(BODY, { token: null, headers: { authorization: 'Basic abc' } }),
      400,
      'no_token',
    );
  });

  it('refuses an unknown token with 401 invalid_token', async () => {
    expectEnvelope(await recognize(BODY, { token: 'nope' }), 401, 'invalid_token');
  });

  it('refuses revoked tokens as revokeToken says, until reset', async () => {
    await withFake({ tokens: ['a', 'b', 'c'] }, async (f) => {
      f.revokeToken('a', 'used_up');
      f.revokeToken('b', 'token_expired');
      expectEnvelope(await call(f.url, RECOGNITION, BODY, { token: 'a' }), 403, 'used_up');
      expectEnvelope(await call(f.url, RECOGNITION, BODY, { token: 'b' }), 401, 'token_expired');
      expect((await call(f.url, RECOGNITION, BODY, { token: 'c' })).status).toBe(200);
      f.reset();
      expect((await call(f.url, RECOGNITION, BODY, { token: 'a' })).status).toBe(200);
    });
    fake.revokeToken(FAKE_UPSTREAM_DEFAULT_TOKEN, 'disabled');
    expectEnvelope(await recognize(), 403, 'disabled');
  });
});

describe('validation', () => {
  it('answers 400 bad_request naming the field', async () => {
    expectEnvelope(await recognize(undefined, { raw: '{"question":' }), 400, 'bad_request');
    const cases: [unknown, string][] = [
      [{ queries: [IMAGE] }, 'question'],
      [{ question: '', queries: [IMAGE] }, 'question'],
      [{ question: 'q' }, 'queries'],
      [{ question: 'q', queries: [] }, 'queries'],
      [{ question: 'q', queries: [1] }, 'queries'],
      [[1, 2], 'object'],
    ];
    for (const [body, field] of cases) {
      const reply = await recognize(body);
      expectEnvelope(reply, 400, 'bad_request');
      expect((reply.json as { error: { message: string } }).error.message).toContain(field);
    }
  });

  it('answers 404 no_api for unknown routes', async () => {
    expectEnvelope(await call(fake.url, '/captcha/recognition/recaptcha', BODY), 404, 'no_api');
    const res = await fetch(fake.url + RECOGNITION);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('no_api');
  });
});

describe('async', () => {
  it('submits, then polls to ready with the same solution as sync', async () => {
    const submitted = await recognize({ ...BODY, async: true });
    expect(submitted.status).toBe(200);
    expect(submitted.json).toEqual({
      task_id: expect.stringMatching(UUID),
      trace_id: expect.stringMatching(UUID),
    });
    const taskId = (submitted.json as { task_id: string }).task_id;
    const polled = await call(fake.url, TASKS, { task_id: taskId });
    expect(polled.status).toBe(200);
    expect(polled.json).toEqual({
      task_id: taskId,
      status: 'ready',
      solution: deriveSolution(BODY.question, BODY.queries),
      trace_id: expect.stringMatching(UUID),
    });
  });

  it('stays processing before asyncReadyAfterMs', async () => {
    await withFake({ asyncReadyAfterMs: 60_000, latencyMs: 60_000 }, async (f) => {
      const started = Date.now();
      const submitted = await call(f.url, RECOGNITION, { ...BODY, async: true });
      expect(Date.now() - started).toBeLessThan(1000); // no latency on submission
      const taskId = (submitted.json as { task_id: string }).task_id;
      const polled = await call(f.url, TASKS, { task_id: taskId });
      expect(polled.json).toEqual({
        task_id: taskId,
        status: 'processing',
        trace_id: expect.stringMatching(UUID),
      });
      expect(f.callCount(TASKS)).toBe(1);
    });
  });

  it('refuses bad polls', async () => {
    expectEnvelope(await call(fake.url, TASKS, {}), 400, 'bad_request');
    expectEnvelope(await call(fake.url, TASKS, undefined, { raw: 'nope' }), 400, 'bad_request');
    expectEnvelope(await call(fake.url, TASKS, { task_id: 'unknown' }), 404, 'not_found');
    expectEnvelope(await call(fake.url, TASKS, { task_id: 'x' }, { token: null }), 400, 'no_token');
  });

  it('forgets tasks on reset', async () => {
    const submitted = await recognize({ ...BODY, async: true });
    fake.reset();
    const taskId = (submitted.json as { task_id: string }).task_id;
    expectEnvelope(await call(fake.url, TASKS, { task_id: taskId }), 404, 'not_found');
  });
});

describe('faults', () => {
  it('status: the envelope with default or given code, and retry-after', async () => {
    fake.enqueueFaults(
      { kind: 'status', status: 503, retryAfter: '7' },
      { kind: 'status', status: 429 },
      { kind: 'status', status: 403, code: 'used_up', message: 'balance used up' },
    );
    const first = await recognize(BODY, { token: 'fault-before-auth' });
    expectEnvelope(first, 503, 'api_error');
    expect(first.headers.get('retry-after')).toBe('7');
    expectEnvelope(await recognize(), 429, 'too_many_requests');
    const third = await recognize();
    expectEnvelope(third, 403, 'used_up');
    expect((third.json as { error: { message: string } }).error.message).toBe('balance used up');
    expect((await recognize()).status).toBe(200);
  });

  it('status with plainError makes error a plain string', async () => {
    fake.enqueueFaults({ kind: 'status', status: 500, message: 'boom', plainError: true });
    const reply = await recognize();
    expect(reply.status).toBe(500);
    expect(reply.json).toEqual({
      success: false,
      error: 'boom',
      trace_id: expect.stringMatching(UUID),
    });
  });

  it('reset destroys the socket without a response', async () => {
    fake.enqueueFaults({ kind: 'reset' });
    await expect(recognize()).rejects.toThrow();
    expect(fake.callCount(RECOGNITION)).toBe(1);
    expect((await recognize()).status).toBe(200);
  });

  it('hang never answers, and close() still resolves promptly', async () => {
    const f = await startFakeUpstream({ latencyMs: 60_000 });
    f.enqueueFaults({ kind: 'hang' });
    const hung = call(f.url, RECOGNITION, BODY);
    hung.catch(() => {});
    const slow = call(f.url, RECOGNITION, BODY); // pending on a 60 s latency timer
    slow.catch(() => {});
    const outcome = await Promise.race([
      hung.then(() => 'answered'),
      new Promise((resolve) => setTimeout(() => resolve('pending'), 200)),
    ]);
    expect(outcome).toBe('pending');
    expect(f.callCount()).toBe(2);
    const started = Date.now();
    await f.close();
    expect(Date.now() - started).toBeLessThan(500);
    await expect(hung).rejects.toThrow();
    await expect(slow).rejects.toThrow();
  });

  it('garbage answers a non-JSON body', async () => {
    fake.enqueueFaults({ kind: 'garbage' }, { kind: 'garbage', status: 502, body: 'Bad Gateway' });
    const first = await recognize();
    expect(first.status).toBe(200);
    expect(first.headers.get('content-type')).toBe('text/html');
    expect(first.text).toBe('<html>oops</html>');
    const second = await recognize();
    expect(second.status).toBe(502);
    expect(second.text).toBe('Bad Gateway');
  });

  it('malformed answers 200 JSON without solution or task_id', async () => {
    fake.enqueueFaults({ kind: 'malformed' }, { kind: 'malformed' });
    for (const body of [BODY, { ...BODY, async: true }]) {
      const reply = await recognize(body);
      expect(reply.status).toBe(200);
      expect(reply.json).toBeTypeOf('object');
      expect(reply.json).not.toHaveProperty('solution');
      expect(reply.json).not.toHaveProperty('task_id');
    }
  });

  it('latency delays, then answers normally (auth still applies)', async () => {
    fake.enqueueFaults({ kind: 'latency', ms: 40 }, { kind: 'latency', ms: 1 });
    const started = Date.now();
    const reply = await recognize();
    expect(Date.now() - started).toBeGreaterThanOrEqual(35);
    expect(reply.status).toBe(200);
    expectEnvelope(await recognize(BODY, { token: 'nope' }), 401, 'invalid_token');
  });

  it('applies the queue first (FIFO), then the default', async () => {
    fake.setDefaultFault({ kind: 'status', status: 500 });
    fake.enqueueFaults({ kind: 'status', status: 429 }, { kind: 'status', status: 502 });
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await recognize()).status);
    expect(statuses).toEqual([429, 502, 500, 500]);
    fake.setDefaultFault(undefined);
    expect((await recognize()).status).toBe(200);
  });

  it('random faults are deterministic for a seed', async () => {
    const run = async (seed: number) => {
      fake.reset();
      fake.setRandomFaults({
        rate: 0.5,
        seed,
        faults: [
          { kind: 'status', status: 503 },
          { kind: 'status', status: 429 },
        ],
      });
      const statuses: number[] = [];
      for (let i = 0; i < 24; i++) statuses.push((await recognize()).status);
      return statuses;
    };
    const a = await run(42);
    expect(await run(42)).toEqual(a);
    expect(new Set(a)).toEqual(new Set([200, 429, 503]));
    expect(await run(7)).not.toEqual(a);
    fake.setRandomFaults({ rate: 0, seed: 1, faults: [{ kind: 'reset' }] });
    expect((await recognize()).status).toBe(200);
    fake.setRandomFaults(undefined);
    expect(() => fake.setRandomFaults({ rate: 2, seed: 1, faults: [] })).toThrow(RangeError);
  });
});

describe('recording', () => {
  it('records method, path, headers, token, raw and parsed body', async () => {
    const raw = '{ "question" : "q",\n "queries": ["aGk="] }';
    const before = Date.now();
    await recognize(undefined, { raw, headers: { 'x-request-id': 'trace-1' } });
    await recognize(undefined, { raw: 'not json', token: 'other' });
    await call(fake.url, TASKS, { task_id: 'x' });
    expect(fake.callCount()).toBe(3);
    expect(fake.callCount(RECOGNITION)).toBe(2);
    expect(fake.callCount(TASKS)).toBe(1);
    const [first, second] = fake.calls;
    expect(first).toMatchObject({
      method: 'POST',
      path: RECOGNITION,
      token: FAKE_UPSTREAM_DEFAULT_TOKEN,
      rawBody: raw,
      body: { question: 'q', queries: ['aGk='] },
    });
    expect(first?.headers['x-request-id']).toBe('trace-1');
    expect(first?.headers.authorization).toBe(`Bearer ${FAKE_UPSTREAM_DEFAULT_TOKEN}`);
    expect(first?.at).toBeGreaterThanOrEqual(before);
    expect(second).toMatchObject({ token: 'other', rawBody: 'not json', body: undefined });
    fake.reset();
    expect(fake.calls).toEqual([]);
  });
});

describe('control routes', () => {
  it('lists calls with token fingerprints and are not recorded', async () => {
    await recognize(BODY, { headers: { 'x-request-id': 'r1' } });
    const res = await fetch(`${fake.url}/__fake/calls`);
    expect(res.status).toBe(200);
    const listed = (await res.json()) as { count: number; calls: Record<string, unknown>[] };
    const fp = createHash('sha256').update(FAKE_UPSTREAM_DEFAULT_TOKEN).digest('hex').slice(0, 8);
    expect(listed.count).toBe(1);
    expect(listed.calls[0]).toEqual({
      method: 'POST',
      path: RECOGNITION,
      tokenFingerprint: fp,
      requestId: 'r1',
      at: expect.any(Number),
    });
    expect(JSON.stringify(listed)).not.toContain(FAKE_UPSTREAM_DEFAULT_TOKEN);
    expect(fake.callCount()).toBe(1);
  });

  it('sets faults and latency, validates input, and resets', async () => {
    const post = (path: string, body: unknown) => call(fake.url, path, body, { token: null });
    const set = await post('/__fake/faults', {
      enqueue: [{ kind: 'status', status: 429, retryAfter: '1' }],
      default: { kind: 'status', status: 503 },
      latencyMs: 50,
    });
    expect(set.status).toBe(200);
    const first = await recognize();
    expectEnvelope(first, 429, 'too_many_requests');
    expect(first.headers.get('retry-after')).toBe('1');
    expectEnvelope(await recognize(), 503, 'api_error');
    await post('/__fake/faults', { default: null });
    const ok = await recognize();
    expect((ok.json as { elapsed: number }).elapsed).toBe(0.1);
    await post('/__fake/faults', {
      random: { rate: 1, seed: 3, faults: [{ kind: 'garbage' }] },
    });
    expect((await recognize()).text).toBe('<html>oops</html>');

    expectEnvelope(
      await post('/__fake/faults', { enqueue: [{ kind: 'boom' }] }),
      400,
      'bad_request',
    );
    expectEnvelope(await post('/__fake/faults', { latencyMs: -1 }), 400, 'bad_request');
    expectEnvelope(await post('/__fake/nope', {}), 404, 'no_api');

    expect(fake.callCount()).toBe(4);
    expect((await post('/__fake/reset', {})).status).toBe(200);
    expect(fake.callCount()).toBe(0);
    expect((await recognize()).status).toBe(200);
  });
});
