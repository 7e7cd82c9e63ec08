// UpstreamClient against the in-process fake upstream, without Fastify: retries, retry-after
// (seconds and HTTP date) and token cool-downs across the pool, the request's own deadline, the
// token pool, malformed and oversized replies, and the circuit breaker (what opens it, what never
// does, the half-open probe). Time-dependent cases use fake timers over real sockets: the test
// waits for the fake to receive a call (an event), then moves the clock.
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  FAKE_UPSTREAM_DEFAULT_TOKEN,
  type FakeUpstream,
  fingerprint,
  startFakeUpstream,
} from '../dev/fake-upstream.ts';
import { ConfigError, loadConfig } from '../src/config.ts';
import { GatewayError } from '../src/errors.ts';
import {
  type UpstreamCall,
  UpstreamClient,
  type UpstreamClientOptions,
  type UpstreamReply,
} from '../src/upstream/client.ts';
import { UpstreamGate } from '../src/upstream/gate.ts';

const TOKEN_A = 'upstream-token-aaaa-0123456789abcdef';
const TOKEN_B = 'upstream-token-bbbb-fedcba9876543210';
const RECOGNITION = '/captcha/recognition/hcaptcha';
const TASKS = '/captcha/tasks';

interface LogLine {
  level: 'error' | 'warn';
  obj: object;
  msg: string;
}

type TestCall = UpstreamCall & { lines: LogLine[] };

function newCall(overrides: Partial<UpstreamCall> = {}): TestCall {
  const lines: LogLine[] = [];
  return {
    path: RECOGNITION,
    kind: 'solve',
    body: Buffer.from(JSON.stringify({ question: 'click the bus', queries: ['iVBORw0KGgo='] })),
    expect: 'solution',
    traceId: 'trace-upstream-test',
    clientId: 'checkout-service',
    deadline: Date.now() + 5_000,
    report: { retries: 0 },
    log: {
      error: (obj, msg) => lines.push({ level: 'error', obj, msg }),
      warn: (obj, msg) => lines.push({ level: 'warn', obj, msg }),
    },
    lines,
    ...overrides,
  };
}

/** Resolves with the reply or the GatewayError, so a test can assert on either. */
async function outcome(promise: Promise<UpstreamReply>): Promise<UpstreamReply | GatewayError> {
  try {
    return await promise;
  } catch (error) {
    if (error instanceof GatewayError) return error;
    throw error;
  }
}

/**
 * A call in progress: `settled` says whether it has ended so far (for "not yet" under fake
 * timers), `result` waits for its end (reply or GatewayError) on real I/O without moving the clock.
 */
function track(promise: Promise<UpstreamReply>) {
  const result = outcome(promise);
  const state = { settled: false, result };
  void result.then(() => {
    state.settled = true;
  });
  return state;
}

/** Resolves when the client schedules its next retry (cockatiel has set the backoff timer). */
function nextRetry(events: { onRetry?: (reason: string) => void }): Promise<string> {
  return new Promise((resolve) => {
    events.onRetry = resolve;
  });
}

/** Moves the fake clock by nothing: lets replies that arrived over the sockets be handled. */
const flush = () => vi.advanceTimersByTimeAsync(0);

/** Date, timers and performance.now (the client measures time in flight with it). */
const useFakeClock = () =>
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date', 'performance'] });

let fake: FakeUpstream;
const clients: UpstreamClient[] = [];

/** A client with tiny backoff so tests are fast; closed after each test. */
function client(options: Partial<UpstreamClientOptions> = {}): UpstreamClient {
  const c = new UpstreamClient({
    baseUrl: fake.url,
    tokens: [FAKE_UPSTREAM_DEFAULT_TOKEN],
    timeoutMs: 5_000,
    maxConnections: 8,
    backoff: { initialDelayMs: 1, maxDelayMs: 5 },
    ...options,
  });
  clients.push(c);
  return c;
}

beforeAll(async () => {
  fake = await startFakeUpstream({ tokens: [FAKE_UPSTREAM_DEFAULT_TOKEN, TOKEN_A, TOKEN_B] });
});
afterAll(async () => {
  await fake.close();
});
afterEach(async () => {
  vi.useRealTimers();
  fake.reset();
  await Promise.all(clients.splice(0).map((c) => c.close()));
});

describe('retries', () => {
  it('retries a 503 once and answers the 200, with exactly two upstream calls', async () => {
    const reasons: string[] = [];
    const upstream = client({ events: { onRetry: (reason) => reasons.push(reason) } });
    fake.enqueueFaults({ kind: 'status', status: 503 });
    const call = newCall();
    const reply = await upstream.call(call);
    expect(reply.status).toBe(200);
    expect(reply.json).toMatchObject({ solution: { label: expect.any(String) } });
    expect(fake.callCount()).toBe(2);
    expect(call.report).toMatchObject({ retries: 1, upstream_status: 200, billed: true });
    expect(reasons).toEqual(['status_503']);
  });

  it('retries a connection reset and answers the 200', async () => {
    const reasons: string[] = [];
    const upstream = client({ events: { onRetry: (reason) => reasons.push(reason) } });
    fake.enqueueFaults({ kind: 'reset' });
    expect((await upstream.call(newCall())).status).toBe(200);
    expect(fake.callCount()).toBe(2);
    expect(reasons).toEqual(['UND_ERR_SOCKET']);
  });

  it('gives up on a 500 after 1 + maxRetries calls and passes the last 500 through', async () => {
    const attempts: Array<number | 'error'> = [];
    const upstream = client({ maxRetries: 2, events: { onAttempt: (s) => attempts.push(s) } });
    fake.setDefaultFault({ kind: 'status', status: 500, message: 'upstream exploded' });
    const call = newCall();
    const reply = await upstream.call(call);
    expect(fake.callCount()).toBe(3);
    expect(attempts).toEqual([500, 500, 500]);
    expect(reply.status).toBe(500);
    expect(reply.json).toMatchObject({
      success: false,
      error: { code: 'api_error', message: 'upstream exploded' },
    });
    expect(call.report).toMatchObject({ retries: 2, upstream_status: 500 });
    expect(call.report.billed).toBeUndefined();
  });

  it.each([
    [400, 'bad_request'],
    [403, 'forbidden'],
    [404, 'not_found'],
  ])('never retries a %i %s and passes it through with its body', async (status, code) => {
    const upstream = client({ tokens: [TOKEN_A, TOKEN_B] });
    fake.enqueueFaults({ kind: 'status', status, code });
    const reply = await upstream.call(newCall());
    expect(reply.status).toBe(status);
    expect(reply.json).toMatchObject({ success: false, error: { code } });
    expect(fake.callCount()).toBe(1);
    expect(upstream.tokenState()).toEqual({ usable: 2, total: 2 });
  });

  it('answers 502 when the upstream cannot be reached, after 1 + maxRetries attempts', async () => {
    const closed = await startFakeUpstream();
    await closed.close();
    const attempts: Array<number | 'error'> = [];
    const upstream = client({
      baseUrl: closed.url,
      events: { onAttempt: (s) => attempts.push(s) },
    });
    const result = await outcome(upstream.call(newCall()));
    expect(result).toBeInstanceOf(GatewayError);
    expect(result).toMatchObject({ code: 'upstream_error', statusCode: 502 });
    expect(attempts).toEqual(['error', 'error', 'error']);
  });
});

describe('429 and retry-after', () => {
  it('waits out retry-after: 1 on the only token, then answers the 200', async () => {
    useFakeClock();
    const events = {};
    const retried = nextRetry(events);
    const upstream = client({ events });
    fake.enqueueFaults({ kind: 'status', status: 429, retryAfter: '1' });
    const pending = track(upstream.call(newCall()));
    expect(await retried).toBe('status_429');
    await vi.advanceTimersByTimeAsync(999);
    expect(fake.callCount()).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(await pending.result).toMatchObject({ status: 200 });
    expect(fake.callCount()).toBe(2);
    expect((fake.calls[1]?.at ?? 0) - (fake.calls[0]?.at ?? 0)).toBe(1_000);
  });

  it('honours the HTTP-date form of retry-after', async () => {
    useFakeClock();
    // HTTP dates have whole seconds: 3 s from a whole second.
    vi.setSystemTime(Math.ceil(Date.now() / 1_000) * 1_000);
    const events = {};
    const retried = nextRetry(events);
    const upstream = client({ timeoutMs: 10_000, events });
    const until = new Date(Date.now() + 3_000).toUTCString();
    fake.enqueueFaults({ kind: 'status', status: 429, retryAfter: until });
    const pending = track(upstream.call(newCall({ deadline: Date.now() + 10_000 })));
    await retried;
    await vi.advanceTimersByTimeAsync(2_999);
    expect(fake.callCount()).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(await pending.result).toMatchObject({ status: 200 });
    expect(fake.calls[1]?.at).toBe(Date.parse(until));
  });

  it('answers 429 too_many_requests at once when the upstream wait does not fit the deadline', async () => {
    useFakeClock();
    const upstream = client();
    const until = new Date(Date.now() + 90_000).toUTCString();
    fake.setDefaultFault({ kind: 'status', status: 429, retryAfter: until });
    // No time passes: the answer comes as soon as the 429 is in.
    const error = await outcome(upstream.call(newCall({ deadline: Date.now() + 5_000 })));
    expect(error).toBeInstanceOf(GatewayError);
    expect(error).toMatchObject({ code: 'too_many_requests', statusCode: 429 });
    expect((error as GatewayError).message).toMatch(/upstream is saturated/);
    const retryAfter = Number((error as GatewayError).headers['retry-after']);
    expect(retryAfter).toBeGreaterThanOrEqual(89);
    expect(retryAfter).toBeLessThanOrEqual(90);
    expect(fake.callCount()).toBe(1);
  });

  it('sends the retry after a 429 on token A with token B at once, and keeps A cooling down', async () => {
    const upstream = client({ tokens: [TOKEN_A, TOKEN_B] });
    fake.enqueueFaults({ kind: 'status', status: 429, retryAfter: '60' });
    const call = newCall();
    expect((await upstream.call(call)).status).toBe(200);
    expect(fake.calls.map((c) => c.token)).toEqual([TOKEN_A, TOKEN_B]);
    expect(call.report.retries).toBe(1);
    // A is cooling down for its retry-after: the next calls use B only.
    await upstream.call(newCall());
    await upstream.call(newCall());
    expect(fake.calls.map((c) => c.token)).toEqual([TOKEN_A, TOKEN_B, TOKEN_B, TOKEN_B]);
  });

  it('makes later calls honour a cool-down: wait when it fits the deadline, else 429 at once', async () => {
    useFakeClock();
    const upstream = client({ maxRetries: 0 });
    fake.enqueueFaults({ kind: 'status', status: 429, retryAfter: '3' });
    expect(await outcome(upstream.call(newCall()))).toMatchObject({
      code: 'too_many_requests',
      headers: { 'retry-after': '3' },
    });

    // A call whose deadline the cool-down does not fit: 429 at once, nothing sent.
    const refused = await outcome(upstream.call(newCall({ deadline: Date.now() + 2_000 })));
    expect(refused).toBeInstanceOf(GatewayError);
    expect(refused).toMatchObject({
      code: 'too_many_requests',
      statusCode: 429,
      headers: { 'retry-after': '3' },
    });
    expect(fake.callCount()).toBe(1);

    // One that fits waits for the cool-down, then is sent.
    const waits = track(upstream.call(newCall({ deadline: Date.now() + 5_000 })));
    await vi.advanceTimersByTimeAsync(2_999);
    expect(fake.callCount()).toBe(1);
    expect(waits.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(await waits.result).toMatchObject({ status: 200 });
    expect(fake.callCount()).toBe(2);
  });

  it('answers a 429 whose body is not JSON (a proxy page) as 429, not as a malformed reply', async () => {
    const upstream = client({ maxRetries: 0 });
    fake.enqueueFaults({
      kind: 'garbage',
      status: 429,
      body: '<html>429 Too Many Requests</html>',
    });
    const result = await outcome(upstream.call(newCall()));
    expect(result).toBeInstanceOf(GatewayError);
    expect(result).toMatchObject({
      code: 'too_many_requests',
      statusCode: 429,
      headers: { 'retry-after': '1' },
    });
    expect(fake.callCount()).toBe(1);
  });
});

describe('deadline', () => {
  it("keeps the request's own deadline, not a fresh UPSTREAM_TIMEOUT_MS, and aborts the upstream request", async () => {
    useFakeClock();
    const upstream = client({ timeoutMs: 60_000 });
    fake.enqueueFaults({ kind: 'hang' });
    const call = newCall({ deadline: Date.now() + 1_500 });
    const pending = track(upstream.call(call));
    await fake.waitForCalls(1);
    await vi.advanceTimersByTimeAsync(1_499);
    expect(pending.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    const result = await pending.result;
    expect(result).toBeInstanceOf(GatewayError);
    expect(result).toMatchObject({ code: 'timeout', statusCode: 504 });
    expect(fake.callCount()).toBe(1);
    vi.useRealTimers();
    await vi.waitFor(() => expect(fake.calls[0]?.closedEarly).toBe(true));
    expect(call.report.upstream_status).toBeUndefined();
  });

  it('sends nothing when less than minAttemptMs of the deadline is left', async () => {
    const upstream = client({ minAttemptMs: 1_000 });
    const result = await outcome(upstream.call(newCall({ deadline: Date.now() + 500 })));
    expect(result).toBeInstanceOf(GatewayError);
    expect(result).toMatchObject({ code: 'timeout', statusCode: 504 });
    expect(fake.callCount()).toBe(0);
  });

  it('does not retry when the backoff would not leave minAttemptMs before the deadline', async () => {
    const upstream = client({ minAttemptMs: 1_000 });
    fake.setDefaultFault({ kind: 'status', status: 503, retryAfter: '2' });
    const reply = await upstream.call(newCall({ deadline: Date.now() + 2_500 }));
    expect(reply.status).toBe(503);
    expect(fake.callCount()).toBe(1);
  });
});

describe('replies the gateway cannot pass on', () => {
  it('answers 502 for a non-JSON 200, without retrying, and logs a redacted excerpt', async () => {
    const upstream = client();
    const secretish = 'A'.repeat(40);
    fake.enqueueFaults({ kind: 'garbage', body: `<html>oops ${secretish}</html>` });
    const call = newCall();
    const result = await outcome(upstream.call(call));
    expect(result).toMatchObject({ code: 'upstream_error', statusCode: 502 });
    expect(fake.callCount()).toBe(1);
    const line = call.lines.find((l) => l.level === 'error');
    expect(line?.obj).toMatchObject({ upstream_status: 200 });
    expect(JSON.stringify(line)).toContain('<html>oops [redacted]</html>');
    expect(JSON.stringify(call.lines)).not.toContain(secretish);
  });

  it('answers 502 for a 200 without solution, without retrying; the call was billed', async () => {
    const upstream = client();
    fake.enqueueFaults({ kind: 'malformed' });
    const call = newCall();
    const result = await outcome(upstream.call(call));
    expect(result).toMatchObject({ code: 'upstream_error', statusCode: 502 });
    expect(fake.callCount()).toBe(1);
    expect(call.report.billed).toBe(true);
  });

  it('retries a non-JSON 503 (a proxy error page) like any 503', async () => {
    const upstream = client();
    fake.enqueueFaults({ kind: 'garbage', status: 503 });
    expect((await upstream.call(newCall())).status).toBe(200);
    expect(fake.callCount()).toBe(2);
  });

  it('answers 502 for a reply over maxResponseBytes, once, without counting it as an outage', async () => {
    const upstream = client({ pool: { maxResponseBytes: 1_024 }, breakerThreshold: 1 });
    fake.enqueueFaults({ kind: 'garbage', body: 'x'.repeat(4_096) });
    const result = await outcome(upstream.call(newCall()));
    expect(result).toBeInstanceOf(GatewayError);
    expect(result).toMatchObject({ code: 'upstream_error', statusCode: 502 });
    expect((result as GatewayError).message).toMatch(/larger than/);
    expect(fake.callCount()).toBe(1);
    expect(upstream.circuitState()).toBe('closed');
    // The connection it poisoned is gone; the next call works.
    expect((await upstream.call(newCall())).status).toBe(200);
  });
});

describe('token pool', () => {
  it('uses the tokens round-robin', async () => {
    const upstream = client({ tokens: [TOKEN_A, TOKEN_B] });
    for (let i = 0; i < 4; i++) await upstream.call(newCall());
    expect(fake.calls.map((c) => c.token)).toEqual([TOKEN_A, TOKEN_B, TOKEN_A, TOKEN_B]);
  });

  it('takes a rejected token out, retries at once on the next, logs the fingerprint only', async () => {
    const states: Array<[string, string, string | undefined]> = [];
    const upstream = client({
      tokens: [TOKEN_A, TOKEN_B],
      maxRetries: 0,
      events: { onTokenState: (fp, state, code) => states.push([fp, state, code]) },
    });
    fake.revokeToken(TOKEN_A, 'token_expired');
    const call = newCall();
    expect((await upstream.call(call)).status).toBe(200);
    expect(fake.calls.map((c) => c.token)).toEqual([TOKEN_A, TOKEN_B]);
    expect(call.report.retries).toBe(1);
    expect(upstream.tokenState()).toEqual({ usable: 1, total: 2 });
    expect(states).toEqual([[fingerprint(TOKEN_A), 'disabled', 'token_expired']]);
    expect(call.lines).toEqual([
      {
        level: 'error',
        obj: {
          upstream_status: 401,
          upstream_code: 'token_expired',
          token_fingerprint: fingerprint(TOKEN_A),
        },
        msg: expect.stringContaining('out of rotation'),
      },
    ]);
    expect(JSON.stringify(call.lines)).not.toContain(TOKEN_A);
    // Out of rotation: the next call goes straight to B.
    await upstream.call(newCall());
    expect(fake.calls.map((c) => c.token)).toEqual([TOKEN_A, TOKEN_B, TOKEN_B]);
  });

  it('keeps a lone token: every call still tries it, and it is back once the upstream accepts it', async () => {
    const states: string[] = [];
    const upstream = client({ events: { onTokenState: (_fp, state) => states.push(state) } });
    fake.revokeToken(FAKE_UPSTREAM_DEFAULT_TOKEN, 'used_up');
    for (let i = 1; i <= 2; i++) {
      const result = await outcome(upstream.call(newCall()));
      expect(result).toMatchObject({ code: 'used_up', statusCode: 403 });
      expect(fake.callCount()).toBe(i);
    }
    expect(upstream.tokenState()).toEqual({ usable: 0, total: 1 });
    fake.reset();
    expect((await upstream.call(newCall())).status).toBe(200);
    expect(upstream.tokenState()).toEqual({ usable: 1, total: 1 });
    expect(states).toEqual(['enabled']);
  });

  it('brings a rejected token back after the recheck interval when the upstream accepts it', async () => {
    useFakeClock();
    const upstream = client({ tokens: [TOKEN_A, TOKEN_B], tokenRecheckMs: 60_000 });
    fake.enqueueFaults({ kind: 'status', status: 403, code: 'used_up' });
    expect(await outcome(upstream.call(newCall()))).toMatchObject({ status: 200 });
    expect(upstream.tokenState()).toEqual({ usable: 1, total: 2 });
    await upstream.call(newCall());
    await vi.advanceTimersByTimeAsync(60_000);
    for (let i = 0; i < 2; i++) {
      expect(await upstream.call(newCall({ deadline: Date.now() + 5_000 }))).toMatchObject({
        status: 200,
      });
    }
    expect(upstream.tokenState()).toEqual({ usable: 2, total: 2 });
    expect(fake.calls.map((c) => c.token)).toEqual([TOKEN_A, TOKEN_B, TOKEN_B, TOKEN_A, TOKEN_B]);
  });

  it("lowers the gate's rate at once when a token leaves rotation (rate per usable token)", async () => {
    useFakeClock();
    const gate = new UpstreamGate({
      ratePerSecond: 2,
      maxConcurrency: 10,
      maxQueued: 10,
      minAttemptMs: 100,
    });
    const disabled = new Promise<void>((resolve) => {
      client({
        tokens: [TOKEN_A, TOKEN_B],
        gate,
        ratePerToken: 1,
        events: { onTokenState: () => resolve() },
      });
    });
    const upstream = clients.at(-1) as UpstreamClient;
    fake.revokeToken(TOKEN_A, 'used_up');
    const first = track(upstream.call(newCall({ deadline: Date.now() + 5_000 })));
    await disabled;
    // One token left: 1 call a second, and A's rejected call is in the window.
    await vi.advanceTimersByTimeAsync(999);
    expect(fake.callCount()).toBe(1);
    expect(gate.load.queued).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(await first.result).toMatchObject({ status: 200 });
    const second = track(upstream.call(newCall({ deadline: Date.now() + 5_000 })));
    await vi.advanceTimersByTimeAsync(999);
    expect(fake.callCount()).toBe(2);
    await vi.advanceTimersByTimeAsync(1);
    expect(await second.result).toMatchObject({ status: 200 });
    expect(fake.calls.map((c) => [c.token, c.at - (fake.calls[0]?.at ?? 0)])).toEqual([
      [TOKEN_A, 0],
      [TOKEN_B, 1_000],
      [TOKEN_B, 2_000],
    ]);
  });

  it('does not take a 5xx on a rechecked token as proof that it works', async () => {
    useFakeClock();
    const states: string[] = [];
    const upstream = client({
      tokens: [TOKEN_A, TOKEN_B],
      tokenRecheckMs: 60_000,
      maxRetries: 0,
      events: { onTokenState: (_fp, state) => states.push(state) },
    });
    fake.revokeToken(TOKEN_A, 'used_up');
    expect(await outcome(upstream.call(newCall()))).toMatchObject({ status: 200 });
    await vi.advanceTimersByTimeAsync(60_000);
    // The recheck of A meets an upstream outage: A stays out, and is rechecked again later.
    fake.enqueueFaults({ kind: 'status', status: 503 });
    const outage = await outcome(upstream.call(newCall({ deadline: Date.now() + 5_000 })));
    expect(outage).toMatchObject({ status: 503 });
    expect(fake.calls.map((c) => c.token)).toEqual([TOKEN_A, TOKEN_B, TOKEN_A]);
    expect(upstream.tokenState()).toEqual({ usable: 1, total: 2 });
    expect(states).toEqual(['disabled']);
  });

  it('refuses a token listed twice at start-up (it would double the gate rate on one token)', () => {
    expect(() => loadConfig({ ACEDATA_API_TOKEN: 'token-t1,token-t1' })).toThrow(ConfigError);
    try {
      loadConfig({ ACEDATA_API_TOKEN: 'tok.en-1, tok.en-1' });
    } catch (error) {
      expect((error as ConfigError).problems).toEqual([
        'ACEDATA_API_TOKEN: lists the same token twice',
      ]);
      expect((error as Error).message).not.toContain('tok.en-1');
    }
    expect.assertions(3);
  });
});

describe('circuit breaker', () => {
  /** A client whose breaker opens after `threshold` faults and stays open `cooldownMs`. */
  function breakerClient(threshold: number, options: Partial<UpstreamClientOptions> = {}) {
    const states: string[] = [];
    const upstream = client({
      maxRetries: 0,
      breakerThreshold: threshold,
      breakerCooldownMs: 30_000,
      events: { onCircuitState: (s) => states.push(s) },
      ...options,
    });
    return { upstream, states };
  }

  /** The 503 of an open breaker whose 30 s cool-down began after `openedAfter` (real clock). */
  function expectOpenSince(result: unknown, openedAfter: number): void {
    expect(result).toMatchObject({ code: 'upstream_unavailable', statusCode: 503 });
    const seconds = Number((result as GatewayError).headers['retry-after']);
    expect(seconds).toBeLessThanOrEqual(30);
    expect(seconds).toBeGreaterThanOrEqual(
      Math.ceil((30_000 - (Date.now() - openedAfter)) / 1_000),
    );
  }

  const isOpenAnswer = (result: unknown, retryAfter: string) =>
    expect(result).toMatchObject({
      code: 'upstream_unavailable',
      statusCode: 503,
      headers: { 'retry-after': retryAfter },
    });

  it('opens on connection failures and answers 503 with the cool-down left, sending nothing', async () => {
    const closed = await startFakeUpstream();
    await closed.close();
    const attempts: Array<number | 'error'> = [];
    const { upstream, states } = breakerClient(2, {
      baseUrl: closed.url,
      events: { onAttempt: (s) => attempts.push(s), onCircuitState: (s) => states.push(s) },
    });
    const started = Date.now();
    for (let i = 0; i < 2; i++) {
      expect(await outcome(upstream.call(newCall()))).toMatchObject({ code: 'upstream_error' });
    }
    expect(upstream.circuitState()).toBe('open');
    expectOpenSince(await outcome(upstream.call(newCall())), started);
    expect(attempts).toEqual(['error', 'error']);
  });

  it.each([500, 502, 503, 504])(
    'opens on upstream %i answers, which pass through',
    async (status) => {
      const { upstream, states } = breakerClient(2);
      fake.setDefaultFault({ kind: 'status', status });
      const started = Date.now();
      for (let i = 0; i < 2; i++) expect((await upstream.call(newCall())).status).toBe(status);
      expect(states).toEqual(['open']);
      expectOpenSince(await outcome(upstream.call(newCall())), started);
      expect(fake.callCount()).toBe(2);
    },
  );

  it('opens when the upstream holds the call itself for at least half of UPSTREAM_TIMEOUT_MS', async () => {
    useFakeClock();
    const { upstream } = breakerClient(1, { timeoutMs: 2_000 });
    fake.enqueueFaults({ kind: 'hang' });
    const pending = track(upstream.call(newCall({ deadline: Date.now() + 2_000 })));
    await fake.waitForCalls(1);
    await vi.advanceTimersByTimeAsync(2_000);
    expect(await pending.result).toMatchObject({ code: 'timeout', statusCode: 504 });
    expect(upstream.circuitState()).toBe('open');
    expect(await outcome(upstream.call(newCall()))).toMatchObject({ statusCode: 503 });
    expect(fake.callCount()).toBe(1);
  });

  it("never opens on the gateway's own deadline: a call sent with little time left that runs out", async () => {
    useFakeClock();
    const { upstream, states } = breakerClient(1, { timeoutMs: 2_000 });
    fake.enqueueFaults({ kind: 'hang' });
    // A request that spent most of its deadline elsewhere (queues, a merge) reaches the upstream
    // with 900 ms left: less than half of UPSTREAM_TIMEOUT_MS in flight says nothing about it.
    // (minAttemptMs is the default, min(1 s, timeout / 10) = 200 ms.)
    const pending = track(upstream.call(newCall({ deadline: Date.now() + 900 })));
    await fake.waitForCalls(1);
    await vi.advanceTimersByTimeAsync(899);
    expect(pending.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(await pending.result).toMatchObject({ code: 'timeout', statusCode: 504 });
    expect(upstream.circuitState()).toBe('closed');
    expect(states).toEqual([]);
  });

  it("never opens on the gateway's own queue: calls refused by the gate do not count", async () => {
    useFakeClock();
    const gate = new UpstreamGate({
      ratePerSecond: 1_000,
      maxConcurrency: 1,
      maxQueued: 1,
      minAttemptMs: 100,
    });
    const { upstream, states } = breakerClient(1, { gate, minAttemptMs: 100 });
    fake.enqueueFaults({ kind: 'latency', ms: 3_000 });
    const slow = track(upstream.call(newCall({ deadline: Date.now() + 5_000 })));
    await fake.waitForCalls(1);
    // Queued behind the slow call until its deadline: 504 from the gate.
    const queued = track(upstream.call(newCall({ deadline: Date.now() + 1_000 })));
    await flush();
    // The queue (of one) is full: 503 at once.
    const full = await outcome(upstream.call(newCall({ deadline: Date.now() + 1_000 })));
    expect(full).toMatchObject({ code: 'upstream_unavailable', statusCode: 503 });
    await vi.advanceTimersByTimeAsync(899);
    expect(queued.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(await queued.result).toMatchObject({ code: 'timeout', statusCode: 504 });
    await vi.advanceTimersByTimeAsync(2_100);
    expect(await slow.result).toMatchObject({ status: 200 });
    expect(fake.callCount()).toBe(1);
    expect(states).toEqual([]);
  });

  it('never opens on 4xx answers, rejected credentials or 429', async () => {
    const { upstream, states } = breakerClient(1, { tokens: [TOKEN_A] });
    fake.enqueueFaults(
      { kind: 'status', status: 400 },
      { kind: 'status', status: 403, code: 'forbidden' },
      { kind: 'status', status: 404 },
      { kind: 'status', status: 408 },
      { kind: 'status', status: 401, code: 'invalid_token' },
      { kind: 'status', status: 403, code: 'used_up' },
      { kind: 'status', status: 429, retryAfter: '0' },
    );
    const codes: Array<string | number> = [];
    for (let i = 0; i < 7; i++) {
      const result = await outcome(upstream.call(newCall()));
      codes.push(result instanceof GatewayError ? result.code : result.status);
    }
    expect(codes).toEqual([400, 403, 404, 408, 'upstream_error', 'used_up', 'too_many_requests']);
    expect(fake.callCount()).toBe(7);
    expect(upstream.circuitState()).toBe('closed');
    expect(states).toEqual([]);
  });

  it('lets one probe through after the cool-down: others get 503 meanwhile; success closes it', async () => {
    useFakeClock();
    const { upstream, states } = breakerClient(1, { breakerCooldownMs: 10_000 });
    fake.enqueueFaults({ kind: 'status', status: 503 });
    expect(await outcome(upstream.call(newCall()))).toMatchObject({ status: 503 });
    expect(upstream.circuitState()).toBe('open');
    isOpenAnswer(await outcome(upstream.call(newCall())), '10');
    await vi.advanceTimersByTimeAsync(4_000);
    isOpenAnswer(await outcome(upstream.call(newCall())), '6');
    await vi.advanceTimersByTimeAsync(6_000);
    expect(upstream.circuitState()).toBe('half_open');

    fake.enqueueFaults({ kind: 'latency', ms: 500 });
    const probe = track(upstream.call(newCall({ deadline: Date.now() + 5_000 })));
    await fake.waitForCalls(2);
    isOpenAnswer(await outcome(upstream.call(newCall())), '1');
    expect(fake.callCount()).toBe(2);
    await vi.advanceTimersByTimeAsync(500);
    expect(await probe.result).toMatchObject({ status: 200 });
    expect(upstream.circuitState()).toBe('closed');
    expect(states).toEqual(['open', 'half_open', 'closed']);
  });

  it('keeps the probe for a call that can reach the upstream: one without time left is answered 504', async () => {
    useFakeClock();
    const { upstream, states } = breakerClient(1, { breakerCooldownMs: 10_000, minAttemptMs: 200 });
    fake.enqueueFaults({ kind: 'status', status: 503 });
    expect(await outcome(upstream.call(newCall()))).toMatchObject({ status: 503 });
    await vi.advanceTimersByTimeAsync(10_000);
    const late = await outcome(upstream.call(newCall({ deadline: Date.now() + 100 })));
    expect(late).toMatchObject({ code: 'timeout', statusCode: 504 });
    expect(upstream.circuitState()).toBe('half_open');
    expect(fake.callCount()).toBe(1);
    fake.enqueueFaults({ kind: 'status', status: 503 });
    expect(await outcome(upstream.call(newCall({ deadline: Date.now() + 5_000 })))).toMatchObject({
      status: 503,
    });
    expect(states).toEqual(['open', 'half_open', 'open']);
  });

  it('re-opens for another cool-down when the probe fails', async () => {
    useFakeClock();
    const { upstream, states } = breakerClient(1, { breakerCooldownMs: 10_000 });
    fake.setDefaultFault({ kind: 'status', status: 502 });
    expect(await outcome(upstream.call(newCall()))).toMatchObject({ status: 502 });
    await vi.advanceTimersByTimeAsync(10_000);
    const probe = await outcome(upstream.call(newCall({ deadline: Date.now() + 5_000 })));
    expect(probe).toMatchObject({ status: 502 });
    expect(states).toEqual(['open', 'half_open', 'open']);
    isOpenAnswer(await outcome(upstream.call(newCall())), '10');
    expect(fake.callCount()).toBe(2);
  });

  it("neither retries nor counts a task poll's 504 (the task's terminal timeout)", async () => {
    let clock = Date.now();
    const tasks = await startFakeUpstream({ taskDeadlineMs: 1_000, now: () => clock });
    try {
      const { upstream, states } = breakerClient(1, { baseUrl: tasks.url, maxRetries: 2 });
      tasks.enqueueFaults({ kind: 'task_timeout' });
      const created = await upstream.call(
        newCall({
          body: Buffer.from(JSON.stringify({ queries: ['aGk='], async: true })),
          expect: 'task_id',
        }),
      );
      expect(created.status).toBe(201);
      const taskId = (created.json as { task_id: string }).task_id;
      clock += 1_000;
      const poll = newCall({
        path: TASKS,
        kind: 'poll',
        body: Buffer.from(JSON.stringify({ task_id: taskId })),
        expect: undefined,
      });
      const reply = await upstream.call(poll);
      expect(reply.status).toBe(504);
      expect(reply.json).toMatchObject({ code: 'timeout', status: 'failed', task_id: taskId });
      expect(tasks.callCount(TASKS)).toBe(1);
      expect(poll.report).toMatchObject({ retries: 0, upstream_status: 504 });
      expect(poll.report.billed).toBeUndefined();
      expect(upstream.circuitState()).toBe('closed');
      expect(states).toEqual([]);
    } finally {
      await tasks.close();
    }
  });
});
