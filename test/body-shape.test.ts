// Regression tests for three defects found by the reliability fuzz (test/reliability/fuzz.test.ts):
// a body nested a few thousand levels deep answered 500 api_error (the cache key and the upstream
// body are serialised recursively); a number beyond the double range (1e400) was forwarded as
// null; and a body that is not UTF-8 was decoded with U+FFFD replacements and forwarded with a
// changed question. All three are now 400 bad_request, before any upstream call.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonShapeProblem, MAX_BODY_DEPTH } from '../src/schemas/json-shape.ts';
import { authHeaders, PNG_1X1, startGateway, type TestGateway } from './helpers.ts';

const RECOGNITION = '/captcha/recognition/hcaptcha';
const TASKS = '/captcha/tasks';

/** `levels` arrays nested inside each other, as JSON text. */
const nestedArrays = (levels: number) => `${'['.repeat(levels)}${']'.repeat(levels)}`;
const recognitionWith = (extra: string) =>
  `{"question":"shape test","queries":["${PNG_1X1}"],"x":${extra}}`;

describe('jsonShapeProblem', () => {
  it('accepts flat and moderately nested bodies', () => {
    expect(jsonShapeProblem({ a: 1, b: [1, { c: 'x' }], d: null })).toBeUndefined();
    expect(jsonShapeProblem(JSON.parse(recognitionWith(nestedArrays(63))))).toBeUndefined();
  });

  it('names the top-level field that nests too deep', () => {
    expect(jsonShapeProblem(JSON.parse(recognitionWith(nestedArrays(64))))).toEqual({
      field: 'x',
      message: `nests objects or arrays deeper than ${MAX_BODY_DEPTH} levels`,
    });
  });

  it('walks a million levels without exhausting the stack', () => {
    const deep = JSON.parse(nestedArrays(1_000_000));
    expect(jsonShapeProblem(deep)?.message).toMatch(/deeper than/);
  });

  it('flags numbers that JSON.parse turned into Infinity', () => {
    expect(jsonShapeProblem(JSON.parse('{"a":{"b":[1,-1e400]}}'))).toEqual({
      field: 'a',
      message: expect.stringContaining('outside the range'),
    });
    expect(jsonShapeProblem(JSON.parse('{"a":1.7e308}'))).toBeUndefined();
  });
});

describe('bodies the gateway could not forward unchanged', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ CACHE_TTL_SECONDS: '0' });
  });
  afterAll(async () => {
    await gw.close();
  });

  const post = (url: string, payload: string | Buffer) =>
    gw.app.inject({ method: 'POST', url, headers: authHeaders(), payload });

  it('forwards a body nested exactly MAX_BODY_DEPTH levels deep', async () => {
    const before = gw.fake.callCount();
    const res = await post(RECOGNITION, recognitionWith(nestedArrays(MAX_BODY_DEPTH - 1)));
    expect(res.statusCode).toBe(200);
    expect(gw.fake.callCount()).toBe(before + 1);
  });

  it.each([
    ['recognition, one level too deep', RECOGNITION, recognitionWith(nestedArrays(MAX_BODY_DEPTH))],
    ['recognition, 10,000 levels (was 500)', RECOGNITION, recognitionWith(nestedArrays(10_000))],
    [
      'recognition, 10,000 nested objects (was 500)',
      RECOGNITION,
      recognitionWith(`${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}`),
    ],
    ['tasks, 10,000 levels (was 500)', TASKS, `{"task_id":"t-1","x":${nestedArrays(10_000)}}`],
  ])('answers 400 naming the field: %s', async (_name, url, payload) => {
    const before = gw.fake.callCount();
    const res = await post(url, payload);
    expect(res.statusCode).toBe(400);
    expect(res.json()).toEqual({
      success: false,
      error: { code: 'bad_request', message: expect.stringMatching(/^body\.x: nests .* deeper/) },
      trace_id: res.headers['x-request-id'],
    });
    expect(gw.fake.callCount()).toBe(before);
  });

  it('answers 400 for a number beyond the double range instead of forwarding null', async () => {
    const before = gw.fake.callCount();
    const res = await post(RECOGNITION, recognitionWith('1e400'));
    expect(res.statusCode).toBe(400);
    expect(res.json().error.message).toMatch(/^body\.x: holds a number outside the range/);
    expect(gw.fake.callCount()).toBe(before);
  });

  it('answers 400 for a body that is not UTF-8, every time, instead of forwarding it', async () => {
    const before = gw.fake.callCount();
    const text = Buffer.from(`{"question":"QQ bus","queries":["${PNG_1X1}"]}`);
    const at = text.indexOf('QQ');
    text[at] = 0xff;
    text[at + 1] = 0xfe;
    for (let i = 0; i < 2; i++) {
      const res = await post(RECOGNITION, text);
      expect(res.statusCode).toBe(400);
      expect(res.json().error).toEqual({
        code: 'bad_request',
        message: 'request body is not valid UTF-8',
      });
    }
    expect(gw.fake.callCount()).toBe(before);
  });

  it('still accepts a UTF-8 body that starts with a byte order mark', async () => {
    const body = Buffer.concat([
      Buffer.from([0xef, 0xbb, 0xbf]),
      Buffer.from(`{"question":"bom","queries":["${PNG_1X1}"]}`),
    ]);
    expect((await post(RECOGNITION, body)).statusCode).toBe(200);
  });
});
