// What the gateway refuses on its own: only what is certainly malformed, each with its exact
// status, code and message (naming the field, never echoing a value), the envelope with the
// request's trace id, the code on the completion line, and nothing forwarded upstream.
import { describe, expect } from 'vitest';
import {
  authHeaders,
  CLIENT_KEY,
  gatewayTest,
  PNG_1X1,
  RECOGNITION,
  TASKS,
  type TestGateway,
  TOKEN,
  UPSTREAM_TOKEN,
} from './helpers.ts';

/** A value that must never come back in an error: every refused body below carries it. */
const CANARY = 'canary-5f0c2e';
const FORMATS = 'PNG, JPEG, GIF, WebP or BMP';
const b64 = (text: string) => Buffer.from(text, 'latin1').toString('base64');
const NOT_AN_IMAGE = b64(`plain text that is not an image ${CANARY}`);

interface Refusal {
  url?: string;
  method?: 'GET' | 'POST' | 'PUT' | 'DELETE';
  headers?: Record<string, string>;
  payload?: string | Buffer;
}

async function expectRefused(
  g: TestGateway,
  request: Refusal,
  status: number,
  code: string,
  message: string | RegExp,
) {
  const res = await g.app.inject({
    method: request.method ?? 'POST',
    url: request.url ?? RECOGNITION,
    headers: request.headers ?? authHeaders(),
    ...(request.payload === undefined ? {} : { payload: request.payload }),
  });
  expect(res.statusCode).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/json/);
  const body = res.json();
  expect(body).toStrictEqual({
    success: false,
    error: { code, message: expect.any(String) },
    trace_id: res.headers['x-request-id'],
  });
  if (typeof message === 'string') expect(body.error.message).toBe(message);
  else expect(body.error.message).toMatch(message);
  expect(res.body).not.toContain(CANARY);
  expect(res.body).not.toContain(NOT_AN_IMAGE.slice(0, 16));
  expect(g.fake.callCount()).toBe(0);
  const line = g.logs().find((l) => l.msg === 'request completed' && l.trace_id === body.trace_id);
  expect(line).toMatchObject({ status, error_code: code });
  return res;
}

/** A recognition body with a value that must not be echoed, as JSON text. */
const recognition = (fields: Record<string, unknown>) =>
  JSON.stringify({ note: CANARY, queries: [PNG_1X1], ...fields });
const withCanary = (text: string) => text.replace(/^\{/, `{"note":"${CANARY}",`);

describe('400 bad_request: the body is not a JSON object', () => {
  gatewayTest.for([
    ['an array', `[{"note":"${CANARY}","queries":["${PNG_1X1}"]}]`],
    ['a string', `"${CANARY}"`],
    ['a number', '42'],
    ['null', 'null'],
    ['true', 'true'],
  ] as const)('%s', async ([, payload], { gateway }) => {
    await expectRefused(
      gateway,
      { payload },
      400,
      'bad_request',
      'request body must be a JSON object',
    );
  });

  gatewayTest.for([
    ['truncated', `{"note":"${CANARY}","queries":`],
    ['a trailing comma', `{"note":"${CANARY}",}`],
    ['single quotes', `{'note':'${CANARY}'}`],
    ['only whitespace', '  \r\n '],
    ['two objects', `{"note":"${CANARY}"} {}`],
  ] as const)('invalid JSON: %s', async ([, payload], { gateway }) => {
    await expectRefused(gateway, { payload }, 400, 'bad_request', 'request body is not valid JSON');
  });

  gatewayTest(
    'invalid UTF-8 (not decoded with replacement characters and forwarded)',
    async ({ gateway }) => {
      const payload = Buffer.from(recognition({ question: 'QQ bus' }));
      payload[payload.indexOf('QQ')] = 0xff;
      await expectRefused(
        gateway,
        { payload },
        400,
        'bad_request',
        'request body is not valid UTF-8',
      );
    },
  );

  gatewayTest('an empty body', async ({ gateway }) => {
    await expectRefused(
      gateway,
      { payload: '' },
      400,
      'bad_request',
      'request body is empty; expected a JSON object',
    );
  });

  gatewayTest('no body and no content-type', async ({ gateway }) => {
    await expectRefused(
      gateway,
      { headers: { authorization: `Bearer ${CLIENT_KEY}` } },
      400,
      'bad_request',
      'request body is empty; expected a JSON object',
    );
  });
});

describe('400 bad_request: keys the upstream might read differently', () => {
  gatewayTest.for([
    [
      'at the top level',
      withCanary(`{"queries":["${PNG_1X1}"],"question":"a","question":"b"}`),
      'question',
    ],
    ['nested', withCanary(`{"queries":["${PNG_1X1}"],"x":{"k":1,"k":2}}`), 'k'],
    [
      'spelled two ways',
      withCanary(`{"queries":["${PNG_1X1}"],"\\u0071uestion":"a","question":"b"}`),
      'question',
    ],
  ] as const)('a duplicate key %s', async ([, payload, key], { gateway }) => {
    await expectRefused(
      gateway,
      { payload },
      400,
      'bad_request',
      `request body holds the key "${key}" twice`,
    );
  });

  gatewayTest.for([
    ['at the top level', withCanary(`{"queries":["${PNG_1X1}"],"__proto__":{"polluted":true}}`)],
    ['nested', withCanary(`{"queries":["${PNG_1X1}"],"x":[{"__proto__":{"polluted":true}}]}`)],
  ] as const)('a __proto__ key %s', async ([, payload], { gateway }) => {
    await expectRefused(
      gateway,
      { payload },
      400,
      'bad_request',
      'request body holds a "__proto__" key',
    );
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  gatewayTest('nesting deeper than 64 levels, on every route', async ({ gateway }) => {
    const deep = `${'['.repeat(64)}${']'.repeat(64)}`;
    const message = 'request body nests objects or arrays deeper than 64 levels';
    await expectRefused(
      gateway,
      { payload: recognition({}).replace(/\}$/, `,"x":${deep}}`) },
      400,
      'bad_request',
      message,
    );
    await expectRefused(
      gateway,
      { url: TASKS, payload: `{"task_id":"t","x":${deep}}` },
      400,
      'bad_request',
      message,
    );
    await expectRefused(
      gateway,
      {
        url: TOKEN,
        payload: `{"website_key":"k","website_url":"u","x":${'['.repeat(10_000)}${']'.repeat(10_000)}}`,
      },
      400,
      'bad_request',
      message,
    );
  });
});

describe('400 bad_request: recognition fields of the wrong JSON type', () => {
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['question is a number', { question: 42 }, 'body.question: must be a string'],
    ['question is null', { question: null }, 'body.question: must be a string'],
    ['question is an array', { question: [CANARY] }, 'body.question: must be a string'],
    ['async is a string', { async: 'true' }, 'body.async: must be a boolean'],
    ['async is a number', { async: 1 }, 'body.async: must be a boolean'],
    ['queries are missing', { queries: undefined }, 'body.queries: is required'],
    ['queries are a string', { queries: PNG_1X1 }, 'body.queries: must be an array of images'],
    [
      'queries are an object',
      { queries: { 0: PNG_1X1 } },
      'body.queries: must be an array of images',
    ],
    ['queries are null', { queries: null }, 'body.queries: must be an array of images'],
    ['queries are empty', { queries: [] }, 'body.queries: must hold at least 1 image'],
    ['a query is a number', { queries: [123] }, 'body.queries[0]: must be a string'],
    ['a query is null', { queries: [null] }, 'body.queries[0]: must be a string'],
    ['a query is an array', { queries: [[PNG_1X1]] }, 'body.queries[0]: must be a string'],
    ['a query is empty', { queries: [''] }, 'body.queries[0]: must not be empty'],
    ['the second query is bad', { queries: [PNG_1X1, 7] }, 'body.queries[1]: must be a string'],
  ];
  gatewayTest.for(cases)('%s', async ([, fields, message], { gateway }) => {
    await expectRefused(gateway, { payload: recognition(fields) }, 400, 'bad_request', message);
  });

  gatewayTest('several problems are named together', async ({ gateway }) => {
    await expectRefused(
      gateway,
      { payload: recognition({ question: 1, async: 'no' }) },
      400,
      'bad_request',
      'body.question: must be a string; body.async: must be a boolean',
    );
  });
});

describe('400 bad_request: images that are certainly malformed', () => {
  const notBase64 = `must be an http(s) URL or a Base64 ${FORMATS} image`;
  const cases: Array<[string, string, string]> = [
    ['characters outside both alphabets', `!!!${CANARY}!!!`, notBase64],
    ['a length Base64 cannot have', 'iVBORw0KG', notBase64],
    ["'=' in the middle", `${PNG_1X1.slice(0, 12)}=${PNG_1X1.slice(13)}`, notBase64],
    ['a data: prefix of another type', `data:text/plain;base64,${PNG_1X1}`, notBase64],
    ['only a data: prefix', 'data:image/png;base64,', notBase64],
    ['another URL scheme', `ftp://images.example/${CANARY}.png`, notBase64],
    ['bytes of no known image format', NOT_AN_IMAGE, `must be a ${FORMATS} image`],
    ['a truncated PNG signature', b64('\x89PNG\r\n\x1a'), `must be a ${FORMATS} image`],
    [
      'an http URL with a space in the host',
      `http://exa mple.com/${CANARY}.png`,
      'is not a valid http(s) URL',
    ],
    ['an https URL without a host', 'https://', 'is not a valid http(s) URL'],
    ['an unclosed IPv6 host', `http://[::1/${CANARY}.png`, 'is not a valid http(s) URL'],
    [
      'a URL of 2,049 characters',
      `https://images.example/${CANARY}/`.padEnd(2049, 'a'),
      'is a URL longer than 2048 characters',
    ],
  ];
  gatewayTest.for(cases)('%s', async ([, item, problem], { gateway }) => {
    await expectRefused(
      gateway,
      { payload: recognition({ queries: [PNG_1X1, item] }) },
      400,
      'bad_request',
      `body.queries[1]: ${problem}`,
    );
  });
});

describe('400 bad_request: the limits an operator sets', () => {
  describe('IMAGES_MAX=3, IMAGE_MAX_BYTES=1024', () => {
    gatewayTest.override('gatewaySettings', { env: { IMAGES_MAX: '3', IMAGE_MAX_BYTES: '1024' } });

    gatewayTest('one image too many', async ({ gateway }) => {
      await expectRefused(
        gateway,
        { payload: recognition({ queries: Array(4).fill(PNG_1X1) }) },
        400,
        'bad_request',
        'body.queries: must hold at most 3 images',
      );
    });

    gatewayTest('an image one byte over, in any spelling', async ({ gateway }) => {
      const png = Buffer.alloc(1025, 0x41);
      Buffer.from(PNG_1X1, 'base64').copy(png);
      for (const item of [
        png.toString('base64'),
        png.toString('base64url'),
        `data:image/png;base64,${png.toString('base64').replace(/.{76}/g, '$&\r\n')}`,
      ]) {
        await expectRefused(
          gateway,
          { payload: recognition({ queries: [PNG_1X1, item] }) },
          400,
          'bad_request',
          'body.queries[1]: decodes to more than 1024 bytes',
        );
      }
    });
  });

  describe('IMAGE_URLS=deny', () => {
    gatewayTest.override('gatewaySettings', { env: { IMAGE_URLS: 'deny' } });

    gatewayTest('an image URL', async ({ gateway }) => {
      await expectRefused(
        gateway,
        { payload: recognition({ queries: [PNG_1X1, `https://images.example/${CANARY}.png`] }) },
        400,
        'bad_request',
        'body.queries[1]: is an image URL; this gateway accepts Base64 images only',
      );
    });
  });
});

describe('400 bad_request: token fields', () => {
  const token = (fields: Record<string, unknown>) =>
    JSON.stringify({
      website_key: 'key',
      website_url: 'https://site.example',
      note: CANARY,
      ...fields,
    });
  const cases: Array<[string, Record<string, unknown>, string]> = [
    [
      'both required fields missing',
      { website_key: undefined, website_url: undefined },
      'body.website_key: is required; body.website_url: is required',
    ],
    ['website_key a number', { website_key: 1 }, 'body.website_key: must be a string'],
    ['website_key empty', { website_key: '' }, 'body.website_key: must not be empty'],
    [
      'website_url an object',
      { website_url: { href: CANARY } },
      'body.website_url: must be a string',
    ],
    ['rqdata a number', { rqdata: 1 }, 'body.rqdata: must be a string'],
    ['proxy an object', { proxy: { url: CANARY } }, 'body.proxy: must be a string'],
    ['async a string', { async: 'yes' }, 'body.async: must be a boolean'],
  ];
  gatewayTest.for(cases)('%s', async ([, fields, message], { gateway }) => {
    await expectRefused(
      gateway,
      { url: TOKEN, payload: token(fields) },
      400,
      'bad_request',
      message,
    );
  });
});

describe('400 bad_request: task polls', () => {
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['neither task_id nor id', { note: CANARY }, 'body.task_id: is required'],
    ['task_id a number', { task_id: 7 }, 'body.task_id: must be a string'],
    ['task_id empty', { task_id: '' }, 'body.task_id: must not be empty'],
    ['id a number', { id: 7, action: 'retrieve' }, 'body.id: must be a string'],
    [
      'an action other than retrieve',
      { id: 'task-1', action: CANARY },
      'body.action: must be "retrieve"',
    ],
    [
      'task_id and id that differ',
      { task_id: `${CANARY}-a`, id: `${CANARY}-b` },
      'body.task_id: must equal body.id when both are given',
    ],
  ];
  gatewayTest.for(cases)('%s', async ([, body, message], { gateway }) => {
    await expectRefused(
      gateway,
      { url: TASKS, payload: JSON.stringify(body) },
      400,
      'bad_request',
      message,
    );
  });
});

describe('401 invalid_token: no client, no reading, no upstream', () => {
  const message = 'missing or unknown client key; send authorization: Bearer <client key>';
  gatewayTest.for([
    ['no authorization header', { 'content-type': 'application/json' }],
    ['an unknown key', authHeaders(`agw_unknown_${CANARY}`)],
    [
      'a Basic scheme',
      { 'content-type': 'application/json', authorization: `Basic ${CLIENT_KEY}` },
    ],
    ['an empty bearer', { 'content-type': 'application/json', authorization: 'Bearer ' }],
    ["the upstream's own token", authHeaders(UPSTREAM_TOKEN)],
  ] as const)('%s', async ([, headers], { gateway }) => {
    const res = await expectRefused(
      gateway,
      { headers, payload: recognition({}) },
      401,
      'invalid_token',
      message,
    );
    expect(res.body).not.toContain(CLIENT_KEY);
    expect(res.body).not.toContain(UPSTREAM_TOKEN);
  });

  gatewayTest.for([[RECOGNITION], [TOKEN], [TASKS]] as const)(
    'before the body is read, on %s',
    async ([url], { gateway }) => {
      await expectRefused(
        gateway,
        { url, headers: { 'content-type': 'text/plain' }, payload: `{${CANARY}` },
        401,
        'invalid_token',
        message,
      );
    },
  );
});

describe('404 no_api: an unknown route, before the body is read', () => {
  gatewayTest.for([
    ['an unknown path, with a key', '/captcha/recognition/recaptcha', 'POST', authHeaders()],
    ['an unknown path, without a key', '/captcha/recognition/recaptcha', 'POST', {}],
    ['a known path with another method', RECOGNITION, 'PUT', authHeaders()],
    ['a known path with DELETE', TASKS, 'DELETE', authHeaders()],
  ] as const)('%s', async ([, url, method, headers], { gateway }) => {
    await expectRefused(
      gateway,
      { url, method, headers, payload: `{${CANARY}` },
      404,
      'no_api',
      `no route for ${method} ${url}`,
    );
  });

  gatewayTest('never echoes more than 128 characters of the path', async ({ gateway }) => {
    const url = `/x/${'a'.repeat(200)}${CANARY}`;
    await expectRefused(
      gateway,
      { url, payload: '{}' },
      404,
      'no_api',
      `no route for POST ${url.slice(0, 128)}…`,
    );
  });
});

describe('413 request_too_large and 415 unsupported_media_type', () => {
  gatewayTest.override('gatewaySettings', { env: { BODY_LIMIT_BYTES: '2048' } });

  gatewayTest('a body over BODY_LIMIT_BYTES, by its content-length', async ({ gateway }) => {
    const payload = recognition({ padding: 'x'.repeat(2048) });
    await expectRefused(
      gateway,
      { payload },
      413,
      'request_too_large',
      'request body exceeds the body size limit',
    );
  });

  gatewayTest('a body of exactly BODY_LIMIT_BYTES is read', async ({ gateway }) => {
    const base = recognition({ padding: '' });
    const payload = recognition({ padding: 'x'.repeat(2048 - base.length) });
    expect(Buffer.byteLength(payload)).toBe(2048);
    const res = await gateway.app.inject({
      method: 'POST',
      url: RECOGNITION,
      headers: authHeaders(),
      payload,
    });
    expect(res.statusCode).toBe(200);
  });

  gatewayTest.for([
    ['text/plain', 'text/plain'],
    ['form encoding', 'application/x-www-form-urlencoded'],
    ['multipart', 'multipart/form-data; boundary=x'],
    ['a JSON look-alike', 'application/jsonx'],
    ['a JSON suffix type', 'application/merge-patch+json'],
  ] as const)('%s', async ([, contentType], { gateway }) => {
    await expectRefused(
      gateway,
      { headers: { ...authHeaders(), 'content-type': contentType }, payload: recognition({}) },
      415,
      'unsupported_media_type',
      'content-type must be application/json',
    );
  });

  gatewayTest('a body without a content-type', async ({ gateway }) => {
    await expectRefused(
      gateway,
      { headers: { authorization: `Bearer ${CLIENT_KEY}` }, payload: recognition({}) },
      415,
      'unsupported_media_type',
      'content-type must be application/json',
    );
  });
});
