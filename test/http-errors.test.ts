// Errors that never reach a route: Node's HTTP parser (400, 408, 431), URLs Fastify cannot decode,
// unknown routes, and 4xx raised by a plugin (static files on the admin server). Each keeps its
// status, answers with the envelope built by GatewayError.envelope, and writes one completion line
// with its error_code at info level: a client error, never an error-level line or a stack.
import { connect } from 'node:net';
import { afterEach, describe, expect, vi } from 'vitest';
import { GatewayError } from '../src/errors.ts';
import {
  authHeaders,
  EVENT_BOUND,
  gatewayTest,
  listenLocally,
  PNG_1X1,
  postJson,
  type RawResponse,
  RECOGNITION,
  rawConnection,
  type TestGateway,
  validBody,
  within,
} from './helpers.ts';

const BOUND_MS = 20_000;

/** Sends raw bytes to `port` and resolves with the first response. */
async function exchange(port: number, request: string): Promise<RawResponse> {
  return within(rawConnection(port, request).response, BOUND_MS, 'the answer');
}

async function adminPort(g: TestGateway): Promise<number> {
  await g.admin.listen({ host: '127.0.0.1', port: 0 });
  const address = g.admin.server.address();
  if (typeof address !== 'object' || address === null) throw new Error('admin not listening');
  return address.port;
}

const completion = (g: TestGateway, traceId: unknown) =>
  g.logs().filter((line) => line.msg === 'request completed' && line.trace_id === traceId);

/** The envelope, one info-level completion line with the code, and no error-level line at all. */
function expectClientError(g: TestGateway, res: RawResponse, status: number, code: string) {
  expect(res.status).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/json/);
  const body = JSON.parse(res.body);
  expect(body).toStrictEqual({
    success: false,
    error: { code, message: expect.any(String) },
    trace_id: res.headers['x-request-id'],
  });
  expect(completion(g, body.trace_id)).toMatchObject([{ level: 30, status, error_code: code }]);
  expect(g.logs().filter((line) => (line.level as number) >= 50)).toEqual([]);
  expect(g.logLines.join('\n')).not.toMatch(/"stack"/);
  return body as { error: { code: string; message: string }; trace_id: string };
}

afterEach(() => {
  vi.restoreAllMocks();
});

describe("Node's HTTP parser: answered with the envelope and logged as the client's error", () => {
  gatewayTest.override('gatewaySettings', { env: { REQUEST_TIMEOUT_MS: '1000' } });

  gatewayTest('a malformed request: 400 bad_request, connection: close', async ({ gateway }) => {
    const envelope = vi.spyOn(GatewayError.prototype, 'envelope');
    const port = await listenLocally(gateway);
    const res = await exchange(
      port,
      'GET /healthz HTTP/1.1\r\nhost: x\r\nx-bad\x01header: 1\r\n\r\n',
    );
    const body = expectClientError(gateway, res, 400, 'bad_request');
    expect(body.error.message).toBe('malformed HTTP request');
    expect(res.headers.connection).toBe('close');
    expect(envelope).toHaveBeenCalledTimes(1);
  });

  gatewayTest.for([
    ['two content-lengths', 'content-length: 2\r\ncontent-length: 3\r\n'],
    ['content-length and chunked', 'content-length: 2\r\ntransfer-encoding: chunked\r\n'],
  ] as const)(
    'a request smuggling shape (%s): 400 bad_request',
    async ([, headers], { gateway }) => {
      const port = await listenLocally(gateway);
      const res = await exchange(
        port,
        `POST ${RECOGNITION} HTTP/1.1\r\nhost: x\r\n${headers}\r\n{}`,
      );
      expectClientError(gateway, res, 400, 'bad_request');
      expect(gateway.fake.callCount()).toBe(0);
    },
  );

  gatewayTest(
    'headers over the size limit: 431, from the headers_too_large row',
    async ({ gateway }) => {
      const envelope = vi.spyOn(GatewayError.prototype, 'envelope');
      const port = await listenLocally(gateway);
      const res = await exchange(
        port,
        `GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`,
      );
      const body = expectClientError(gateway, res, 431, 'request_too_large');
      expect(body.error.message).toBe('request headers exceed the size limit');
      expect(res.headers.connection).toBe('close');
      expect(completion(gateway, body.trace_id)).toMatchObject([
        { client_error: 'HPE_HEADER_OVERFLOW' },
      ]);
      expect(envelope).toHaveBeenCalledTimes(1);
    },
  );

  gatewayTest(
    'a body sent too slowly: 408 request_timeout, as that request, while others are served',
    async ({ gateway }) => {
      const envelope = vi.spyOn(GatewayError.prototype, 'envelope');
      const port = await listenLocally(gateway);
      const payload = JSON.stringify(validBody());
      const headers = Object.entries({ ...authHeaders(), 'content-length': String(payload.length) })
        .map(([name, value]) => `${name}: ${value}\r\n`)
        .join('');
      const slow = rawConnection(
        port,
        `POST ${RECOGNITION} HTTP/1.1\r\nhost: x\r\nx-request-id: slow-1\r\n${headers}\r\n{"quest`,
      );
      expect((await postJson(gateway, {})).statusCode).toBe(200);
      const res = await within(slow.response, BOUND_MS, 'the 408');
      const body = expectClientError(gateway, res, 408, 'request_timeout');
      expect(body.trace_id).toBe('slow-1');
      expect(body.error.message).toBe(
        'the request was not received in full within the request timeout',
      );
      expect(completion(gateway, 'slow-1')).toMatchObject([
        { route: RECOGNITION, client_error: 'ERR_HTTP_REQUEST_TIMEOUT' },
      ]);
      expect(gateway.fake.callCount()).toBe(1);
      expect(envelope).toHaveBeenCalledTimes(1);
    },
  );
});

describe('before routing', () => {
  gatewayTest(
    'a URL Fastify cannot decode: 400, one completion line, one count',
    async ({ gateway }) => {
      const envelope = vi.spyOn(GatewayError.prototype, 'envelope');
      const res = await gateway.app.inject({ method: 'GET', url: '/%zz' });
      expect(res.statusCode).toBe(400);
      expect(res.json()).toStrictEqual({
        success: false,
        error: { code: 'bad_request', message: 'the request URL is malformed' },
        trace_id: res.headers['x-request-id'],
      });
      expect(completion(gateway, res.headers['x-request-id'])).toMatchObject([
        { level: 30, status: 400, route: 'unmatched', error_code: 'bad_request' },
      ]);
      expect(envelope).toHaveBeenCalledTimes(1);
      const metrics = (await gateway.admin.inject({ method: 'GET', url: '/metrics' })).body;
      expect(metrics).toContain(
        'gateway_requests_total{route="unmatched",status="400",client="anonymous"} 1',
      );
    },
  );

  gatewayTest.for([
    ['a malformed JSON body', 'application/json', '{'],
    ['a text body', 'text/plain', 'hello'],
    ['an empty JSON body', 'application/json', ''],
  ] as const)(
    'an unknown route answers 404 no_api before reading %s',
    async ([, contentType, payload], { gateway }) => {
      const res = await gateway.app.inject({
        method: 'POST',
        url: '/captcha/recognition/nothing',
        headers: { 'content-type': contentType },
        payload,
      });
      expect(res.statusCode).toBe(404);
      expect(res.json()).toMatchObject({
        error: { code: 'no_api' },
        trace_id: res.headers['x-request-id'],
      });
      expect(completion(gateway, res.headers['x-request-id'])).toMatchObject([
        { error_code: 'no_api' },
      ]);
    },
  );

  gatewayTest(
    'a POST without content-length or body (411 elsewhere) is an empty body: 400',
    async ({ gateway }) => {
      const port = await listenLocally(gateway);
      const headers = Object.entries(authHeaders())
        .map(([name, value]) => `${name}: ${value}\r\n`)
        .join('');
      const res = await exchange(
        port,
        `POST ${RECOGNITION} HTTP/1.1\r\nhost: x\r\n${headers}connection: close\r\n\r\n`,
      );
      const body = expectClientError(gateway, res, 400, 'bad_request');
      expect(body.error.message).toBe('request body is empty; expected a JSON object');
    },
  );

  gatewayTest(
    'an accept header the gateway cannot honour is not refused (no 406): JSON comes back',
    async ({ gateway }) => {
      const res = await postJson(gateway, { headers: { accept: 'text/html' } });
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toMatch(/^application\/json/);
    },
  );
});

describe('4xx raised by a plugin keep their status (the admin server’s static files)', () => {
  gatewayTest(
    'GET /docs/static/../../../../etc/passwd: 403 forbidden, a client error',
    async ({ gateway }) => {
      const envelope = vi.spyOn(GatewayError.prototype, 'envelope');
      const port = await adminPort(gateway);
      for (const path of [
        '/docs/static/../../../../etc/passwd',
        '/docs/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd',
      ]) {
        const res = await exchange(
          port,
          `GET ${path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n`,
        );
        const body = expectClientError(gateway, res, 403, 'forbidden');
        expect(body.error.message).toBe('access to this path is not allowed');
        expect(res.body).not.toContain('root:');
      }
      expect(envelope).toHaveBeenCalledTimes(2);
    },
  );

  gatewayTest.for([
    ['a range that cannot be satisfied', { range: 'bytes=999999999-' }, 416],
    ['a precondition that fails', { 'if-match': '"no-such-etag"' }, 412],
  ] as const)(
    '%s on a static file: its status, with the envelope',
    async ([, headers, status], { gateway }) => {
      const res = await gateway.admin.inject({
        method: 'GET',
        url: '/docs/static/swagger-ui.css',
        headers,
      });
      expect(res.statusCode).toBe(status);
      expect(res.json()).toStrictEqual({
        success: false,
        error: { code: 'bad_request', message: `the request was refused (HTTP ${status})` },
        trace_id: res.headers['x-request-id'],
      });
      expect(completion(gateway, res.headers['x-request-id'])).toMatchObject([
        { level: 30, status, error_code: 'bad_request' },
      ]);
    },
  );

  gatewayTest(
    'a wrong method on an admin path (405 elsewhere) is 404 no_api',
    async ({ gateway }) => {
      const res = await gateway.admin.inject({ method: 'POST', url: '/metrics', payload: {} });
      expect(res.statusCode).toBe(404);
      expect(res.json()).toMatchObject({
        error: { code: 'no_api', message: 'no route for POST /metrics' },
      });
    },
  );

  // The static handler's reply.callNotFound() reaches the gateway's not-found handler.
  gatewayTest.for([
    ['a missing static file', '/docs/static/no-such-file.js'],
    ['an encoded-slash traversal', '/docs/static/..%2f..%2f..%2fetc%2fpasswd'],
  ] as const)('%s: 404 with the envelope, a client error', async ([, url], { gateway }) => {
    const res = await gateway.admin.inject({ method: 'GET', url });
    expect(res.statusCode).toBe(404);
    expect(res.json()).toStrictEqual({
      success: false,
      error: { code: 'no_api', message: expect.any(String) },
      trace_id: res.headers['x-request-id'],
    });
    expect(res.body).not.toContain('root:');
    expect(completion(gateway, res.headers['x-request-id'])).toMatchObject([
      { level: 30, status: 404, error_code: 'no_api' },
    ]);
  });
});

describe('the completion line names the error code of every error answer', () => {
  gatewayTest.override('gatewaySettings', {
    limits: { rateLimit: { max: 1, windowSeconds: 3600 } },
  });

  gatewayTest("the gateway's own 429, with the limit that refused it", async ({ gateway }) => {
    expect((await postJson(gateway, {})).statusCode).toBe(200);
    const res = await postJson(gateway, {});
    expect(res.statusCode).toBe(429);
    expect(completion(gateway, res.headers['x-request-id'])).toMatchObject([
      { status: 429, error_code: 'too_many_requests', limit: 'rate_limit' },
    ]);
  });
});

describe("the upstream's error codes, passed through", () => {
  gatewayTest.for([
    [403, 'forbidden'],
    [400, 'bad_request'],
    [404, 'no_api'],
  ] as const)(
    'upstream %i %s: the same code on the completion line',
    async ([status, code], { gateway }) => {
      gateway.fake.enqueueFaults({ kind: 'status', status, code });
      const res = await postJson(gateway, {
        body: { queries: [PNG_1X1], question: `upstream ${code}` },
      });
      expect(res.statusCode).toBe(status);
      expect(res.json().error.code).toBe(code);
      expect(completion(gateway, res.headers['x-request-id'])).toMatchObject([
        { level: 30, status, error_code: code },
      ]);
    },
  );
});

describe('a client that leaves before its answer', () => {
  gatewayTest(
    'gets exactly one completion line (499) and one count, and its paid answer is still cached',
    async ({ gateway }) => {
      const port = await listenLocally(gateway);
      gateway.fake.setLatency(300);
      const payload = JSON.stringify(validBody({ question: 'the client will leave' }));
      const headers = Object.entries({ ...authHeaders(), 'content-length': String(payload.length) })
        .map(([name, value]) => `${name}: ${value}\r\n`)
        .join('');
      const socket = connect(port, '127.0.0.1');
      socket.write(`POST ${RECOGNITION} HTTP/1.1\r\nhost: x\r\n${headers}\r\n${payload}`);
      await within(gateway.fake.waitForCalls(1), BOUND_MS, 'the upstream call');
      socket.destroy();
      await expect
        .poll(() => gateway.logs().filter((l) => l.status === 499).length, EVENT_BOUND)
        .toBe(1);
      // The upstream answer arrives after the client left: it is stored, and logs no second line.
      const metricsText = async () =>
        (await gateway.admin.inject({ method: 'GET', url: '/metrics' })).body;
      await expect
        .poll(metricsText, EVENT_BOUND)
        .toContain('gateway_upstream_requests_total{status="200"} 1');
      gateway.fake.setLatency(0);
      const leaver = gateway.logs().filter((l) => l.status === 499);
      expect(leaver).toHaveLength(1);
      expect(completion(gateway, leaver[0]?.trace_id)).toHaveLength(1);
      const repeat = await postJson(gateway, { payload });
      expect(repeat.headers['cache-status']).toBe('acedata-gateway; hit');
      expect(await metricsText()).toContain(
        `gateway_requests_total{route="${RECOGNITION}",status="499",client="checkout-service"} 1`,
      );
    },
  );
});
