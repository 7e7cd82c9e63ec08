import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { type UpstreamCall, UpstreamClient, type UpstreamReply } from '../src/upstream/client.ts';
import {
  authHeaders,
  CLIENT_KEY,
  PNG_1X1,
  startGateway,
  type TestGateway,
  testRegistry,
  validBody,
} from './helpers.ts';

/**
 * Every error the gateway produces on its own: exact status and code, the envelope with the
 * request's trace id, and nothing forwarded upstream.
 */
const RECOGNITION = '/captcha/recognition/hcaptcha';

let gw: TestGateway;
beforeAll(async () => {
  gw = await startGateway();
});
afterAll(async () => {
  await gw.close();
});

async function expectRejected(
  request: {
    method?: 'GET' | 'POST' | 'PUT';
    url?: string;
    headers?: Record<string, string>;
    payload?: string;
  },
  status: number,
  code: string,
  messagePattern?: RegExp,
) {
  const before = gw.fake.callCount();
  const res = await gw.app.inject({
    method: request.method ?? 'POST',
    url: request.url ?? RECOGNITION,
    headers: request.headers ?? authHeaders(),
    payload: request.payload,
  });
  expect(res.statusCode).toBe(status);
  const body = res.json();
  expect(body).toEqual({
    success: false,
    error: { code, message: expect.any(String) },
    trace_id: res.headers['x-request-id'],
  });
  if (messagePattern) expect(body.error.message).toMatch(messagePattern);
  expect(gw.fake.callCount()).toBe(before);
  return res;
}

const json = (value: unknown) => JSON.stringify(value);
const b64 = (text: string) => Buffer.from(text, 'latin1').toString('base64');

describe('400 bad_request: invalid JSON or a body that fails validation', () => {
  it.each([
    ['truncated JSON', '{"question":'],
    ['an empty body', ''],
    ['a __proto__ key', '{"question":"q","queries":["x"],"__proto__":{"polluted":true}}'],
    ['a constructor.prototype key', '{"constructor":{"prototype":{"polluted":true}}}'],
  ])('rejects %s', async (_why, payload) => {
    await expectRejected({ payload }, 400, 'bad_request');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it.each([
    ['a JSON array', [validBody()], /body/],
    ['JSON null', null, /body/],
    ['a JSON string', 'hello', /body/],
    ['a missing question', { queries: [PNG_1X1] }, /body\.question/],
    ['a non-string question', validBody({ question: 42 }), /body\.question/],
    ['an empty question', validBody({ question: '' }), /body\.question: must not be empty/],
    [
      'a whitespace-only question',
      validBody({ question: ' \t\n ' }),
      /body\.question: must not be empty/,
    ],
    [
      'a 501-character question',
      validBody({ question: 'q'.repeat(501) }),
      /body\.question: must be at most 500/,
    ],
    ['missing queries', { question: 'q' }, /body\.queries/],
    ['queries that are a string', validBody({ queries: PNG_1X1 }), /body\.queries/],
    ['an empty queries array', validBody({ queries: [] }), /body\.queries: must hold at least 1/],
    [
      '19 queries',
      validBody({ queries: Array(19).fill(PNG_1X1) }),
      /body\.queries: must hold at most 18/,
    ],
    ['a non-string query', validBody({ queries: [123] }), /body\.queries\[0\]/],
    ['an empty query', validBody({ queries: [''] }), /body\.queries\[0\]: must not be empty/],
    [
      'a query that is only a data: prefix',
      validBody({ queries: ['data:image/png;base64,'] }),
      /queries\[0\]/,
    ],
    [
      'invalid Base64',
      validBody({ queries: ['!!!not base64!!!'] }),
      /queries\[0\]: must be valid Base64/,
    ],
    [
      'Base64 with bad padding',
      validBody({ queries: ['iVBO=w0K'] }),
      /queries\[0\]: must be valid Base64/,
    ],
    [
      'URL-safe Base64',
      validBody({ queries: [`${PNG_1X1.slice(0, 8)}-_${PNG_1X1.slice(10)}`] }),
      /Base64/,
    ],
    [
      'an impossible Base64 length',
      validBody({ queries: ['iVBORw0KG'] }),
      /queries\[0\]: must be valid Base64/,
    ],
    [
      'bytes that are not an image',
      validBody({ queries: [b64('hello world, not an image')] }),
      /PNG, JPEG, GIF or WebP/,
    ],
    [
      'a truncated PNG signature',
      validBody({ queries: [b64('\x89PNG')] }),
      /PNG, JPEG, GIF or WebP/,
    ],
    ['a bad second query', validBody({ queries: [PNG_1X1, b64('text')] }), /body\.queries\[1\]/],
    ['a non-boolean async', validBody({ async: 'yes' }), /body\.async: must be a boolean/],
  ])('rejects %s', async (_why, payload, message) => {
    await expectRejected({ payload: json(payload) }, 400, 'bad_request', message);
  });

  it('never echoes image data in the message', async () => {
    const notImage = b64('this is secret text that is not an image at all');
    const res = await expectRejected(
      { payload: json(validBody({ queries: [notImage] })) },
      400,
      'bad_request',
    );
    expect(res.body).not.toContain(notImage);
  });

  it.each([
    ['a missing task_id', {}, /body\.task_id/],
    ['an empty task_id', { task_id: '' }, /body\.task_id: must not be empty/],
    ['a numeric task_id', { task_id: 7 }, /body\.task_id/],
  ])('rejects a task poll with %s', async (_why, payload, message) => {
    await expectRejected(
      { url: '/captcha/tasks', payload: json(payload) },
      400,
      'bad_request',
      message,
    );
  });
});

describe('401 invalid_token: missing or unknown client key', () => {
  it.each([
    ['no authorization header', { 'content-type': 'application/json' }],
    ['an unknown key', authHeaders('agw_unknown_key_that_is_not_registered_anywhere')],
    [
      'a Basic scheme',
      { 'content-type': 'application/json', authorization: `Basic ${CLIENT_KEY}` },
    ],
    ['an empty bearer', { 'content-type': 'application/json', authorization: 'Bearer ' }],
    ["the upstream's token", authHeaders('test-upstream-token')],
  ])('rejects %s', async (_why, headers) => {
    const res = await expectRejected({ headers, payload: json(validBody()) }, 401, 'invalid_token');
    expect(res.body).not.toContain(CLIENT_KEY);
  });

  it('checks the key before reading the body', async () => {
    await expectRejected(
      { headers: { 'content-type': 'text/plain' }, payload: 'x' },
      401,
      'invalid_token',
    );
  });

  it('protects the tasks route too', async () => {
    await expectRejected(
      { url: '/captcha/tasks', headers: {}, payload: json({ task_id: 't' }) },
      401,
      'invalid_token',
    );
  });
});

describe('404 no_api: unknown route', () => {
  it.each([
    ['with a key', authHeaders()],
    ['without a key', {}],
  ])('answers an unknown path %s', async (_why, headers) => {
    await expectRejected(
      { url: '/captcha/recognition/recaptcha', headers, payload: '{}' },
      404,
      'no_api',
    );
  });

  it('answers a wrong method on a known path', async () => {
    await expectRejected(
      { method: 'GET', url: RECOGNITION },
      404,
      'no_api',
      /GET \/captcha\/recognition\/hcaptcha/,
    );
  });
});

describe('413 request_too_large and 415 unsupported_media_type', () => {
  it('rejects a body over BODY_LIMIT_BYTES', async () => {
    const big = json(
      validBody({ queries: [PNG_1X1], padding: 'x'.repeat(gw.config.BODY_LIMIT_BYTES) }),
    );
    await expectRejected({ payload: big }, 413, 'request_too_large');
  });

  it('rejects an image that decodes to more than 1 MiB', async () => {
    const png = Buffer.alloc(1024 * 1024 + 1);
    Buffer.from(PNG_1X1, 'base64').copy(png);
    await expectRejected(
      { payload: json(validBody({ queries: [png.toString('base64')] })) },
      400,
      'bad_request',
      /queries\[0\]: decodes to more than 1048576 bytes/,
    );
  });

  it.each([
    ['text/plain', 'text/plain'],
    ['form encoding', 'application/x-www-form-urlencoded'],
    ['a JSON look-alike', 'application/jsonx'],
  ])('rejects %s', async (_why, contentType) => {
    await expectRejected(
      { headers: { ...authHeaders(), 'content-type': contentType }, payload: json(validBody()) },
      415,
      'unsupported_media_type',
    );
  });

  it('accepts application/json with a charset', async () => {
    const res = await gw.app.inject({
      method: 'POST',
      url: RECOGNITION,
      headers: { ...authHeaders(), 'content-type': 'application/json; charset=utf-8' },
      payload: json(validBody()),
    });
    expect(res.statusCode).toBe(200);
  });
});

describe('500 api_error: a bug', () => {
  it('answers a generic message and logs the details', async () => {
    class BrokenUpstream extends UpstreamClient {
      override async call(_call: UpstreamCall): Promise<UpstreamReply> {
        throw new TypeError('secret internal detail');
      }
    }
    const lines: string[] = [];
    const config = loadConfig({ ACEDATA_API_TOKEN: 't', ACEDATA_BASE_URL: 'http://127.0.0.1:9' });
    const app = await buildApp(config, {
      clients: testRegistry(),
      upstream: new BrokenUpstream({
        baseUrl: 'http://127.0.0.1:9',
        tokens: ['t'],
        timeoutMs: 1000,
      }),
      logDestination: { write: (line: string) => lines.push(line) },
    });
    const res = await app.inject({
      method: 'POST',
      url: RECOGNITION,
      headers: authHeaders(),
      payload: json(validBody()),
    });
    await app.close();
    expect(res.statusCode).toBe(500);
    expect(res.json()).toEqual({
      success: false,
      error: { code: 'api_error', message: expect.not.stringContaining('secret internal detail') },
      trace_id: res.headers['x-request-id'],
    });
    expect(lines.join('\n')).toContain('secret internal detail');
  });
});
