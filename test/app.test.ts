import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  authHeaders,
  CLIENT_KEY,
  GIF_HEADER,
  JPEG_HEADER,
  PNG_1X1,
  startGateway,
  type TestGateway,
  UPSTREAM_TOKEN,
  validBody,
  WEBP_HEADER,
} from './helpers.ts';

const RECOGNITION = '/captcha/recognition/hcaptcha';

let gw: TestGateway;
beforeAll(async () => {
  // Caching off: these tests check forwarding, so identical bodies must reach the upstream.
  gw = await startGateway({
    UPSTREAM_TIMEOUT_MS: '1500',
    BODY_LIMIT_BYTES: '65536',
    CACHE_TTL_SECONDS: '0',
  });
});
afterAll(async () => {
  await gw.close();
});
afterEach(() => {
  gw.fake.reset();
});

const post = (
  payload: unknown,
  headers: Record<string, string> = authHeaders(),
  url = RECOGNITION,
) =>
  gw.app.inject({
    method: 'POST',
    url,
    headers,
    payload: typeof payload === 'string' ? payload : JSON.stringify(payload),
  });

describe('forwarding', () => {
  it("passes the upstream's status and body through byte for byte, with the gateway's token", async () => {
    const res = await post(validBody());
    expect(res.statusCode).toBe(200);
    expect(gw.fake.callCount()).toBe(1);
    const call = gw.fake.calls[0];
    expect(call?.token).toBe(UPSTREAM_TOKEN);
    expect(JSON.stringify(call?.headers)).not.toContain(CLIENT_KEY);
    // Same input to the fake directly gives the same deterministic bytes.
    const direct = await fetch(`${gw.fake.url}${RECOGNITION}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${UPSTREAM_TOKEN}`, 'content-type': 'application/json' },
      body: call?.rawBody,
    });
    expect(res.rawPayload.equals(Buffer.from(await direct.arrayBuffer()))).toBe(true);
    expect(res.json()).toMatchObject({ solution: { box: ['360', '276'] } });
  });

  it('strips a data: prefix and line wrapping, and forwards unknown fields unchanged', async () => {
    const wrapped = `data:image/png;base64,${PNG_1X1.slice(0, 20)}\r\n${PNG_1X1.slice(20)}`;
    const res = await post(
      validBody({ queries: [wrapped], website: 'example.test', extra: { a: [1, 2] } }),
    );
    expect(res.statusCode).toBe(200);
    expect(gw.fake.calls[0]?.body).toEqual({
      question: 'Please click each image containing a bus',
      queries: [PNG_1X1],
      website: 'example.test',
      extra: { a: [1, 2] },
    });
  });

  it('accepts PNG, JPEG, GIF and WebP images', async () => {
    const res = await post(validBody({ queries: [PNG_1X1, JPEG_HEADER, GIF_HEADER, WEBP_HEADER] }));
    expect(res.statusCode).toBe(200);
    expect(gw.fake.callCount()).toBe(1);
  });

  it('forwards async submissions and task polls', async () => {
    const submitted = await post(validBody({ async: true }));
    expect(submitted.statusCode).toBe(200);
    const taskId = submitted.json().task_id as string;
    expect(taskId).toEqual(expect.any(String));
    const polled = await post({ task_id: taskId }, authHeaders(), '/captcha/tasks');
    expect(polled.statusCode).toBe(200);
    expect(polled.json()).toMatchObject({ task_id: taskId, status: 'ready' });
    expect(gw.fake.calls.map((c) => c.path)).toEqual([RECOGNITION, '/captcha/tasks']);
  });

  it('honours a well-formed x-request-id, echoes it and forwards it', async () => {
    const res = await post(validBody(), { ...authHeaders(), 'x-request-id': 'job-42:attempt.1' });
    expect(res.headers['x-request-id']).toBe('job-42:attempt.1');
    expect(gw.fake.calls[0]?.headers['x-request-id']).toBe('job-42:attempt.1');
  });

  it.each([
    ['has a space', 'bad id'],
    ['is too long', 'a'.repeat(129)],
    ['has a CR/LF', 'a\rb'],
  ])('replaces an x-request-id that %s with a generated one', async (_why, incoming) => {
    const res = await post(validBody(), { ...authHeaders(), 'x-request-id': incoming });
    const traceId = res.headers['x-request-id'];
    expect(traceId).toMatch(/^[0-9a-f-]{36}$/);
    expect(gw.fake.calls[0]?.headers['x-request-id']).toBe(traceId);
  });
});

describe('upstream errors', () => {
  it('passes an upstream 400 through with its status and body', async () => {
    gw.fake.enqueueFaults({
      kind: 'status',
      status: 400,
      code: 'bad_request',
      message: 'bad image',
    });
    const res = await post(validBody());
    expect(res.statusCode).toBe(400);
    expect(res.json()).toMatchObject({
      success: false,
      error: { code: 'bad_request', message: 'bad image' },
    });
    expect(res.json().trace_id).not.toBe(res.headers['x-request-id']);
  });

  it('passes a plain-string upstream error through as it is', async () => {
    gw.fake.enqueueFaults({ kind: 'status', status: 404, message: 'nope', plainError: true });
    const res = await post(validBody());
    expect(res.statusCode).toBe(404);
    expect(res.json().error).toBe('nope');
  });

  it.each([401, 403])(
    "maps upstream %i about the gateway's token to 502 upstream_error and logs it",
    async (status) => {
      gw.fake.enqueueFaults({ kind: 'status', status });
      const res = await post(validBody());
      expect(res.statusCode).toBe(502);
      expect(res.json()).toEqual({
        success: false,
        error: {
          code: 'upstream_error',
          message: "the gateway's upstream credentials were rejected",
        },
        trace_id: res.headers['x-request-id'],
      });
      const errorLines = gw
        .logs()
        .filter((l) => l.level === 50 && l.trace_id === res.headers['x-request-id']);
      expect(errorLines).toHaveLength(1);
    },
  );

  it('maps an upstream 429 to 503 upstream_unavailable with retry-after', async () => {
    gw.fake.setDefaultFault({ kind: 'status', status: 429, retryAfter: '7' });
    const res = await post(validBody());
    gw.fake.setDefaultFault(undefined);
    expect(res.statusCode).toBe(503);
    expect(res.json().error.code).toBe('upstream_unavailable');
    expect(res.headers['retry-after']).toBe('7');
  });

  it.each([
    ['a non-JSON body', { kind: 'garbage' } as const],
    ['a 200 without solution', { kind: 'malformed' } as const],
    ['a connection reset', { kind: 'reset' } as const],
  ])('answers 502 upstream_error for %s', async (_why, fault) => {
    gw.fake.setDefaultFault(fault);
    const res = await post(validBody());
    gw.fake.setDefaultFault(undefined);
    expect(res.statusCode).toBe(502);
    expect(res.json()).toMatchObject({ success: false, error: { code: 'upstream_error' } });
    expect(res.json().trace_id).toBe(res.headers['x-request-id']);
  });

  it('answers 502 upstream_error when the upstream cannot be reached', async () => {
    const closed = await startGateway({ UPSTREAM_TIMEOUT_MS: '1500' });
    await closed.fake.close();
    const res = await closed.app.inject({
      method: 'POST',
      url: RECOGNITION,
      headers: authHeaders(),
      payload: JSON.stringify(validBody()),
    });
    await closed.app.close();
    expect(res.statusCode).toBe(502);
    expect(res.json()).toMatchObject({
      error: { code: 'upstream_error', message: 'upstream could not be reached' },
    });
  });

  it('answers 502 for an async submission without task_id', async () => {
    gw.fake.enqueueFaults({ kind: 'malformed' });
    const res = await post(validBody({ async: true }));
    expect(res.statusCode).toBe(502);
    expect(res.json().error.code).toBe('upstream_error');
  });

  it('answers 504 timeout when the upstream hangs past UPSTREAM_TIMEOUT_MS', async () => {
    gw.fake.enqueueFaults({ kind: 'hang' });
    const res = await post(validBody());
    expect(res.statusCode).toBe(504);
    expect(res.json()).toMatchObject({ success: false, error: { code: 'timeout' } });
  });
});

describe('health routes', () => {
  it('answers /healthz and /readyz without a client key', async () => {
    const live = await gw.app.inject({ method: 'GET', url: '/healthz' });
    expect(live.statusCode).toBe(200);
    expect(live.json()).toEqual({ status: 'ok' });
    const ready = await gw.app.inject({ method: 'GET', url: '/readyz' });
    expect(ready.statusCode).toBe(200);
    expect(ready.json()).toEqual({ status: 'ready', failed: {} });
    expect(gw.fake.callCount()).toBe(0);
  });
});
