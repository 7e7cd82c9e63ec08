// The retry budget: on its own with explicit clocks (percentage, the per-second floor, the window),
// through the upstream client against a persistently failing upstream (retries stop once it is
// spent), and through the app (the completion line's retry_budget_exhausted and the metric).
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type FakeUpstream, startFakeUpstream } from '../dev/fake-upstream.ts';
import { type UpstreamCall, UpstreamClient, type UpstreamReply } from '../src/upstream/client.ts';
import { RetryBudget } from '../src/upstream/retry-budget.ts';
import { gatewayTest, metricSum, postJson } from './helpers.ts';

// Each test starts a gateway and a fake upstream: seconds on a loaded machine, not vitest's 5 s.
const T0 = 1_700_000_000_000;

describe('RetryBudget', () => {
  it('allows retries up to `percent` of the calls in the window, with no floor', () => {
    const budget = new RetryBudget({ percent: 20, minPerSecond: 0 });
    expect(budget.tryRetry(T0)).toBe(false);
    for (let i = 0; i < 10; i++) budget.recordCall(T0 + i * 100);
    expect(budget.tryRetry(T0 + 1_000)).toBe(true);
    expect(budget.tryRetry(T0 + 1_000)).toBe(true);
    expect(budget.tryRetry(T0 + 1_000)).toBe(false);
    // A refused retry takes nothing: five more calls buy exactly one more retry.
    for (let i = 0; i < 5; i++) budget.recordCall(T0 + 1_500);
    expect(budget.tryRetry(T0 + 1_500)).toBe(true);
    expect(budget.tryRetry(T0 + 1_500)).toBe(false);
  });

  it('always allows minPerSecond retries a second (a reserve of floor × window), whatever the calls', () => {
    const budget = new RetryBudget({ percent: 0, minPerSecond: 2, windowMs: 10_000 });
    for (let second = 0; second < 10; second++) {
      const now = T0 + second * 1_000;
      expect([budget.tryRetry(now), budget.tryRetry(now)]).toEqual([true, true]);
    }
    expect(budget.tryRetry(T0 + 9_999)).toBe(false);
    // The first second's two retries leave the window at T0 + 10 s, and two more are allowed.
    expect(budget.tryRetry(T0 + 10_000)).toBe(true);
    expect(budget.tryRetry(T0 + 10_000)).toBe(true);
    expect(budget.tryRetry(T0 + 10_000)).toBe(false);
  });

  it('forgets calls and retries older than the window', () => {
    const budget = new RetryBudget({ percent: 50, minPerSecond: 0, windowMs: 5_000 });
    for (let i = 0; i < 4; i++) budget.recordCall(T0);
    expect(budget.tryRetry(T0 + 999)).toBe(true);
    expect(budget.tryRetry(T0 + 999)).toBe(true);
    expect(budget.tryRetry(T0 + 4_999)).toBe(false);
    // The calls and retries of the first second have left the window: nothing is deposited, so
    // nothing may be retried until new calls come.
    expect(budget.tryRetry(T0 + 5_000)).toBe(false);
    budget.recordCall(T0 + 5_000);
    budget.recordCall(T0 + 5_000);
    expect(budget.tryRetry(T0 + 5_000)).toBe(true);
    expect(budget.tryRetry(T0 + 5_000)).toBe(false);
    // A long quiet gap (a whole window and more) forgets everything too.
    expect(budget.tryRetry(T0 + 60_000)).toBe(false);
  });
});

describe('through the upstream client', () => {
  let fake: FakeUpstream;
  const clients: UpstreamClient[] = [];
  beforeAll(async () => {
    fake = await startFakeUpstream({ tokens: ['token-a', 'token-b'] });
  });
  afterAll(async () => {
    await fake.close();
  });
  afterEach(async () => {
    fake.reset();
    await Promise.all(clients.splice(0).map((c) => c.close()));
  });

  function client(budget: RetryBudget, maxRetries: number, tokens = ['token-a']) {
    const events = { exhausted: 0, retries: [] as string[] };
    const c = new UpstreamClient({
      baseUrl: fake.url,
      tokens,
      timeoutMs: 10_000,
      maxConnections: 4,
      maxRetries,
      backoff: { initialDelayMs: 1, maxDelayMs: 2 },
      // The breaker is not under test: a failing upstream must keep being called.
      breakerThreshold: 1_000,
      retryBudget: budget,
      events: {
        onRetryBudgetExhausted: () => events.exhausted++,
        onRetry: (reason) => events.retries.push(reason),
      },
    });
    clients.push(c);
    return { c, events };
  }

  const ignore = () => {};
  const newCall = (i = 0): UpstreamCall => ({
    path: '/captcha/recognition/hcaptcha',
    kind: 'solve',
    body: Buffer.from(JSON.stringify({ queries: ['aGk='], question: `q${i}` })),
    expect: 'solution',
    traceId: `budget-${i}`,
    clientId: 'checkout-service',
    deadline: Date.now() + 10_000,
    report: { retries: 0 },
    log: { error: ignore, warn: ignore },
  });

  it('stops retrying a persistently failing upstream once retries reach the percentage of calls', async () => {
    const budget = new RetryBudget({ percent: 50, minPerSecond: 0, windowMs: 600_000 });
    const { c, events } = client(budget, 2);
    fake.setDefaultFault({ kind: 'status', status: 503 });
    const perCall: number[] = [];
    const reports: UpstreamCall['report'][] = [];
    for (let i = 0; i < 10; i++) {
      const before = fake.callCount();
      const call = newCall(i);
      const reply: UpstreamReply = await c.call(call);
      expect(reply.status).toBe(503);
      perCall.push(fake.callCount() - before);
      reports.push(call.report);
    }
    // Without a budget: 30 upstream calls. With 50%: 10 calls + 5 retries, never more.
    expect(perCall).toEqual([1, 2, 1, 2, 1, 2, 1, 2, 1, 2]);
    expect(fake.callCount()).toBe(15);
    expect(events.retries).toEqual(Array(5).fill('status_503'));
    expect(reports.map((r) => r.retries)).toEqual([0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
    expect(reports.every((r) => r.retry_budget_exhausted === true)).toBe(true);
    expect(events.exhausted).toBe(10);
  });

  it('is not touched when no retry was possible anyway (retries off, or the last one spent)', async () => {
    const none = new RetryBudget({ percent: 0, minPerSecond: 0 });
    const off = client(none, 0);
    fake.setDefaultFault({ kind: 'status', status: 503 });
    const first = newCall(1);
    expect((await off.c.call(first)).status).toBe(503);
    expect(fake.callCount()).toBe(1);
    expect(first.report.retry_budget_exhausted).toBeUndefined();
    expect(off.events.exhausted).toBe(0);

    // One retry allowed per call: both calls get theirs, the limit (not the budget) ends them.
    const ample = new RetryBudget({ percent: 100, minPerSecond: 0, windowMs: 600_000 });
    const one = client(ample, 1);
    for (const i of [2, 3]) {
      const call = newCall(i);
      expect((await one.c.call(call)).status).toBe(503);
      expect(call.report).toMatchObject({ retries: 1 });
      expect(call.report.retry_budget_exhausted).toBeUndefined();
    }
    expect(fake.callCount()).toBe(1 + 2 + 2);
    expect(one.events.exhausted).toBe(0);
  });

  it('does not spend the budget on switching away from a token the upstream rejected', async () => {
    const none = new RetryBudget({ percent: 0, minPerSecond: 0 });
    const { c, events } = client(none, 2, ['token-a', 'token-b']);
    fake.revokeToken('token-a', 'used_up');
    const call = newCall();
    expect((await c.call(call)).status).toBe(200);
    expect(fake.calls.map((x) => x.token)).toEqual(['token-a', 'token-b']);
    expect(call.report.retries).toBe(1);
    expect(call.report.retry_budget_exhausted).toBeUndefined();
    expect(events).toEqual({ exhausted: 0, retries: ['token_rejected'] });
  });
});

describe('through the app', () => {
  gatewayTest.override('gatewaySettings', {
    env: {
      RETRY_BUDGET_PERCENT: '0',
      RETRY_BUDGET_MIN_PER_SECOND: '0',
      UPSTREAM_MAX_RETRIES: '2',
      CIRCUIT_BREAKER_THRESHOLD: '1000',
    },
  });

  gatewayTest(
    'an empty budget answers the first transient fault as it is: the log line and the metric say so',
    async ({ gateway: g }) => {
      g.fake.setDefaultFault({ kind: 'status', status: 503 });
      const res = await postJson(g);
      expect(res.statusCode).toBe(503);
      expect(res.json()).toMatchObject({ success: false, error: { code: 'api_error' } });
      expect(g.fake.callCount()).toBe(1);
      const line = g.logs().find((l) => l.msg === 'request completed');
      expect(line).toMatchObject({
        status: 503,
        upstream_status: 503,
        retries: 0,
        retry_budget_exhausted: true,
        error_code: 'api_error',
      });
      expect(await metricSum(g, 'gateway_upstream_retry_budget_exhausted_total')).toBe(1);
      expect(await metricSum(g, 'gateway_upstream_retries_total')).toBe(0);
      expect(await metricSum(g, 'gateway_upstream_requests_total', { status: '503' })).toBe(1);
      // Operators read the same on the admin port.
      const scrape = await g.admin.inject({ url: '/metrics' });
      expect(scrape.body).toContain('gateway_upstream_retry_budget_exhausted_total 1');
    },
  );
});
