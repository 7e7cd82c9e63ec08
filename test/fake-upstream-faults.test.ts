// The fake's injected faults (one zod union, checked the same way in process and over HTTP) and its
// control routes under /__fake/. Nothing waits on the wall clock: ordering is shown with events
// (waitForCalls) and with later calls that complete while an earlier one is held.

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  callFake,
  FAKE_UPSTREAM_DEFAULT_TOKEN,
  type FakeCallOptions,
  type FakeReply,
  type FakeUpstream,
  type Fault,
  faultSchema,
  fingerprint,
  RECOGNITION_PATH,
  startFakeUpstream,
  TASKS_PATH,
  TOKEN_PATH,
} from '../dev/fake-upstream.ts';
import { tokenFingerprint } from '../src/upstream/token-pool.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const BODY = { question: 'Please click each image containing a bicycle', queries: ['aGk='] };
const SITE = { website_key: 'k', website_url: 'https://x.test' };

let fake: FakeUpstream;
const recognize = (body: unknown = BODY, opts?: FakeCallOptions) =>
  callFake(fake.url, RECOGNITION_PATH, body, opts);
const control = (path: string, body?: unknown) =>
  callFake(fake.url, `/__fake/${path}`, body, {
    token: null,
    method: body === undefined ? 'GET' : 'POST',
  });

function expectError(reply: FakeReply, status: number, code: string, message?: string): void {
  expect(reply.status).toBe(status);
  expect(reply.json).toEqual({
    success: false,
    error: { code, message: message ?? expect.any(String) },
    trace_id: expect.stringMatching(UUID),
  });
}

/** Settles to 'answered' or 'failed'; `state()` says whether it has yet. */
function track(reply: Promise<FakeReply>) {
  let state: 'pending' | 'answered' | 'failed' = 'pending';
  const settled = reply.then(
    () => {
      state = 'answered';
    },
    () => {
      state = 'failed';
    },
  );
  return { state: () => state, settled };
}

beforeAll(async () => {
  fake = await startFakeUpstream();
});
afterAll(async () => {
  await fake.close();
});
afterEach(() => {
  fake.reset();
});

describe('status faults', () => {
  it('send the envelope with the documented message of their code, before auth', async () => {
    fake.enqueueFaults(
      { kind: 'status', status: 500 },
      { kind: 'status', status: 429 },
      { kind: 'status', status: 403 },
      { kind: 'status', status: 403, code: 'used_up' },
      { kind: 'status', status: 401, code: 'token_mismatched' },
      { kind: 'status', status: 400, code: 'api_not_implemented' },
      { kind: 'status', status: 502 },
    );
    const noToken = { token: 'fault-before-auth' };
    expectError(await recognize(BODY, noToken), 500, 'api_error', 'Internal server error.');
    expectError(await recognize(), 429, 'too_many_requests', 'You have exceeded the rate limit.');
    const moderated = await recognize();
    expectError(moderated, 403, 'forbidden');
    expect((moderated.json as { error: { message: string } }).error.message).toMatch(/moderation/);
    expectError(
      await recognize(),
      403,
      'used_up',
      'Your balance is not sufficient for current request, please buy more in Ace Data Cloud.',
    );
    expectError(await recognize(), 401, 'token_mismatched', 'token and api does not match.');
    expectError(await recognize(), 400, 'api_not_implemented', 'The API is not implemented.');
    expectError(await recognize(), 502, 'api_error');
    expect((await recognize()).status).toBe(200);
  });

  it('carry a retry-after only when the fault sets one, and a given message', async () => {
    fake.enqueueFaults(
      { kind: 'status', status: 503, retryAfter: '7' },
      { kind: 'status', status: 429, message: 'slow down' },
    );
    const first = await recognize();
    expectError(first, 503, 'api_error');
    expect(first.headers.get('retry-after')).toBe('7');
    const second = await recognize();
    expectError(second, 429, 'too_many_requests', 'slow down');
    expect(second.headers.get('retry-after')).toBeNull();
  });

  it('plainError makes error a plain string', async () => {
    fake.enqueueFaults({ kind: 'status', status: 500, message: 'boom', plainError: true });
    const reply = await recognize();
    expect(reply.status).toBe(500);
    expect(reply.json).toEqual({
      success: false,
      error: 'boom',
      trace_id: expect.stringMatching(UUID),
    });
  });
});

describe('connection faults', () => {
  it('reset destroys the connection without an answer and marks the call closedEarly', async () => {
    fake.enqueueFaults({ kind: 'reset' });
    await expect(recognize()).rejects.toThrow();
    expect(fake.callCount(RECOGNITION_PATH)).toBe(1);
    expect(fake.calls[0]?.closedEarly).toBe(true);
    expect((await recognize()).status).toBe(200);
  });

  it('hang holds the call while later ones are answered; close() ends it', async () => {
    const f = await startFakeUpstream();
    f.enqueueFaults({ kind: 'hang' }, { kind: 'latency', ms: 3_600_000 });
    const hung = track(callFake(f.url, RECOGNITION_PATH, BODY));
    await f.waitForCalls(1);
    const slow = track(callFake(f.url, RECOGNITION_PATH, BODY)); // held on a one-hour timer
    await f.waitForCalls(2);
    expect((await callFake(f.url, TASKS_PATH, { task_id: 'x' })).status).toBe(404);
    expect([hung.state(), slow.state()]).toEqual(['pending', 'pending']);
    await f.close(); // clears the timer and drops the connections
    await Promise.all([hung.settled, slow.settled]);
    expect([hung.state(), slow.state()]).toEqual(['failed', 'failed']);
  });

  it('latency delays the call, which then goes on normally (auth still applies)', async () => {
    const f = await startFakeUpstream();
    try {
      f.enqueueFaults({ kind: 'latency', ms: 3_600_000, path: RECOGNITION_PATH });
      const held = track(callFake(f.url, RECOGNITION_PATH, BODY));
      await f.waitForCalls(1);
      expect((await callFake(f.url, TOKEN_PATH, SITE)).status).toBe(200);
      expect(held.state()).toBe('pending');
      f.enqueueFaults({ kind: 'latency', ms: 0 });
      expectError(
        await callFake(f.url, RECOGNITION_PATH, BODY, { token: 'nope' }),
        401,
        'invalid_token',
      );
    } finally {
      await f.close();
    }
  });

  it('the configured latency holds sync calls, not async creation or task reads', async () => {
    const f = await startFakeUpstream({ latencyMs: 3_600_000 });
    try {
      const held = track(callFake(f.url, TOKEN_PATH, SITE));
      await f.waitForCalls(1);
      // Task reads and async creation are not delayed.
      const created = await callFake(f.url, RECOGNITION_PATH, { ...BODY, async: true });
      expect(created.status).toBe(201);
      expect(held.state()).toBe('pending');
      f.setLatency(0);
      expect((await callFake(f.url, RECOGNITION_PATH, BODY)).status).toBe(200);
    } finally {
      await f.close();
    }
  });
});

describe('body faults', () => {
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

  it('malformed answers 200 JSON without solution, token or task_id', async () => {
    fake.enqueueFaults({ kind: 'malformed' }, { kind: 'malformed' }, { kind: 'malformed' });
    const replies = [
      await recognize(),
      await recognize({ ...BODY, async: true }),
      await callFake(fake.url, TOKEN_PATH, SITE),
    ];
    for (const reply of replies) {
      expect(reply.status).toBe(200);
      expect(reply.json).toBeTypeOf('object');
      for (const key of ['solution', 'token', 'task_id'])
        expect(reply.json).not.toHaveProperty(key);
    }
  });
});

describe('choosing the fault of a call', () => {
  it('queue first (FIFO), then the default', async () => {
    fake.setDefaultFault({ kind: 'status', status: 500 });
    fake.enqueueFaults({ kind: 'status', status: 429 }, { kind: 'status', status: 502 });
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await recognize()).status);
    expect(statuses).toEqual([429, 502, 500, 500]);
    fake.setDefaultFault(undefined);
    expect((await recognize()).status).toBe(200);
  });

  it('a fault with a path hits only that endpoint; others pass it in the queue', async () => {
    fake.enqueueFaults(
      { kind: 'status', status: 500, path: TOKEN_PATH },
      { kind: 'status', status: 429 },
    );
    expect((await callFake(fake.url, TASKS_PATH, { task_id: 'x' })).status).toBe(429);
    expect((await recognize()).status).toBe(200);
    expect((await callFake(fake.url, TOKEN_PATH, SITE)).status).toBe(500);
    fake.setDefaultFault({ kind: 'status', status: 503, path: RECOGNITION_PATH });
    expect((await callFake(fake.url, TOKEN_PATH, SITE)).status).toBe(200);
    expect((await recognize()).status).toBe(503);
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
    fake.setRandomFaults({ rate: 0, seed: 1, faults: [] });
    expect((await recognize()).status).toBe(200);
    fake.setRandomFaults(undefined);
  });
});

describe('fault definitions: one zod union for the API and the control route', () => {
  const invalid: [unknown, RegExp][] = [
    [{ kind: 'boom' }, /kind/],
    [{ kind: 'latency' }, /ms/],
    [{ kind: 'latency', ms: -1 }, /ms/],
    [{ kind: 'status', status: 99 }, /status/],
    [{ kind: 'status', status: 503.5 }, /status/],
    [{ kind: 'status', status: 503, retryAfter: 7 }, /retryAfter/],
    [{ kind: 'status', status: 503, plainError: 'yes' }, /plainError/],
    [{ kind: 'garbage', status: 700 }, /status/],
    [{ kind: 'reset', path: '/captcha/other' }, /path/],
    [{ kind: 'hang', extra: 1 }, /extra/],
  ];

  it('the schema accepts every kind and refuses bad definitions', () => {
    const valid: Fault[] = [
      { kind: 'latency', ms: 5 },
      {
        kind: 'status',
        status: 503,
        code: 'x',
        message: 'm',
        retryAfter: '1',
        plainError: true,
        afterMs: 1,
      },
      { kind: 'reset' },
      { kind: 'hang', path: TASKS_PATH },
      { kind: 'garbage', status: 502, body: 'b' },
      { kind: 'malformed' },
      { kind: 'task_timeout', path: TOKEN_PATH },
    ];
    for (const fault of valid) expect(faultSchema.parse(fault)).toEqual(fault);
    for (const [fault] of invalid) expect(faultSchema.safeParse(fault).success).toBe(false);
  });

  it('the API throws a RangeError naming the problem and keeps nothing', () => {
    for (const [fault, problem] of invalid) {
      expect(() => fake.enqueueFaults(fault as Fault)).toThrow(problem);
      expect(() => fake.setDefaultFault(fault as Fault)).toThrow(RangeError);
    }
    expect(() =>
      fake.enqueueFaults({ kind: 'status', status: 500 }, { kind: 'boom' } as unknown as Fault),
    ).toThrow(RangeError);
    expect(() => fake.setRandomFaults({ rate: 2, seed: 1, faults: [{ kind: 'reset' }] })).toThrow(
      /rate/,
    );
    expect(() => fake.setRandomFaults({ rate: 0.5, seed: 1, faults: [] })).toThrow(/faults/);
  });

  it('the control route answers 400 naming the problem and applies nothing', async () => {
    for (const [fault, problem] of invalid) {
      const reply = await control('faults', { enqueue: [{ kind: 'status', status: 500 }, fault] });
      expectError(reply, 400, 'bad_request');
      expect((reply.json as { error: { message: string } }).error.message).toMatch(problem);
    }
    for (const body of [
      { latencyMs: -1 },
      { default: { kind: 'boom' } },
      { random: { rate: 2, seed: 1, faults: [] } },
      { enqueue: { kind: 'reset' } },
      { unknown: true },
    ]) {
      expectError(await control('faults', body), 400, 'bad_request');
    }
    const notJson = await callFake(fake.url, '/__fake/faults', undefined, {
      raw: '{',
      token: null,
    });
    expectError(notJson, 400, 'bad_request');
    expect((await recognize()).status).toBe(200); // nothing was queued
  });
});

describe('control routes', () => {
  it('GET /__fake/calls lists calls with token fingerprints, and is not recorded', async () => {
    await recognize(BODY, { headers: { 'x-request-id': 'r1' } });
    await recognize(BODY, { token: null });
    const listed = await control('calls');
    expect(listed.status).toBe(200);
    expect(listed.json).toEqual({
      count: 2,
      calls: [
        {
          method: 'POST',
          path: RECOGNITION_PATH,
          tokenFingerprint: tokenFingerprint(FAKE_UPSTREAM_DEFAULT_TOKEN),
          requestId: 'r1',
          at: expect.any(Number),
        },
        {
          method: 'POST',
          path: RECOGNITION_PATH,
          tokenFingerprint: null,
          requestId: null,
          at: expect.any(Number),
        },
      ],
    });
    expect(fingerprint(FAKE_UPSTREAM_DEFAULT_TOKEN)).toBe(
      tokenFingerprint(FAKE_UPSTREAM_DEFAULT_TOKEN),
    );
    expect(listed.text).not.toContain(FAKE_UPSTREAM_DEFAULT_TOKEN);
    expect(fake.callCount()).toBe(2);
  });

  it('POST /__fake/faults sets queue, default, random and latency; /__fake/reset clears', async () => {
    const set = await control('faults', {
      enqueue: [{ kind: 'status', status: 429, retryAfter: '1', path: RECOGNITION_PATH }],
      default: { kind: 'status', status: 503 },
    });
    expect(set.status).toBe(200);
    expect(set.json).toEqual({ ok: true, queued: 1 });
    const first = await recognize();
    expectError(first, 429, 'too_many_requests');
    expect(first.headers.get('retry-after')).toBe('1');
    expectError(await recognize(), 503, 'api_error');
    expect((await control('faults', { default: null })).status).toBe(200);
    expect((await recognize()).status).toBe(200);
    await control('faults', { random: { rate: 1, seed: 3, faults: [{ kind: 'garbage' }] } });
    expect((await recognize()).text).toBe('<html>oops</html>');
    await control('faults', { random: null });
    expect((await recognize()).status).toBe(200);

    await control('faults', { latencyMs: 3_600_000 });
    const held = track(recognize());
    await fake.waitForCalls(6);
    expect(held.state()).toBe('pending');
    expect((await control('reset', {})).status).toBe(200);
    expect(fake.callCount()).toBe(0);
    expect((await recognize()).status).toBe(200); // latency restored to the start value
  });

  it('answers 404 for an unknown control route', async () => {
    expectError(await control('nope', {}), 404, 'no_api');
    expectError(await control('faults'), 404, 'no_api'); // GET
  });
});
