// UpstreamClient against the in-process fake upstream: deadline, retries, circuit breaker, token
// pool and malformed replies. No Fastify: the client is called directly with a capturing logger.
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  FAKE_UPSTREAM_DEFAULT_TOKEN,
  type FakeUpstream,
  fingerprint,
  startFakeUpstream,
} from '../dev/fake-upstream.ts';
import { GatewayError } from '../src/errors.ts';
import {
  type UpstreamCall,
  UpstreamClient,
  type UpstreamClientOptions,
  type UpstreamReply,
} from '../src/upstream/client.ts';

const TOKEN_A = 'upstream-token-aaaa-0123456789abcdef';
const TOKEN_B = 'upstream-token-bbbb-fedcba9876543210';
const BODY = JSON.stringify({ question: 'click the bus', queries: ['iVBORw0KGgo='] });

interface LogLine {
  level: 'error' | 'warn';
  obj: object;
  msg: string;
}

function newCall(overrides: Partial<UpstreamCall> = {}): UpstreamCall & { lines: LogLine[] } {
  const lines: LogLine[] = [];
  return {
    path: '/captcha/recognition/hcaptcha',
    body: BODY,
    expect: 'solution',
    traceId: 'trace-upstream-test',
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

let fake: FakeUpstream;
const clients: UpstreamClient[] = [];

/** A client with tiny backoff so tests are fast; closed after each test. */
function client(options: Partial<UpstreamClientOptions> = {}): UpstreamClient {
  const c = new UpstreamClient({
    baseUrl: fake.url,
    tokens: [FAKE_UPSTREAM_DEFAULT_TOKEN],
    timeoutMs: 2_000,
    backoff: { initialDelayMs: 5, maxDelayMs: 20 },
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
    expect(call.report).toMatchObject({ retries: 1, upstream_status: 200 });
    expect(reasons).toEqual(['status_503']);
  });

  it('honours retry-after: 1 on a 429 and answers the 200 no sooner than 1 s later', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    let retried!: () => void;
    const retryScheduled = new Promise<void>((resolve) => {
      retried = resolve;
    });
    const upstream = client({ timeoutMs: 5_000, events: { onRetry: () => retried() } });
    fake.enqueueFaults({ kind: 'status', status: 429, retryAfter: '1' });
    const started = Date.now();
    const pending = upstream.call(newCall());
    await retryScheduled; // the 429 arrived over the real socket and the backoff timer is set
    expect(fake.callCount()).toBe(1);
    await vi.advanceTimersByTimeAsync(999);
    expect(fake.callCount()).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    const reply = await pending;
    expect(reply.status).toBe(200);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_000);
    expect(fake.callCount()).toBe(2);
    expect((fake.calls[1]?.at ?? 0) - (fake.calls[0]?.at ?? 0)).toBeGreaterThanOrEqual(1_000);
  });

  it('retries a connection reset and answers the 200', async () => {
    const reasons: string[] = [];
    const upstream = client({ events: { onRetry: (reason) => reasons.push(reason) } });
    fake.enqueueFaults({ kind: 'reset' });
    const reply = await upstream.call(newCall());
    expect(reply.status).toBe(200);
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
    expect(JSON.parse(reply.body.toString())).toEqual(reply.json);
    expect(call.report.retries).toBe(2);
  });

  it('does not retry when retry-after does not fit in the deadline, and answers at once', async () => {
    const upstream = client({ timeoutMs: 2_000 });
    fake.setDefaultFault({ kind: 'status', status: 429, retryAfter: '30' });
    const started = performance.now();
    const result = await outcome(upstream.call(newCall()));
    expect(performance.now() - started).toBeLessThan(500);
    expect(fake.callCount()).toBe(1);
    expect(result).toBeInstanceOf(GatewayError);
    expect(result).toMatchObject({
      code: 'upstream_unavailable',
      statusCode: 503,
      headers: { 'retry-after': '30' },
    });
  });

  it.each([400, 404])('never retries a %i and passes it through', async (status) => {
    const upstream = client();
    fake.enqueueFaults({ kind: 'status', status, message: 'not yours' });
    const reply = await upstream.call(newCall());
    expect(reply.status).toBe(status);
    expect(reply.json).toMatchObject({ error: { message: 'not yours' } });
    expect(fake.callCount()).toBe(1);
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
    expect(result).toMatchObject({
      code: 'upstream_error',
      message: 'upstream could not be reached',
    });
    expect(attempts).toEqual(['error', 'error', 'error']);
  });
});

describe('deadline', () => {
  it('answers 504 at the deadline when the upstream hangs, and aborts the upstream request', async () => {
    const upstream = client({ timeoutMs: 300 });
    fake.enqueueFaults({ kind: 'hang' });
    const call = newCall();
    const started = performance.now();
    const result = await outcome(upstream.call(call));
    const elapsed = performance.now() - started;
    expect(result).toMatchObject({ code: 'timeout', statusCode: 504 });
    expect(elapsed).toBeGreaterThanOrEqual(290);
    expect(elapsed).toBeLessThan(1_000);
    expect(fake.callCount()).toBe(1);
    await vi.waitFor(() => expect(fake.calls[0]?.closedEarly).toBe(true));
    expect(call.report.upstream_status).toBeUndefined();
  });
});

describe('circuit breaker', () => {
  it('opens after N consecutive failures, fails fast without calling, recovers via one probe', async () => {
    const states: string[] = [];
    const upstream = client({
      maxRetries: 0,
      breakerThreshold: 3,
      breakerCooldownMs: 150,
      events: { onCircuitState: (s) => states.push(s) },
    });
    fake.setDefaultFault({ kind: 'status', status: 503 });
    for (let i = 0; i < 3; i++) {
      expect((await upstream.call(newCall())).status).toBe(503);
    }
    expect(upstream.circuitState()).toBe('open');
    expect(fake.callCount()).toBe(3);

    const fast = await outcome(upstream.call(newCall()));
    expect(fast).toMatchObject({
      code: 'upstream_unavailable',
      statusCode: 503,
      headers: { 'retry-after': '1' },
    });
    expect(fake.callCount()).toBe(3);

    await new Promise((resolve) => setTimeout(resolve, 160));
    expect(upstream.circuitState()).toBe('half_open');
    fake.setDefaultFault(undefined);
    // While the probe is in flight, other calls are answered 503 at once rather than queued.
    fake.enqueueFaults({ kind: 'latency', ms: 100 });
    const probe = upstream.call(newCall());
    const during = await outcome(upstream.call(newCall()));
    expect(during).toMatchObject({ code: 'upstream_unavailable' });
    expect((await probe).status).toBe(200);
    expect(upstream.circuitState()).toBe('closed');
    expect(fake.callCount()).toBe(4);
    expect(states).toEqual(['open', 'half_open', 'closed']);
  });

  it('re-opens when the half-open probe fails', async () => {
    const upstream = client({ maxRetries: 0, breakerThreshold: 1, breakerCooldownMs: 100 });
    fake.setDefaultFault({ kind: 'status', status: 502 });
    await upstream.call(newCall());
    expect(upstream.circuitState()).toBe('open');
    await new Promise((resolve) => setTimeout(resolve, 110));
    expect((await upstream.call(newCall())).status).toBe(502);
    expect(upstream.circuitState()).toBe('open');
    expect(fake.callCount()).toBe(2);
  });

  it('does not count 4xx answers or rejected credentials as failures', async () => {
    const upstream = client({ maxRetries: 0, breakerThreshold: 2 });
    fake.enqueueFaults(
      { kind: 'status', status: 503 },
      { kind: 'status', status: 400 },
      { kind: 'status', status: 503 },
      { kind: 'status', status: 404 },
      { kind: 'status', status: 401 },
      { kind: 'status', status: 503 },
    );
    for (let i = 0; i < 6; i++) await outcome(upstream.call(newCall()));
    expect(upstream.circuitState()).toBe('closed');
  });
});

describe('token pool', () => {
  it('skips a dead token: succeeds on the other, logs its fingerprint, never the token', async () => {
    const disabled: string[] = [];
    const upstream = client({
      tokens: [TOKEN_A, TOKEN_B],
      events: { onTokenDisabled: (fp) => disabled.push(fp) },
    });
    fake.revokeToken(TOKEN_A, 'used_up');
    const call = newCall();
    const reply = await upstream.call(call);
    expect(reply.status).toBe(200);
    expect(fake.calls.map((c) => c.token)).toEqual([TOKEN_A, TOKEN_B]);
    expect(call.report.retries).toBe(1);
    expect(upstream.usableTokenCount()).toBe(1);
    expect(disabled).toEqual([fingerprint(TOKEN_A)]);
    const errors = call.lines.filter((l) => l.level === 'error');
    expect(errors).toHaveLength(1);
    expect(errors[0]?.obj).toMatchObject({
      token_fingerprint: fingerprint(TOKEN_A),
      upstream_status: 403,
      upstream_code: 'used_up',
    });
    expect(JSON.stringify(call.lines)).not.toContain(TOKEN_A);

    // The dead token is out of rotation: the next call goes straight to B.
    expect((await upstream.call(newCall())).status).toBe(200);
    expect(fake.calls.map((c) => c.token)).toEqual([TOKEN_A, TOKEN_B, TOKEN_B]);
  });

  it('answers 502 when every token is dead, then stops calling the upstream', async () => {
    const upstream = client({ tokens: [TOKEN_A, TOKEN_B] });
    fake.revokeToken(TOKEN_A, 'invalid_token');
    fake.revokeToken(TOKEN_B, 'disabled');
    const first = await outcome(upstream.call(newCall()));
    expect(first).toMatchObject({
      code: 'upstream_error',
      statusCode: 502,
      message: "the gateway's upstream credentials were rejected",
    });
    expect(fake.callCount()).toBe(2);
    expect(upstream.usableTokenCount()).toBe(0);

    const call = newCall();
    const second = await outcome(upstream.call(call));
    expect(second).toMatchObject({ code: 'upstream_error', statusCode: 502 });
    expect(fake.callCount()).toBe(2);
    expect(call.lines.filter((l) => l.level === 'error')).toHaveLength(1);
    expect(JSON.stringify(call.lines)).not.toMatch(/upstream-token-/);
  });

  it('sends the retry after a 429 on token A with token B', async () => {
    const upstream = client({ tokens: [TOKEN_A, TOKEN_B] });
    fake.enqueueFaults({ kind: 'status', status: 429, retryAfter: '60' });
    const reply = await upstream.call(newCall());
    expect(reply.status).toBe(200);
    expect(fake.calls.map((c) => c.token)).toEqual([TOKEN_A, TOKEN_B]);
    // A is cooling down for its retry-after, so the next call also uses B.
    await upstream.call(newCall());
    expect(fake.calls[2]?.token).toBe(TOKEN_B);
  });

  it('uses the tokens round-robin', async () => {
    const upstream = client({ tokens: [TOKEN_A, TOKEN_B] });
    for (let i = 0; i < 4; i++) await upstream.call(newCall());
    expect(fake.calls.map((c) => c.token)).toEqual([TOKEN_A, TOKEN_B, TOKEN_A, TOKEN_B]);
  });

  it('keeps a lone token in rotation: a rejection is a 502, the next call still tries', async () => {
    const upstream = client();
    fake.enqueueFaults({ kind: 'status', status: 401 });
    const call = newCall();
    expect(await outcome(upstream.call(call))).toMatchObject({ code: 'upstream_error' });
    expect(call.lines.filter((l) => l.level === 'error')).toHaveLength(1);
    expect(upstream.usableTokenCount()).toBe(1);
    expect((await upstream.call(newCall())).status).toBe(200);
  });

  it('brings a rejected token back after the recheck interval when the upstream accepts it', async () => {
    const upstream = client({ tokens: [TOKEN_A, TOKEN_B], tokenRecheckMs: 50 });
    fake.enqueueFaults({ kind: 'status', status: 403, code: 'used_up' });
    await upstream.call(newCall());
    expect(upstream.usableTokenCount()).toBe(1);
    await new Promise((resolve) => setTimeout(resolve, 60));
    for (let i = 0; i < 2; i++) await upstream.call(newCall());
    expect(upstream.usableTokenCount()).toBe(2);
    expect(fake.calls.slice(2).map((c) => c.token)).toContain(TOKEN_A);
  });

  it('treats a 400 token_mismatched as a credentials problem, not the client’s', async () => {
    const upstream = client({ tokens: [TOKEN_A, TOKEN_B] });
    fake.enqueueFaults({ kind: 'status', status: 400, code: 'token_mismatched' });
    const reply = await upstream.call(newCall());
    expect(reply.status).toBe(200);
    expect(fake.calls.map((c) => c.token)).toEqual([TOKEN_A, TOKEN_B]);
  });
});

describe('malformed replies', () => {
  it('answers 502 for a non-JSON body, without retrying, and logs a redacted excerpt', async () => {
    const upstream = client();
    const secretish = 'A'.repeat(40);
    fake.enqueueFaults({ kind: 'garbage', body: `<html>oops ${secretish}</html>` });
    const call = newCall();
    const result = await outcome(upstream.call(call));
    expect(result).toMatchObject({ code: 'upstream_error', statusCode: 502 });
    expect(fake.callCount()).toBe(1);
    const line = call.lines.find((l) => l.level === 'error');
    expect(line?.obj).toMatchObject({ upstream_status: 200 });
    expect(JSON.stringify(line)).toContain('<html>oops [redacted]');
  });

  it('answers 502 for a 200 without solution, without retrying', async () => {
    const upstream = client();
    fake.enqueueFaults({ kind: 'malformed' });
    const result = await outcome(upstream.call(newCall()));
    expect(result).toMatchObject({ code: 'upstream_error', statusCode: 502 });
    expect(fake.callCount()).toBe(1);
  });

  it('retries a non-JSON 503 (a proxy error page) like any 503', async () => {
    const upstream = client();
    fake.enqueueFaults({ kind: 'garbage', status: 503 });
    expect((await upstream.call(newCall())).status).toBe(200);
    expect(fake.callCount()).toBe(2);
  });
});
