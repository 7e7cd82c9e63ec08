// The upstream's error semantics through the whole gateway, with the upstream answering as its
// public docs show (the fake's documented codes and messages): what a client sees (status, code,
// body, retry-after), how many calls reach the upstream, and what operators see (log lines with
// the token's fingerprint only, metrics, /readyz).
import { describe, expect } from 'vitest';
import { fingerprint, UPSTREAM_ERRORS } from '../dev/fake-upstream.ts';
import { gatewayTest, metricSum, postJson, type TestGateway, validBody } from './helpers.ts';

// Each test starts a gateway and a fake upstream: seconds on a loaded machine, not vitest's 5 s.
const TOKEN_A = 'acedata-token-aaaa-0123456789abcdef';
const TOKEN_B = 'acedata-token-bbbb-fedcba9876543210';
const TWO_TOKENS = {
  env: { ACEDATA_API_TOKEN: `${TOKEN_A},${TOKEN_B}`, UPSTREAM_TIMEOUT_MS: '5000' },
  fakeOptions: { tokens: [TOKEN_A, TOKEN_B] },
};

let requests = 0;
/** A recognition request no earlier request shares a cache key with. */
const distinct = (g: TestGateway) =>
  postJson(g, { body: validBody({ question: `Please click each bus (${++requests})` }) });

const readiness = async (g: TestGateway) => {
  const res = await g.app.inject({ url: '/readyz' });
  return { status: res.statusCode, body: res.json() as { status: string; checks: object } };
};

/**
 * `retry-after` of a cool-down of `coolDownMs` that began after `startedAt`: the whole seconds
 * left when the answer came, whatever the machine's speed.
 */
function expectRetryAfterLeft(value: unknown, coolDownMs: number, startedAt: number): void {
  const seconds = Number(value);
  expect(seconds).toBeLessThanOrEqual(Math.ceil(coolDownMs / 1_000));
  expect(seconds).toBeGreaterThanOrEqual(
    Math.ceil((coolDownMs - (Date.now() - startedAt)) / 1_000),
  );
}

const completion = (g: TestGateway, traceId: string) =>
  g.logs().find((line) => line.msg === 'request completed' && line.trace_id === traceId);

/** Neither token appears in any log line or in /metrics. */
async function expectNoTokenLeak(g: TestGateway): Promise<void> {
  const metrics = (await g.admin.inject({ url: '/metrics' })).body;
  for (const token of [TOKEN_A, TOKEN_B]) {
    expect(g.logLines.join('\n')).not.toContain(token);
    expect(metrics).not.toContain(token);
  }
}

describe('403 forbidden (content moderation) is about the request', () => {
  gatewayTest.override('gatewaySettings', TWO_TOKENS);

  gatewayTest(
    'passes through with its status and body, keeps both tokens, is no breaker failure',
    async ({ gateway: g }) => {
      g.fake.enqueueFaults(
        { kind: 'status', status: 403, code: 'forbidden' },
        { kind: 'status', status: 403, code: 'forbidden' },
      );
      for (let i = 0; i < 2; i++) {
        const res = await distinct(g);
        expect(res.statusCode).toBe(403);
        const body = res.json();
        expect(body).toEqual({
          success: false,
          error: { code: 'forbidden', message: UPSTREAM_ERRORS.forbidden.message },
          trace_id: expect.any(String),
        });
        // The upstream's own body, unchanged: its trace id, not the gateway's.
        expect(body.trace_id).not.toBe(res.headers['x-request-id']);
        expect(completion(g, String(res.headers['x-request-id']))).toMatchObject({
          status: 403,
          upstream_status: 403,
          upstream_trace_id: body.trace_id,
          retries: 0,
          error_code: 'forbidden',
        });
      }
      expect(g.fake.calls.map((c) => c.token)).toEqual([TOKEN_A, TOKEN_B]);

      const unrelated = await distinct(g);
      expect(unrelated.statusCode).toBe(200);
      expect(g.fake.callCount()).toBe(3);
      expect(await readiness(g)).toEqual({ status: 200, body: { status: 'ready', checks: {} } });
      expect(await metricSum(g, 'gateway_upstream_token_transitions_total')).toBe(0);
      expect(await metricSum(g, 'gateway_circuit_transitions_total')).toBe(0);
      expect(g.logs().filter((line) => line.token_fingerprint !== undefined)).toEqual([]);
    },
  );
});

describe("the upstream rejects one of the gateway's tokens", () => {
  gatewayTest.override('gatewaySettings', TWO_TOKENS);

  gatewayTest.for([
    [403, 'used_up'],
    [400, 'disabled'],
    [403, 'disabled'],
    [401, 'invalid_token'],
    [401, 'token_expired'],
    [400, 'no_token'],
    [400, 'token_mismatched'],
    [401, 'token_mismatched'],
  ] as const)(
    '%i %s: the token leaves rotation, the request succeeds on the other; logged and counted',
    async ([status, code], { gateway: g }) => {
      g.fake.enqueueFaults({ kind: 'status', status, code });
      const res = await distinct(g);
      expect(res.statusCode).toBe(200);
      expect(res.json()).toMatchObject({ solution: expect.any(Object) });
      expect(g.fake.calls.map((c) => c.token)).toEqual([TOKEN_A, TOKEN_B]);
      expect(completion(g, String(res.headers['x-request-id']))).toMatchObject({
        status: 200,
        upstream_status: 200,
        retries: 1,
      });
      const alerts = g.logs().filter((line) => line.token_fingerprint !== undefined);
      expect(alerts).toEqual([
        expect.objectContaining({
          level: 50,
          upstream_status: status,
          upstream_code: code,
          token_fingerprint: fingerprint(TOKEN_A),
          msg: expect.stringContaining('out of rotation'),
        }),
      ]);
      expect(
        await metricSum(g, 'gateway_upstream_token_transitions_total', { state: 'disabled', code }),
      ).toBe(1);
      expect(
        await metricSum(g, 'gateway_upstream_retries_total', { reason: 'token_rejected' }),
      ).toBe(1);
      expect(await readiness(g)).toEqual({
        status: 200,
        body: {
          status: 'degraded',
          checks: {
            upstream_tokens: { status: 'degraded', detail: '1 of 2 upstream tokens are usable' },
          },
        },
      });
      // Out of rotation: the next request goes straight to B.
      expect((await distinct(g)).statusCode).toBe(200);
      expect(g.fake.calls.map((c) => c.token)).toEqual([TOKEN_A, TOKEN_B, TOKEN_B]);
      await expectNoTokenLeak(g);
    },
  );

  gatewayTest.for([
    ['used_up', 403, 'used_up', /balance of the gateway's Ace Data Cloud account/],
    ['disabled', 403, 'disabled', /gateway's Ace Data Cloud account or token is disabled/],
    ['invalid_token', 502, 'upstream_error', /gateway's upstream credentials were rejected/],
  ] as const)(
    'every token %s: %i %s naming the gateway, then no more upstream calls',
    async ([revocation, status, code, message], { gateway: g }) => {
      g.fake.revokeToken(TOKEN_A, revocation);
      g.fake.revokeToken(TOKEN_B, revocation);
      for (let i = 0; i < 2; i++) {
        const res = await distinct(g);
        expect(res.statusCode).toBe(status);
        // When a token may be tried again: the recheck interval (60 s), counted from the rejection.
        expect(Number(res.headers['retry-after'])).toBeGreaterThan(0);
        expect(Number(res.headers['retry-after'])).toBeLessThanOrEqual(60);
        expect(res.json()).toEqual({
          success: false,
          error: { code, message: expect.stringMatching(message) },
          trace_id: res.headers['x-request-id'],
        });
        // Both tokens were tried once, by the first request; the second sends nothing.
        expect(g.fake.callCount()).toBe(2);
      }
      expect(
        await metricSum(g, 'gateway_upstream_token_transitions_total', {
          state: 'disabled',
          code: revocation,
        }),
      ).toBe(2);
      expect(await readiness(g)).toEqual({
        status: 200,
        body: {
          status: 'degraded',
          checks: {
            upstream_tokens: {
              status: 'degraded',
              detail: 'no upstream token is usable (0 of 2); cache hits are served',
            },
          },
        },
      });
      await expectNoTokenLeak(g);
    },
  );
});

describe('a pool of one token', () => {
  gatewayTest(
    'keeps its token: each request still tries it, and it serves again once accepted',
    async ({ gateway: g }) => {
      g.fake.revokeToken(g.config.ACEDATA_API_TOKEN[0] ?? '', 'used_up');
      for (let i = 1; i <= 2; i++) {
        const res = await distinct(g);
        expect(res.statusCode).toBe(403);
        expect(res.json().error).toMatchObject({ code: 'used_up' });
        expect(g.fake.callCount()).toBe(i);
      }
      g.fake.reset();
      expect((await distinct(g)).statusCode).toBe(200);
      expect(g.fake.callCount()).toBe(1);
      expect((await readiness(g)).body).toEqual({ status: 'ready', checks: {} });
    },
  );
});

describe('upstream 429', () => {
  gatewayTest.override('gatewaySettings', {
    env: { UPSTREAM_MAX_RETRIES: '2', UPSTREAM_TIMEOUT_MS: '5000' },
  });

  gatewayTest(
    'still there after the retries: 429 too_many_requests, retry-after, saturation message',
    async ({ gateway: g }) => {
      g.fake.setDefaultFault({ kind: 'status', status: 429, retryAfter: '0' });
      const res = await distinct(g);
      expect(res.statusCode).toBe(429);
      expect(res.headers['retry-after']).toBe('1');
      expect(res.json()).toEqual({
        success: false,
        error: {
          code: 'too_many_requests',
          message: expect.stringMatching(/upstream is saturated/),
        },
        trace_id: res.headers['x-request-id'],
      });
      expect(g.fake.callCount()).toBe(3);
      expect(completion(g, String(res.headers['x-request-id']))).toMatchObject({
        status: 429,
        upstream_status: 429,
        retries: 2,
        error_code: 'too_many_requests',
      });
      expect(await metricSum(g, 'gateway_circuit_transitions_total')).toBe(0);
    },
  );

  gatewayTest(
    "a retry-after beyond the deadline: answered at once, and later requests honour the token's cool-down",
    async ({ gateway: g }) => {
      g.fake.enqueueFaults({ kind: 'status', status: 429, retryAfter: '30' });
      const startedAt = Date.now();
      const first = await distinct(g);
      expect(first.statusCode).toBe(429);
      expect(first.headers['retry-after']).toBe('30');
      expect(first.json().error.code).toBe('too_many_requests');
      expect(g.fake.callCount()).toBe(1);

      const second = await distinct(g);
      expect(second.statusCode).toBe(429);
      expectRetryAfterLeft(second.headers['retry-after'], 30_000, startedAt);
      expect(second.json().error).toMatchObject({
        code: 'too_many_requests',
        message: expect.stringMatching(/upstream is saturated/),
      });
      expect(g.fake.callCount()).toBe(1);
    },
  );
});

describe("the gateway's own 503s carry retry-after", () => {
  gatewayTest.override('gatewaySettings', {
    env: {
      UPSTREAM_MAX_RETRIES: '0',
      CIRCUIT_BREAKER_THRESHOLD: '1',
      CIRCUIT_BREAKER_COOLDOWN_MS: '30000',
    },
  });

  gatewayTest(
    'an open breaker: 503 with the cool-down left, nothing sent, /readyz degraded with 200',
    async ({ gateway: g }) => {
      g.fake.enqueueFaults({ kind: 'status', status: 502 });
      const startedAt = Date.now();
      const failed = await distinct(g);
      expect(failed.statusCode).toBe(502);
      expect(failed.json().error.code).toBe('api_error');

      const refused = await distinct(g);
      expect(refused.statusCode).toBe(503);
      expectRetryAfterLeft(refused.headers['retry-after'], 30_000, startedAt);
      expect(refused.json().error.code).toBe('upstream_unavailable');
      expect(g.fake.callCount()).toBe(1);
      expect(await readiness(g)).toEqual({
        status: 200,
        body: {
          status: 'degraded',
          checks: {
            upstream_circuit: {
              status: 'degraded',
              detail: 'the upstream circuit breaker is open; cache hits are served',
            },
          },
        },
      });
      expect(await metricSum(g, 'gateway_circuit_transitions_total', { state: 'open' })).toBe(1);
    },
  );
});

describe('UPSTREAM_QUEUE_MAX through the app', () => {
  gatewayTest.override('gatewaySettings', {
    env: { UPSTREAM_MAX_CONCURRENCY: '1', UPSTREAM_QUEUE_MAX: '0', UPSTREAM_MAX_RETRIES: '0' },
  });

  gatewayTest(
    'a full queue answers 503 upstream_unavailable with retry-after at once',
    async ({ gateway: g }) => {
      g.fake.enqueueFaults({ kind: 'hang' });
      const held = distinct(g);
      await g.fake.waitForCalls(1);
      const refused = await distinct(g);
      expect(refused.statusCode).toBe(503);
      expect(refused.headers['retry-after']).toBe('1');
      expect(refused.json().error.code).toBe('upstream_unavailable');
      expect(g.fake.callCount()).toBe(1);
      // Closing the fake drops the held call's connection: the gateway could not get an answer.
      await g.fake.close();
      expect((await held).statusCode).toBe(502);
    },
  );
});
