// The cache key is computed from exactly what is forwarded (issue 11 §1): two requests share an
// entry only if the upstream would receive the same body.
//
// What "the same body" means here: the same JSON value, where objects are unordered sets of
// members (RFC 8259 §4), strings are compared by value (escapes decoded), and numbers are compared
// by the text the client wrote (`1`, `1.0` and `1E0` are different: the upstream may read them
// differently, and the gateway forwards them as written). The one documented exception is the
// upstream's own default: `"async": false` is the same as no `async`.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { cacheKey } from '../src/cache/key.ts';
import { parseJsonText } from '../src/schemas/json-text.ts';
import {
  GIF_HEADER,
  gatewayTest,
  JPEG_HEADER,
  PNG_1X1,
  postJson,
  RECOGNITION,
  type TestGateway,
} from './helpers.ts';

// --- What "identical" means, written independently of the gateway's own parser.

/** Parses JSON keeping each number as the text the client wrote. */
function parseExact(text: string): unknown {
  const reviver = (_key: string, value: unknown, context?: { source?: string }) =>
    typeof value === 'number' ? { number: context?.source } : value;
  return JSON.parse(text, reviver as never);
}

/** A JSON value as one string with object members sorted: equal strings ⇔ the same value. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (typeof value === 'object' && value !== null) {
    const entries = Object.entries(value).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** The forwarded body's value, with the documented exception applied (`async: false` ≡ absent). */
function forwardedValue(rawBody: string): string {
  const value = parseExact(rawBody) as Record<string, unknown>;
  if (value.async === false) delete value.async;
  return canonical(value);
}

/** The text without whitespace outside strings (insignificant in JSON). */
function minified(text: string): string {
  let out = '';
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string;
    if (inString) {
      out += c;
      if (c === '\\') out += text[++i] ?? '';
      else if (c === '"') inString = false;
    } else if (c === '"') {
      inString = true;
      out += c;
    } else if (!/\s/.test(c)) {
      out += c;
    }
  }
  return out;
}

// --- The key itself.

const ROUTE = RECOGNITION;
/** The key of a body as the route computes it: from the body as parsed (numbers as written). */
const keyOf = (text: string, route = ROUTE) => {
  const parsed = parseJsonText(text);
  if (!parsed.ok) throw new Error(parsed.problem);
  return cacheKey(route, parsed.value as Parameters<typeof cacheKey>[1]);
};
const body = (members: string) => `{"queries":["${PNG_1X1}"],${members}}`;

describe('cacheKey', () => {
  const base = keyOf(body('"question":"Please click each image containing a bus"'));

  it('is SHA-256 hex', () => {
    expect(base).toMatch(/^[0-9a-f]{64}$/);
  });

  it('is the same for the same forwarded value', () => {
    expect(
      keyOf(
        `{ "question" : "Please click each image containing a bus",\n "queries": [ "${PNG_1X1}" ] }`,
      ),
    ).toBe(base);
    expect(keyOf(body('"question":"Please click each image containing a bus","async":false'))).toBe(
      base,
    );
    expect(keyOf(body('"question":"Please click each image containing \\u0061 bus"'))).toBe(base);
  });

  it.each([
    ['an ideographic space', 'Please click each image containing a\u3000bus'],
    ['a double space', 'Please click each image containing a  bus'],
    ['a leading space', ' Please click each image containing a bus'],
    ['a trailing newline', 'Please click each image containing a bus\n'],
    ['a tab', 'Please click each image containing a\tbus'],
    ['another case', 'please click each image containing a bus'],
  ])('differs for a question with %s (forwarded as written)', (_name, question) => {
    expect(keyOf(body(`"question":${JSON.stringify(question)}`))).not.toBe(base);
  });

  it('differs between no question, an empty one and null-like text', () => {
    const keys = [
      keyOf(body('"x":1')),
      keyOf(body('"x":1,"question":""')),
      keyOf(body('"x":1,"question":"null"')),
    ];
    expect(new Set(keys).size).toBe(3);
  });

  it.each([
    ['1', '1.0'],
    ['1', '1e0'],
    ['1e5', '1E5'],
    ['0', '-0'],
    ['18446744073709551616', '18446744073709551617'],
    ['0', '1e-400'],
  ])('differs for a number spelled %s or %s', (a, b) => {
    expect(keyOf(body(`"n":${a}`))).not.toBe(keyOf(body(`"n":${b}`)));
  });

  it.each([
    ['"async": true vs absent', body('"async":true'), body('"x":0').replace(',"x":0', '')],
    ['an extra field', body('"mode":"fast"'), body('"mode":"slow"')],
    ['a field being present', body('"mode":"fast"'), `{"queries":["${PNG_1X1}"]}`],
    ['the images', `{"queries":["${JPEG_HEADER}"]}`, `{"queries":["${GIF_HEADER}"]}`],
    [
      'image order',
      `{"queries":["${JPEG_HEADER}","${GIF_HEADER}"]}`,
      `{"queries":["${GIF_HEADER}","${JPEG_HEADER}"]}`,
    ],
    [
      'a URL and its upper-case spelling',
      '{"queries":["https://a.example/x.png"]}',
      '{"queries":["HTTPS://a.example/x.png"]}',
    ],
    ['moving text between fields', body('"x":"ab"'), body('"xa":"b"')],
  ])('differs for %s', (_name, a, b) => {
    expect(keyOf(a)).not.toBe(keyOf(b));
  });

  it('differs by route, and a route cannot be forged from the question', () => {
    expect(keyOf(body('"question":"q"'), '/captcha/other')).not.toBe(keyOf(body('"question":"q"')));
    expect(keyOf(body('"question":"b c"'), '/a')).not.toBe(keyOf(body('"question":"c"'), '/a b'));
  });

  it('keys the order of unknown members (a different text, so a separate entry)', () => {
    expect(keyOf(body('"x":1,"y":2'))).not.toBe(keyOf(body('"y":2,"x":1')));
  });
});

// --- Through the gateway: what the upstream receives decides what is shared.

async function send(g: TestGateway, payload: string, headers: Record<string, string> = {}) {
  const before = g.fake.callCount();
  const res = await postJson(g, { payload, headers });
  expect(res.statusCode, res.body).toBe(200);
  const called = g.fake.callCount() - before;
  return {
    cache: String(res.headers['cache-status']),
    rawBody: called === 1 ? (g.fake.calls.at(-1)?.rawBody as string) : undefined,
    called,
  };
}

/** What the upstream receives for `payload`, asked for with `no-store` so the cache is untouched. */
async function forwardedFor(g: TestGateway, payload: string): Promise<string> {
  const sent = await send(g, payload, { 'cache-control': 'no-store' });
  expect(sent.called).toBe(1);
  return sent.rawBody as string;
}

describe('the gateway shares an entry only when the upstream receives the same body', () => {
  gatewayTest.override('gatewaySettings', {
    limits: { rateLimit: { max: 1_000_000, windowSeconds: 60 } },
  });

  gatewayTest(
    '"…a\\u3000bus" and "…a bus" are two entries and two upstream calls',
    async ({ gateway }) => {
      const first = await send(
        gateway,
        body('"question":"Please click each image containing a bus"'),
      );
      const second = await send(
        gateway,
        body('"question":"Please click each image containing a\u3000bus"'),
      );
      expect([first.called, second.called]).toEqual([1, 1]);
      expect(second.cache).toMatch(/fwd=uri-miss/);
      expect(JSON.parse(second.rawBody as string).question).toBe(
        'Please click each image containing a\u3000bus',
      );
    },
  );

  gatewayTest(
    'a data: prefix and plain Base64 are one entry: both forward plain Base64',
    async ({ gateway }) => {
      const plain = await send(gateway, body('"question":"q"'));
      const prefixed = await send(
        gateway,
        `{"queries":["data:image/png;base64,${PNG_1X1}"],"question":"q"}`,
      );
      expect([plain.called, prefixed.called]).toEqual([1, 0]);
      expect(prefixed.cache).toMatch(/; hit/);
    },
  );

  gatewayTest(
    '"async": false and no async are one entry (the documented exception)',
    async ({ gateway }) => {
      expect((await send(gateway, body('"question":"q"'))).called).toBe(1);
      const withFalse = await send(gateway, body('"question":"q","async":false'));
      expect(withFalse.called).toBe(0);
      expect(withFalse.cache).toMatch(/; hit/);
    },
  );

  gatewayTest(
    'property: same entry ⇒ same forwarded value; same forwarded text ⇒ same entry',
    async ({ gateway }) => {
      // A JPEG whose Base64 holds '+' and '/', so the URL-safe spelling differs.
      const jpeg = Buffer.from([0xff, 0xd8, 0xff, 0xfb, 0xef, 0xbe, 0xfa, 0xfb, 0xff]);
      const std = jpeg.toString('base64');
      const images = {
        plain: std,
        data: `data:image/jpeg;base64,${std}`,
        urlsafe: jpeg.toString('base64url'),
        wrapped: std.replace(/.{4}/g, '$&\r\n'),
        unpadded: std.replace(/=+$/, ''),
      };
      const variant = fc.record({
        question: fc.constantFrom(
          undefined,
          'Please click each image containing a bus',
          'Please click each image containing a\u3000bus',
          'Please click each image containing a  bus',
          ' Please click each image containing a bus',
          'please click each image containing a bus',
        ),
        questionFirst: fc.boolean(),
        image: fc.constantFrom(...(Object.keys(images) as Array<keyof typeof images>)),
        url: fc.constantFrom(undefined, 'https://images.example/tile.png'),
        number: fc.constantFrom(
          '1',
          '1.0',
          '1e0',
          '1E0',
          '10e-1',
          '18446744073709551616',
          '18446744073709551617',
          '-0',
          '0',
        ),
        xFirst: fc.boolean(),
        nestedOrder: fc.boolean(),
        async: fc.constantFrom<'absent' | 'false'>('absent', 'false'),
        space: fc.constantFrom('', ' ', '\n  '),
      });
      type Variant = typeof variant extends fc.Arbitrary<infer V> ? V : never;
      const dimensions = [
        'question',
        'questionFirst',
        'image',
        'url',
        'number',
        'xFirst',
        'nestedOrder',
        'async',
        'space',
      ] as const;

      let run = 0;
      const text = (v: Variant, n: number): string => {
        const s = v.space;
        const members: string[] = [`"run":${n}`];
        const queries = `"queries":${s}[${[images[v.image], v.url]
          .filter((q) => q !== undefined)
          .map((q) => JSON.stringify(q))
          .join(`,${s}`)}]`;
        const question =
          v.question === undefined ? [] : [`"question":${s}${JSON.stringify(v.question)}`];
        members.push(...(v.questionFirst ? [...question, queries] : [queries, ...question]));
        const x = `"x":${s}${v.number}`;
        const y = `"y":{${v.nestedOrder ? '"a":1,"b":[true,null]' : '"b":[true,null],"a":1'}}`;
        members.push(...(v.xFirst ? [x, y] : [y, x]));
        if (v.async === 'false') members.push('"async":false');
        return `{${s}${members.join(`,${s}`)}${s}}`;
      };

      let hits = 0;
      let misses = 0;
      await fc.assert(
        fc.asyncProperty(
          variant,
          variant,
          fc.subarray([...dimensions], { minLength: 0, maxLength: 2 }),
          async (a, other, changed) => {
            run += 1;
            const b: Variant = { ...a };
            for (const dimension of changed) Object.assign(b, { [dimension]: other[dimension] });
            const first = await send(gateway, text(a, run));
            expect(first.called).toBe(1);
            const second = await send(gateway, text(b, run));
            const forwardedA = first.rawBody as string;
            const forwardedB =
              second.called === 1
                ? (second.rawBody as string)
                : await forwardedFor(gateway, text(b, run));
            if (second.called === 0) {
              hits += 1;
              expect(second.cache).toMatch(/; hit/);
              expect(forwardedValue(forwardedB)).toBe(forwardedValue(forwardedA));
            } else {
              misses += 1;
              expect(minified(forwardedB)).not.toBe(minified(forwardedA));
            }
          },
        ),
        { numRuns: 80, seed: 11 },
      );
      // Both branches were exercised (a fixed seed keeps this stable).
      expect(hits).toBeGreaterThan(5);
      expect(misses).toBeGreaterThan(5);
    },
  );
});

it('the reviver used to compare bodies keeps number spellings apart', () => {
  expect(forwardedValue('{"a":1.0}')).not.toBe(forwardedValue('{"a":1}'));
  expect(forwardedValue('{"b":1,"a":2}')).toBe(forwardedValue('{ "a" : 2, "b" : 1 }'));
  expect(forwardedValue('{"a":1,"async":false}')).toBe(forwardedValue('{"a":1}'));
  expect(minified('{ "a" : "x y" ,\n "b": [1, 2] }')).toBe('{"a":"x y","b":[1,2]}');
  expect(minified('{"a":"q\\" x"}')).toBe('{"a":"q\\" x"}');
});
