/**
 * Which exception Ace Data Cloud's SDKs raise for each error the gateway answers. Both SDKs pick
 * the class by `error.code` first and by status second (classifySdkError in requests.ts states the
 * rule); every row below provokes the condition for real, through the gateway and the fake
 * upstream, and classifies the answer as the SDK would.
 */
import type { LightMyRequestResponse } from 'fastify';
import { describe, expect, it } from 'vitest';
import {
  CLIENT_KEY,
  gatewayTest,
  OTHER_CLIENT_KEY,
  PNG_1X1,
  type TestGateway,
  UPSTREAM_TOKEN,
  within,
} from '../helpers.ts';
import {
  classifySdkError,
  cli,
  pySdk,
  RECOGNITION,
  type SdkErrorClass,
  SITE_KEY,
  SITE_URL,
  send,
  TASKS,
  TOKEN,
  tsSdk,
  type WireRequest,
} from './requests.ts';

const sdk = tsSdk();
const recognition = (n = 0) =>
  sdk.recognition({ queries: [PNG_1X1], question: `Please click each bus (${n})` });
const SITE = { websiteKey: SITE_KEY, websiteUrl: SITE_URL };

interface Expected {
  errorClass: SdkErrorClass;
  status: number;
  code: string;
  /** Gateway's own answers carry retry-after whenever it knows when to come back. */
  retryAfter?: boolean;
  /** A message fragment that tells the caller what happened. */
  message?: RegExp;
}

/** The SDK's view of an answer, plus what every gateway error must be: no secrets in it. */
function expectSdkError(res: LightMyRequestResponse, expected: Expected) {
  const error = classifySdkError(res.statusCode, res.body);
  expect({ errorClass: error.errorClass, status: error.statusCode, code: error.code }).toEqual({
    errorClass: expected.errorClass,
    status: expected.status,
    code: expected.code,
  });
  if (expected.message) expect(error.message).toMatch(expected.message);
  if (expected.retryAfter) expect(res.headers['retry-after']).toMatch(/^\d+$/);
  for (const secret of [CLIENT_KEY, OTHER_CLIENT_KEY, UPSTREAM_TOKEN]) {
    expect(res.body).not.toContain(secret);
  }
  return error;
}

/** A gateway-made envelope carries the request's trace id, which the SDK exposes as traceId. */
function expectGatewayEnvelope(res: LightMyRequestResponse) {
  expect(res.json()).toEqual({
    success: false,
    error: { code: expect.any(String), message: expect.any(String) },
    trace_id: res.headers['x-request-id'],
  });
}

async function sendAll(g: TestGateway, requests: WireRequest[]) {
  return Promise.all(requests.map((request) => send(g, request)));
}

describe('AuthenticationError: 401 invalid_token for a missing or unknown gateway key', () => {
  gatewayTest('unknown key, from the SDKs and the CLI', async ({ gateway: g }) => {
    const key = 'agw_unknown_key_0000000000000000000000000000';
    for (const res of await sendAll(g, [
      tsSdk(key).recognition({ queries: [PNG_1X1] }),
      pySdk('httpx<0.28', key).token({ website_key: 'k', website_url: 'https://x.test' }),
      cli('httpx<0.28', key).task('t-1'),
    ])) {
      const error = expectSdkError(res, {
        errorClass: 'AuthenticationError',
        status: 401,
        code: 'invalid_token',
      });
      expect(error.retried).toBe(false);
      expectGatewayEnvelope(res);
    }
    expect(g.fake.callCount()).toBe(0);
  });

  gatewayTest.for([
    ['no authorization header', undefined],
    ['an empty bearer', 'Bearer '],
    ['another scheme', `Token ${CLIENT_KEY}`],
  ] as const)('%s', async ([, authorization], { gateway: g }) => {
    const { authorization: _, ...headers } = recognition().headers;
    const request = {
      ...recognition(),
      headers: authorization ? { ...headers, authorization } : headers,
    };
    const res = await send(g, request);
    expectSdkError(res, { errorClass: 'AuthenticationError', status: 401, code: 'invalid_token' });
    expect(g.fake.callCount()).toBe(0);
  });
});

describe('ValidationError: 400 bad_request for what is certainly malformed', () => {
  const raw = (path: string, body: string): WireRequest => ({ ...recognition(), path, body });
  gatewayTest.for([
    ['recognition {} (the CLI with no options)', cli('httpx<0.28').recognize()],
    ['recognition with empty queries', sdk.recognition({ queries: [] })],
    [
      'a question that is not a string',
      raw(RECOGNITION, `{"queries":["${PNG_1X1}"],"question":5}`),
    ],
    ['an image that is no image', sdk.recognition({ queries: ['aGk='] })],
    [
      'an image URL over 2048 characters',
      sdk.recognition({ queries: [`https://x.test/${'a'.repeat(2048)}`] }),
    ],
    ['a body that is not JSON', raw(RECOGNITION, '{"queries": [')],
    ['a token request without website_url', raw(TOKEN, '{"website_key":"k"}')],
    ['a task poll without task_id or id', raw(TASKS, '{"action":"retrieve"}')],
  ] as const)('%s', async ([, request], { gateway: g }) => {
    const res = await send(g, request);
    const error = expectSdkError(res, {
      errorClass: 'ValidationError',
      status: 400,
      code: 'bad_request',
    });
    expect(error.retried).toBe(false);
    expectGatewayEnvelope(res);
    expect(g.fake.callCount()).toBe(0);
  });
});

describe('RateLimitError: 429 too_many_requests, with retry-after', () => {
  describe('the client over its rate limit', () => {
    gatewayTest.override('gatewaySettings', {
      limits: { rateLimit: { max: 1, windowSeconds: 60 } },
    });
    gatewayTest('the second request in the window', async ({ gateway: g }) => {
      expect((await send(g, recognition(1))).statusCode).toBe(200);
      const res = await send(g, recognition(2));
      expectSdkError(res, {
        errorClass: 'RateLimitError',
        status: 429,
        code: 'too_many_requests',
        retryAfter: true,
        message: /rate limit/,
      });
      expectGatewayEnvelope(res);
      expect(g.fake.callCount()).toBe(1);
    });
  });

  describe('the client over its daily quota', () => {
    gatewayTest.override('gatewaySettings', { limits: { quota: { upstreamCallsPerDay: 1 } } });
    gatewayTest('the second billed call of the day', async ({ gateway: g }) => {
      expect((await send(g, sdk.token(SITE))).statusCode).toBe(200);
      const res = await send(g, sdk.token(SITE));
      expectSdkError(res, {
        errorClass: 'RateLimitError',
        status: 429,
        code: 'too_many_requests',
        retryAfter: true,
        message: /daily quota/,
      });
      expect(g.fake.callCount()).toBe(1);
    });
  });

  describe('the client with as many requests in flight as it may have', () => {
    gatewayTest.override('gatewaySettings', { limits: { maxInFlight: 1 } });
    gatewayTest(
      'a second request while the first waits on the upstream',
      async ({ gateway: g }) => {
        g.fake.setLatency(3_000);
        const first = send(g, recognition(1));
        await within(g.fake.waitForCalls(1), 20_000, 'the first upstream call');
        const res = await send(g, recognition(2));
        expectSdkError(res, {
          errorClass: 'RateLimitError',
          status: 429,
          code: 'too_many_requests',
          retryAfter: true,
          message: /in flight/,
        });
        expect((await first).statusCode).toBe(200);
        expect(g.fake.callCount()).toBe(1);
      },
    );
  });

  describe('the upstream saturated (its own 429, still there after retries)', () => {
    gatewayTest.override('gatewaySettings', { env: { UPSTREAM_MAX_RETRIES: '0' } });
    gatewayTest(
      '429, not a 503 the SDK would raise as a plain APIError',
      async ({ gateway: g }) => {
        g.fake.setDefaultFault({ kind: 'status', status: 429, code: 'too_many_requests' });
        const res = await send(g, recognition());
        expectSdkError(res, {
          errorClass: 'RateLimitError',
          status: 429,
          code: 'too_many_requests',
          retryAfter: true,
          message: /upstream is saturated/,
        });
        expectGatewayEnvelope(res);
      },
    );
  });
});

describe("InsufficientBalanceError and ResourceDisabledError: the gateway's own account", () => {
  gatewayTest.for([
    ['used_up', 'InsufficientBalanceError', /balance of the gateway's Ace Data Cloud account/],
    ['disabled', 'ResourceDisabledError', /gateway's Ace Data Cloud account or token is disabled/],
  ] as const)(
    'upstream %s on the only token: 403 with that code; the SDK stops retrying',
    async ([code, errorClass, message], { gateway: g }) => {
      g.fake.revokeToken(UPSTREAM_TOKEN, code);
      for (const request of [recognition(), sdk.token(SITE)]) {
        const res = await send(g, request);
        const error = expectSdkError(res, { errorClass, status: 403, code, message });
        expect(error.retried).toBe(false);
        expectGatewayEnvelope(res);
      }
    },
  );
});

describe('ModerationError: the upstream refused this request (403 forbidden), passed through', () => {
  gatewayTest('passed through once; the token stays in rotation', async ({ gateway: g }) => {
    g.fake.enqueueFaults({ kind: 'status', status: 403, code: 'forbidden', path: RECOGNITION });
    const res = await send(g, recognition(1));
    const error = expectSdkError(res, {
      errorClass: 'ModerationError',
      status: 403,
      code: 'forbidden',
    });
    expect(error.retried).toBe(false);
    // The upstream's own answer, its trace id included, reaches the caller unchanged.
    expect(res.json()).toEqual({
      success: false,
      error: { code: 'forbidden', message: expect.stringContaining('content moderation') },
      trace_id: error.traceId,
    });
    expect(error.traceId).not.toBe(res.headers['x-request-id']);
    expect(g.fake.callCount()).toBe(1);
    // About this request only: the next one is served with the same token.
    expect((await send(g, recognition(2))).statusCode).toBe(200);
  });
});

describe('APIError: everything else', () => {
  gatewayTest.for([
    [
      'a path the upstream does not have',
      { path: '/captcha/recognition/recaptcha', method: 'POST' },
    ],
    ['GET on a captcha path', { path: RECOGNITION, method: 'GET' }],
  ] as const)('404 no_api: %s', async ([, target], { gateway: g }) => {
    const res = await g.app.inject({
      method: target.method,
      url: target.path,
      headers: recognition().headers,
      payload: target.method === 'POST' ? recognition().body : undefined,
    });
    expectSdkError(res, { errorClass: 'APIError', status: 404, code: 'no_api' });
    expectGatewayEnvelope(res);
    expect(g.fake.callCount()).toBe(0);
  });

  gatewayTest(
    '404 no_api from the upstream itself: passed through as it came',
    async ({ gateway: g }) => {
      g.fake.enqueueFaults({ kind: 'status', status: 404, code: 'no_api', path: TOKEN });
      const res = await send(g, sdk.token(SITE));
      const error = expectSdkError(res, { errorClass: 'APIError', status: 404, code: 'no_api' });
      expect(error.retried).toBe(false);
      expect(error.message).toBe('API does not exist, please make sure url is correct.');
      expect(g.fake.callCount()).toBe(1);
    },
  );

  gatewayTest("404 not_found: another client's task", async ({ gateway: g }) => {
    const created = (await send(g, sdk.token({ ...SITE, async: true }))).json();
    const res = await send(g, tsSdk(OTHER_CLIENT_KEY).tasksGet(created.task_id));
    expectSdkError(res, { errorClass: 'APIError', status: 404, code: 'not_found' });
    expect(g.fake.callCount(TASKS)).toBe(0);
  });

  gatewayTest.for([
    ['a reply that is not JSON', { kind: 'garbage' }, /malformed reply/],
    ['a 200 without a solution', { kind: 'malformed' }, /malformed reply/],
    ['the connection reset', { kind: 'reset' }, /could not be reached/],
  ] as const)('502 upstream_error: %s', async ([, fault, message], { gateway: g }) => {
    g.fake.setDefaultFault(fault);
    const res = await send(g, recognition());
    const error = expectSdkError(res, {
      errorClass: 'APIError',
      status: 502,
      code: 'upstream_error',
      message,
    });
    expect(error.retried).toBe(true);
  });

  gatewayTest.for(['invalid_token', 'token_expired', 'token_mismatched'] as const)(
    "502 upstream_error when the upstream rejects the gateway's token (%s): not the client's key",
    async (code, { gateway: g }) => {
      g.fake.revokeToken(UPSTREAM_TOKEN, code);
      const res = await send(g, recognition());
      // Not AuthenticationError or TokenMismatchError: the client's own key is fine.
      expectSdkError(res, {
        errorClass: 'APIError',
        status: 502,
        code: 'upstream_error',
        message: /gateway's upstream credentials were rejected/,
      });
    },
  );

  describe('with a breaker that opens after one failed call', () => {
    gatewayTest.override('gatewaySettings', {
      env: { CIRCUIT_BREAKER_THRESHOLD: '1', UPSTREAM_MAX_RETRIES: '0' },
    });
    gatewayTest(
      "500 api_error (the upstream's, passed through), then 503 upstream_unavailable",
      async ({ gateway: g }) => {
        g.fake.enqueueFaults({ kind: 'status', status: 500 });
        const failed = await send(g, recognition(1));
        expectSdkError(failed, { errorClass: 'APIError', status: 500, code: 'api_error' });
        const res = await send(g, recognition(2));
        const error = expectSdkError(res, {
          errorClass: 'APIError',
          status: 503,
          code: 'upstream_unavailable',
          retryAfter: true,
        });
        expect(error.retried).toBe(true);
        expectGatewayEnvelope(res);
        expect(g.fake.callCount()).toBe(1);
      },
    );
  });

  describe('with a one-second request deadline', () => {
    gatewayTest.override('gatewaySettings', { env: { UPSTREAM_TIMEOUT_MS: '1000' } });
    gatewayTest('504 timeout: no upstream answer in time', async ({ gateway: g }) => {
      g.fake.setDefaultFault({ kind: 'hang' });
      const res = await send(g, recognition());
      expectSdkError(res, { errorClass: 'APIError', status: 504, code: 'timeout' });
      expectGatewayEnvelope(res);
    });
  });

  describe('a task past the upstream deadline', () => {
    let clock = Date.UTC(2026, 7, 1);
    gatewayTest.override('gatewaySettings', {
      fakeOptions: { taskDeadlineMs: 120_000, now: () => clock },
    });
    gatewayTest(
      "504 with the upstream's flat body: code '' (the SDK reads no error object)",
      async ({ gateway: g }) => {
        g.fake.enqueueFaults({ kind: 'task_timeout', path: TOKEN });
        const created = (await send(g, sdk.token({ ...SITE, async: true }))).json();
        clock += 120_000;
        const res = await send(g, sdk.tasksRetrieve({ taskId: created.task_id }));
        const error = expectSdkError(res, { errorClass: 'APIError', status: 504, code: '' });
        expect(error.message).toBe('');
        expect(res.json()).toMatchObject({
          code: 'timeout',
          detail: 'The captcha task timed out.',
        });
      },
    );
  });
});

describe('the classifier itself states the SDK rule', () => {
  it.for([
    [403, { error: { code: 'used_up', message: 'm' } }, 'InsufficientBalanceError'],
    [400, { error: { code: 'disabled', message: 'm' } }, 'ResourceDisabledError'],
    [400, { error: { code: 'token_mismatched', message: 'm' } }, 'TokenMismatchError'],
    [503, { error: { code: 'too_many_requests', message: 'm' } }, 'RateLimitError'],
    [403, { error: { code: 'forbidden', message: 'm' } }, 'ModerationError'],
    [401, { error: 'plain text' }, 'AuthenticationError'],
    [400, { error: { code: 'api_not_implemented', message: 'm' } }, 'ValidationError'],
    [429, {}, 'RateLimitError'],
    [404, { error: { code: 'no_api', message: 'm' } }, 'APIError'],
    [502, '<html>oops</html>', 'APIError'],
  ] as const)('%i %j → %s', ([status, body, errorClass]) => {
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    expect(classifySdkError(status, text).errorClass).toBe(errorClass);
  });
});
