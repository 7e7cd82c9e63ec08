// Regression tests for bodies the reliability fuzz (test/reliability/fuzz.test.ts) found: a body
// nested thousands of levels deep answered 500 api_error (recursive serialisation), a number
// beyond the double range (1e400) was forwarded as null, and a body that is not UTF-8 was decoded
// with U+FFFD and forwarded with a changed question. Now: deep nesting and bad UTF-8 are 400
// bad_request before any upstream call, and numbers reach the upstream exactly as written.
import { describe, expect } from 'vitest';
import { gatewayTest, PNG_1X1, postJson, RECOGNITION, TASKS, TOKEN } from './helpers.ts';

const nestedArrays = (levels: number) => `${'['.repeat(levels)}${']'.repeat(levels)}`;
const nestedObjects = (levels: number) => `${'{"a":'.repeat(levels)}1${'}'.repeat(levels)}`;
const recognitionWith = (extra: string) => `{"queries":["${PNG_1X1}"],"x":${extra}}`;
const DEEPER = 'request body nests objects or arrays deeper than 64 levels';

describe('bodies nested far too deep: 400, never 500, and the gateway keeps serving', () => {
  gatewayTest.for([
    ['10,000 arrays, recognition', RECOGNITION, recognitionWith(nestedArrays(10_000))],
    ['10,000 objects, recognition', RECOGNITION, recognitionWith(nestedObjects(10_000))],
    [
      '10,000 arrays, token',
      TOKEN,
      `{"website_key":"k","website_url":"u","x":${nestedArrays(10_000)}}`,
    ],
    ['10,000 arrays, tasks', TASKS, `{"task_id":"t-1","x":${nestedArrays(10_000)}}`],
    ['a million arrays (2 MB), recognition', RECOGNITION, recognitionWith(nestedArrays(1_000_000))],
  ] as const)('%s', async ([, url, payload], { gateway }) => {
    const res = await postJson(gateway, { url, payload });
    expect(res.statusCode).toBe(400);
    expect(res.json()).toEqual({
      success: false,
      error: { code: 'bad_request', message: DEEPER },
      trace_id: res.headers['x-request-id'],
    });
    expect(gateway.fake.callCount()).toBe(0);
    expect(gateway.logs().some((line) => line.level === 50)).toBe(false);
    expect((await postJson(gateway, {})).statusCode).toBe(200);
  });
});

describe('numbers beyond the double range are forwarded as written (the upstream decides)', () => {
  gatewayTest.for([['1e400'], ['-1e400'], ['[1e400,{"b":-1E+999}]'], ['1e-400']] as const)(
    'x: %s',
    async ([number], { gateway }) => {
      const payload = recognitionWith(number);
      const res = await postJson(gateway, { payload });
      expect(res.statusCode).toBe(200);
      expect(gateway.fake.calls.map((call) => call.rawBody)).toEqual([payload]);
    },
  );
});

describe('bodies that are not UTF-8: 400, every time, nothing forwarded', () => {
  const around = (bytes: readonly number[]) =>
    Buffer.concat([
      Buffer.from(`{"question":"`),
      Buffer.from(bytes),
      Buffer.from(` bus","queries":["${PNG_1X1}"]}`),
    ]);
  gatewayTest.for([
    ['a byte that is never UTF-8', [0xff, 0xfe]],
    ['a lone continuation byte', [0x80]],
    ['an overlong encoding of "/"', [0xc0, 0xaf]],
    ['an encoded surrogate', [0xed, 0xa0, 0x80]],
    ['a sequence cut short', [0xe4, 0xb8]],
    ['a code point above U+10FFFF', [0xf4, 0x90, 0x80, 0x80]],
    ['Latin-1 text', [0xe9, 0x74, 0xe9]],
  ] as const)('%s', async ([, bytes], { gateway }) => {
    for (let attempt = 0; attempt < 2; attempt++) {
      const res = await postJson(gateway, { payload: around(bytes) });
      expect(res.statusCode).toBe(400);
      expect(res.json().error).toEqual({
        code: 'bad_request',
        message: 'request body is not valid UTF-8',
      });
    }
    expect(gateway.fake.callCount()).toBe(0);
  });

  gatewayTest(
    'valid multi-byte UTF-8 of every length is forwarded unchanged',
    async ({ gateway }) => {
      const payload = `{"question":"é 公 🚌 \u3000","queries":["${PNG_1X1}"]}`;
      expect((await postJson(gateway, { payload })).statusCode).toBe(200);
      expect(gateway.fake.calls[0]?.rawBody).toBe(payload);
    },
  );
});
