import { afterEach, describe, expect, it, vi } from 'vitest';
import { fingerprint, startFakeUpstream } from '../dev/fake-upstream.ts';
import {
  BMP_HEADER,
  CLIENT_KEY,
  completionOf,
  GIF_HEADER,
  gatewayTest,
  JPEG_HEADER,
  PNG_1X1,
  postJson,
  RECOGNITION,
  startGateway,
  UPSTREAM_TOKEN,
  validBody,
  WEBP_HEADER,
} from './helpers.ts';

const CREDENTIALS_REJECTED =
  "the gateway's upstream credentials were rejected; this is the gateway's account, not your key — tell the gateway's operator";

afterEach(() => {
  vi.useRealTimers();
});

// Caching off: these tests check forwarding, so identical bodies must reach the upstream.
const test = gatewayTest.override('gatewaySettings', {
  env: { UPSTREAM_TIMEOUT_MS: '1500', BODY_LIMIT_BYTES: '65536', CACHE_TTL_SECONDS: '0' },
});

describe('forwarding', () => {
  test("passes the upstream's status and exact bytes through, with the gateway's token", async ({
    gateway: g,
  }) => {
    // Spacing, member order and number spellings a re-serialization would change.
    const upstream = '{ "solution" : {"label":"bus","box":["360","276"]},"elapsed":1.50,"n":1e3 }';
    g.fake.enqueueFaults({ kind: 'garbage', status: 200, body: upstream });
    const res = await postJson(g);
    expect(res.statusCode).toBe(200);
    expect(res.body).toBe(upstream);
    expect(res.headers['content-type']).toBe('application/json; charset=utf-8');
    expect(g.fake.callCount()).toBe(1);
    const call = g.fake.calls[0];
    expect(call?.path).toBe(RECOGNITION);
    expect(call?.token).toBe(UPSTREAM_TOKEN);
    expect(JSON.stringify(call?.headers)).not.toContain(CLIENT_KEY);
    expect(call?.rawBody).not.toContain(CLIENT_KEY);
  });

  test("forwards the client's exact bytes when nothing needs rewriting", async ({ gateway: g }) => {
    const payload = `{"queries":["${PNG_1X1}"],  "question":"a\\u3000bus","n":18446744073709551617,"x":-0}`;
    const res = await g.app.inject({
      method: 'POST',
      url: RECOGNITION,
      headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
      payload,
    });
    expect(res.statusCode).toBe(200);
    expect(g.fake.calls[0]?.rawBody).toBe(payload);
  });

  test('rewrites only queries (a data: prefix, line breaks) and keeps every other field as written', async ({
    gateway: g,
  }) => {
    const wrapped = `data:image/png;base64,${PNG_1X1.slice(0, 20)}\r\n${PNG_1X1.slice(20)}`;
    const res = await postJson(g, {
      body: validBody({ queries: [wrapped], website: 'example.test', extra: { a: [1, 2] } }),
    });
    expect(res.statusCode).toBe(200);
    expect(g.fake.calls[0]?.body).toEqual({
      question: 'Please click each image containing a bus',
      queries: [PNG_1X1],
      website: 'example.test',
      extra: { a: [1, 2] },
    });
  });

  test('accepts PNG, JPEG, GIF, WebP and BMP images, image URLs, and no question', async ({
    gateway: g,
  }) => {
    const queries = [
      PNG_1X1,
      JPEG_HEADER,
      GIF_HEADER,
      WEBP_HEADER,
      BMP_HEADER,
      'https://example.com/img.jpg',
    ];
    const res = await postJson(g, { body: { queries } });
    expect(res.statusCode).toBe(200);
    expect(g.fake.callCount()).toBe(1);
    expect(g.fake.calls[0]?.body).toEqual({ queries });
  });

  test('honours a well-formed x-request-id, echoes it and forwards it', async ({ gateway: g }) => {
    const res = await postJson(g, { headers: { 'x-request-id': 'job-42:attempt.1' } });
    expect(res.headers['x-request-id']).toBe('job-42:attempt.1');
    expect(g.fake.calls[0]?.headers['x-request-id']).toBe('job-42:attempt.1');
  });

  test.for([
    ['has a space', 'bad id'],
    ['is too long', 'a'.repeat(129)],
  ] as const)(
    'replaces an x-request-id that %s with a generated one',
    async ([, incoming], { gateway: g }) => {
      const res = await postJson(g, { headers: { 'x-request-id': incoming } });
      const traceId = res.headers['x-request-id'];
      expect(traceId).toMatch(/^[0-9a-f-]{36}$/);
      expect(g.fake.calls[0]?.headers['x-request-id']).toBe(traceId);
    },
  );
});

describe("the upstream's answers", () => {
  test('passes an upstream 400 through with its status and body', async ({ gateway: g }) => {
    g.fake.enqueueFaults({
      kind: 'status',
      status: 400,
      code: 'bad_request',
      message: 'bad image',
    });
    const res = await postJson(g);
    expect(res.statusCode).toBe(400);
    expect(res.json()).toMatchObject({
      success: false,
      error: { code: 'bad_request', message: 'bad image' },
    });
    // The upstream's own trace id, not the gateway's.
    expect(res.json().trace_id).not.toBe(res.headers['x-request-id']);
    expect(completionOf(g, res)).toMatchObject({ status: 400, error_code: 'bad_request' });
  });

  test('passes a plain-string upstream error through as it is', async ({ gateway: g }) => {
    g.fake.enqueueFaults({ kind: 'status', status: 404, message: 'nope', plainError: true });
    const res = await postJson(g);
    expect(res.statusCode).toBe(404);
    expect(res.json().error).toBe('nope');
  });

  test('passes 403 forbidden (moderation of this request) through and keeps the token', async ({
    gateway: g,
  }) => {
    g.fake.enqueueFaults({ kind: 'status', status: 403, code: 'forbidden' });
    const res = await postJson(g);
    expect(res.statusCode).toBe(403);
    expect(res.json().error.code).toBe('forbidden');
    expect(g.app.upstream.tokenState()).toEqual({ usable: 1, total: 1 });
    expect(g.app.upstream.circuitState()).toBe('closed');
    expect((await postJson(g, { body: validBody({ question: 'next' }) })).statusCode).toBe(200);
    expect(g.fake.callCount()).toBe(2);
  });

  test("answers 502 when the upstream rejects the gateway's only token, and logs its fingerprint", async ({
    gateway: g,
  }) => {
    g.fake.enqueueFaults({ kind: 'status', status: 401, code: 'invalid_token' });
    const res = await postJson(g);
    expect(res.statusCode).toBe(502);
    expect(res.json()).toEqual({
      success: false,
      error: { code: 'upstream_error', message: CREDENTIALS_REJECTED },
      trace_id: res.headers['x-request-id'],
    });
    const errors = g
      .logs()
      .filter((l) => l.level === 50 && l.trace_id === res.headers['x-request-id']);
    expect(errors.map((l) => l.msg)).toContain(
      "the upstream rejected the gateway's token or account",
    );
    expect(errors.find((l) => l.token_fingerprint)?.token_fingerprint).toBe(
      fingerprint(UPSTREAM_TOKEN),
    );
    expect(g.logLines.join('\n')).not.toContain(UPSTREAM_TOKEN);
    // A pool of one keeps its token: the next request goes through.
    expect((await postJson(g, { body: validBody({ question: 'next' }) })).statusCode).toBe(200);
  });

  test('answers 429 with retry-after when the upstream keeps answering 429', async ({
    gateway: g,
  }) => {
    g.fake.setDefaultFault({ kind: 'status', status: 429, retryAfter: '7' });
    const res = await postJson(g);
    expect(res.statusCode).toBe(429);
    expect(res.json().error.code).toBe('too_many_requests');
    expect(res.json().error.message).toMatch(/upstream is saturated/);
    expect(res.headers['retry-after']).toBe('7');
  });

  test("reads the upstream's retry-after in its HTTP-date form too", async ({ gateway: g }) => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(new Date('2026-03-01T12:00:00Z'));
    g.fake.setDefaultFault({
      kind: 'status',
      status: 429,
      retryAfter: 'Sun, 01 Mar 2026 12:00:07 GMT',
    });
    const res = await postJson(g);
    expect(res.statusCode).toBe(429);
    expect(res.headers['retry-after']).toBe('7');
    // The token cools down for that long: the next request is answered at once, unsent.
    const calls = g.fake.callCount();
    const next = await postJson(g, { body: validBody({ question: 'next' }) });
    expect(next.statusCode).toBe(429);
    expect(next.headers['retry-after']).toBe('7');
    expect(g.fake.callCount()).toBe(calls);
  });

  test('answers 502 for an upstream reply larger than the pool accepts (4 MiB), logging none of it', async ({
    gateway: g,
  }) => {
    const huge = `{"solution":{"padding":"${'p'.repeat(5 * 1024 * 1024)}"}}`;
    g.fake.setDefaultFault({ kind: 'garbage', status: 200, body: huge });
    const res = await postJson(g);
    expect(res.statusCode).toBe(502);
    expect(res.json().error.code).toBe('upstream_error');
    expect(g.logLines.join('\n')).not.toContain('p'.repeat(100));
  });

  test.for([
    ['a non-JSON body', { kind: 'garbage' }],
    ['a 200 without solution', { kind: 'malformed' }],
    ['a connection reset', { kind: 'reset' }],
  ] as const)('answers 502 upstream_error for %s', async ([, fault], { gateway: g }) => {
    g.fake.setDefaultFault(fault);
    const res = await postJson(g);
    expect(res.statusCode).toBe(502);
    expect(res.json()).toMatchObject({ success: false, error: { code: 'upstream_error' } });
    expect(res.json().trace_id).toBe(res.headers['x-request-id']);
  });

  test('answers 502 for an async submission without task_id', async ({ gateway: g }) => {
    g.fake.enqueueFaults({ kind: 'malformed' });
    const res = await postJson(g, { body: validBody({ async: true }) });
    expect(res.statusCode).toBe(502);
    expect(res.json().error.code).toBe('upstream_error');
  });

  test('answers 504 timeout when the upstream hangs past UPSTREAM_TIMEOUT_MS', async ({
    gateway: g,
  }) => {
    g.fake.enqueueFaults({ kind: 'hang' });
    const res = await postJson(g);
    expect(res.statusCode).toBe(504);
    expect(res.json()).toMatchObject({ success: false, error: { code: 'timeout' } });
    expect(g.fake.callCount()).toBe(1);
  });
});

describe('an upstream that cannot be reached', () => {
  it('answers 502 upstream_error', async () => {
    const gone = await startFakeUpstream();
    const url = gone.url;
    await gone.close();
    const g = await startGateway(
      { ACEDATA_BASE_URL: url, UPSTREAM_TIMEOUT_MS: '1500', UPSTREAM_MAX_RETRIES: '0' },
      { fake: gone },
    );
    try {
      const res = await postJson(g);
      expect(res.statusCode).toBe(502);
      expect(res.json()).toMatchObject({
        error: { code: 'upstream_error', message: 'the upstream could not be reached' },
      });
    } finally {
      await g.app.close();
    }
  });
});

describe('routes', () => {
  test('answers an unknown route 404 no_api before reading its body, with or without a key', async ({
    gateway: g,
  }) => {
    for (const headers of [{}, { authorization: `Bearer ${CLIENT_KEY}` }]) {
      const res = await g.app.inject({
        method: 'POST',
        url: '/captcha/other',
        headers,
        payload: '{}',
      });
      expect(res.statusCode).toBe(404);
      expect(res.json()).toEqual({
        success: false,
        error: { code: 'no_api', message: 'no route for POST /captcha/other' },
        trace_id: res.headers['x-request-id'],
      });
    }
    expect(g.fake.callCount()).toBe(0);
  });

  test('serves /metrics, /docs, /openapi.json and /usage on the admin server only', async ({
    gateway: g,
  }) => {
    for (const url of ['/metrics', '/docs', '/openapi.json', '/usage', '/usage/checkout-service']) {
      const api = await g.app.inject({ method: 'GET', url });
      expect(api.statusCode, url).toBe(404);
      expect(api.json().error.code).toBe('no_api');
      const admin = await g.admin.inject({ method: 'GET', url });
      expect([200, 302], url).toContain(admin.statusCode);
    }
    expect(g.admin).not.toBe(g.app);
    // And the API routes are not on the admin server.
    const captcha = await g.admin.inject({ method: 'POST', url: RECOGNITION, payload: '{}' });
    expect(captcha.statusCode).toBe(404);
    expect(g.fake.callCount()).toBe(0);
  });
});
