// What the gateway accepts and exactly what it forwards: everything the upstream accepts gets
// through; the client's bytes reach the upstream unchanged unless an image must be rewritten to
// plain Base64; a rewrite keeps every other member's order and spelling.
import { describe, expect } from 'vitest';
import {
  BMP_HEADER,
  GIF_HEADER,
  gatewayTest,
  JPEG_HEADER,
  PNG_1X1,
  postJson,
  RECOGNITION,
  TASKS,
  type TestGateway,
  TOKEN,
  WEBP_HEADER,
} from './helpers.ts';

/** POSTs exact bytes as checkout-service and returns the answer and the one call it made. */
async function forwarded(g: TestGateway, payload: string | Buffer, url = RECOGNITION) {
  const before = g.fake.callCount();
  const res = await postJson(g, { url, payload });
  expect(res.statusCode, res.body).toBeLessThan(300);
  expect(g.fake.callCount()).toBe(before + 1);
  const call = g.fake.calls.at(-1);
  if (!call) throw new Error('no upstream call');
  expect(call.path).toBe(url);
  return { res, rawBody: call.rawBody };
}

/** A recognition body as text, with the images given; `extra` is raw JSON members. */
const body = (queries: string[], extra = '') =>
  `{"queries":${JSON.stringify(queries)}${extra ? `,${extra}` : ''}}`;

describe('accepted and forwarded as sent: what the upstream accepts', () => {
  gatewayTest.for([
    ['an https URL', 'https://images.example/challenge/tile-1.jpg?size=128&v=2#top'],
    ['an http URL', 'http://127.0.0.1:9/tile.png'],
    ['an upper-case scheme', 'HTTPS://images.example/Tile.PNG'],
    ['a URL of exactly 2,048 characters', 'https://images.example/'.padEnd(2048, 'a')],
    ['a BMP image', BMP_HEADER],
    ['a PNG image', PNG_1X1],
    ['a JPEG image', JPEG_HEADER],
    ['a GIF image', GIF_HEADER],
    ['a WebP image', WEBP_HEADER],
  ] as const)('%s', async ([, item], { gateway }) => {
    const text = body([item]);
    expect((await forwarded(gateway, text)).rawBody).toBe(text);
  });

  gatewayTest(
    'an image URL is never fetched: the only request made is the forwarded call',
    async ({ gateway }) => {
      // The URL points at the fake itself, which records every request it receives.
      const url = `${gateway.fake.url}/images/tile.png`;
      const { rawBody } = await forwarded(gateway, body([url, PNG_1X1]));
      expect(JSON.parse(rawBody).queries).toEqual([url, PNG_1X1]);
      expect(gateway.fake.calls.map((call) => call.path)).toEqual([RECOGNITION]);
    },
  );

  gatewayTest('a request without a question', async ({ gateway }) => {
    const text = body([PNG_1X1]);
    expect((await forwarded(gateway, text)).rawBody).toBe(text);
  });

  gatewayTest.for([
    ['empty', ''],
    ['of 5,000 characters', 'q'.repeat(5000)],
    ['with Unicode spaces and CJK', ' 请点击\u3000每一张\t包含公交车的图片 \n'],
  ] as const)('a question %s, unchanged', async ([, question], { gateway }) => {
    const text = `{"question":${JSON.stringify(question)},"queries":["${PNG_1X1}"]}`;
    expect((await forwarded(gateway, text)).rawBody).toBe(text);
  });

  gatewayTest(`more than 18 images, up to IMAGES_MAX (default 100)`, async ({ gateway }) => {
    const images = Array.from(
      { length: 100 },
      (_, i) => [PNG_1X1, JPEG_HEADER, GIF_HEADER, WEBP_HEADER, BMP_HEADER][i % 5] as string,
    );
    const text = body(images, '"question":"Please click each image containing a bus"');
    expect((await forwarded(gateway, text)).rawBody).toBe(text);
  });

  gatewayTest(
    'a body that starts with a UTF-8 byte order mark, forwarded without it',
    async ({ gateway }) => {
      const text = body([PNG_1X1], '"question":"bom"');
      const withBom = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(text)]);
      expect((await forwarded(gateway, withBom)).rawBody).toBe(text);
    },
  );

  gatewayTest('a body nested exactly 64 levels deep', async ({ gateway }) => {
    const text = body([PNG_1X1], `"x":${'['.repeat(63)}${']'.repeat(63)}`);
    expect((await forwarded(gateway, text)).rawBody).toBe(text);
  });

  describe('at the limits an operator sets', () => {
    gatewayTest.override('gatewaySettings', { env: { IMAGES_MAX: '3', IMAGE_MAX_BYTES: '1024' } });

    gatewayTest('IMAGES_MAX images of exactly IMAGE_MAX_BYTES each', async ({ gateway }) => {
      const png = Buffer.alloc(1024, 0x41);
      Buffer.from(PNG_1X1, 'base64').copy(png);
      const text = body(Array(3).fill(png.toString('base64')));
      expect((await forwarded(gateway, text)).rawBody).toBe(text);
    });
  });
});

describe('accepted and rewritten to plain Base64: one spelling per image', () => {
  const png = Buffer.from(PNG_1X1, 'base64');
  // Bytes whose Base64 uses both '+' and '/' (and so '-' and '_' in the URL-safe alphabet).
  const jpeg = Buffer.from([0xff, 0xd8, 0xff, 0xfb, 0xef, 0xbe, 0xfa, 0xfb, 0xff]);
  const cases: Array<[string, string, string]> = [
    ['URL-safe Base64', jpeg.toString('base64url'), jpeg.toString('base64')],
    ['URL-safe Base64 of a PNG, unpadded', png.toString('base64url'), PNG_1X1],
    ['unpadded standard Base64', PNG_1X1.replace(/=+$/, ''), PNG_1X1],
    ['a data: prefix', `data:image/png;base64,${PNG_1X1}`, PNG_1X1],
    ['an upper-case data: prefix', `DATA:IMAGE/PNG;BASE64,${PNG_1X1}`, PNG_1X1],
    ['CRLF line wrapping', PNG_1X1.replace(/.{16}/g, '$&\r\n'), PNG_1X1],
    [
      'LF, tab and space wrapping',
      `${PNG_1X1.slice(0, 20)}\n${PNG_1X1.slice(20, 40)}\t${PNG_1X1.slice(40, 60)} ${PNG_1X1.slice(60)}`,
      PNG_1X1,
    ],
    [
      'a data: prefix, URL-safe and wrapped',
      `data:image/jpeg;base64,${jpeg.toString('base64url').replace(/.{4}/g, '$&\r\n')}`,
      jpeg.toString('base64'),
    ],
  ];
  gatewayTest.for(cases)('%s', async ([, sent, expected], { gateway }) => {
    expect(expected).toMatch(/^[A-Za-z0-9+/]+=*$/);
    const { rawBody } = await forwarded(gateway, body([PNG_1X1, sent]));
    expect(rawBody).toBe(body([PNG_1X1, expected]));
  });
});

describe("exact forwarding: the client's values, as written", () => {
  const numbers = '"a":18446744073709551617,"b":1e-400,"c":-0,"d":1.0,"e":1E5,"f":[1e400,-1.50E-7]';

  gatewayTest('numbers in unknown fields reach the upstream as written', async ({ gateway }) => {
    const text = body([PNG_1X1], numbers);
    expect((await forwarded(gateway, text)).rawBody).toBe(text);
  });

  gatewayTest('...also when an image is rewritten', async ({ gateway }) => {
    const { rawBody } = await forwarded(
      gateway,
      body([`data:image/png;base64,${PNG_1X1}`], numbers),
    );
    expect(rawBody).toBe(body([PNG_1X1], numbers));
  });

  gatewayTest(
    "the client's exact bytes when no image needs rewriting, whitespace included",
    async ({ gateway }) => {
      // As Python's json.dumps writes it (the CLI, the MCP tools), pretty-printed, and compact.
      for (const text of [
        `{"queries": ["${PNG_1X1}"], "question": "Please click each bus", "async": false}`,
        `{\n  "question" : "q",\r\n\t"queries" : [ "${PNG_1X1}" ] ,\n  "z": { "y" : [ 1.0 , 2 ] }\n}\n`,
        `{"zeta":"\\u00e9\\/\\n","question":"q","alpha":{"b":null,"a":true},"queries":["${PNG_1X1}"]}`,
      ]) {
        expect((await forwarded(gateway, text)).rawBody).toBe(text);
      }
    },
  );

  gatewayTest(
    "a rewrite replaces only the queries value: every other byte is the client's own",
    async ({ gateway }) => {
      const sent = `{ "zeta" : 1.0 , "question":"Q\u3000 q", "queries" : [ "data:image/png;base64,${PNG_1X1}", "https://a.example/x.png" ],\n "alpha": {"b": [1E5, -0], "a": "x"}, "async": false }`;
      const { rawBody } = await forwarded(gateway, sent);
      expect(rawBody).toBe(
        `{ "zeta" : 1.0 , "question":"Q\u3000 q", "queries" : ["${PNG_1X1}","https://a.example/x.png"],\n "alpha": {"b": [1E5, -0], "a": "x"}, "async": false }`,
      );
    },
  );

  gatewayTest(
    'a rewrite keeps every string outside queries as written, escapes included',
    async ({ gateway }) => {
      const sent = `{"q":"\\u00e9\\/\\ud83d\\ude8c","queries":["data:image/png;base64,${PNG_1X1}"],"r":"\\\\"}`;
      const { rawBody } = await forwarded(gateway, sent);
      expect(rawBody).toBe(`{"q":"\\u00e9\\/\\ud83d\\ude8c","queries":["${PNG_1X1}"],"r":"\\\\"}`);
    },
  );

  gatewayTest('unknown fields of every JSON type pass through', async ({ gateway }) => {
    const extra =
      '"website_url":"https://site.example","options":{"grid":[3,3],"nested":{"deep":[{"k":null}]}},"flag":true,"none":null,"text":"line\\nbreak \\"quoted\\""';
    const text = body([PNG_1X1], extra);
    expect((await forwarded(gateway, text)).rawBody).toBe(text);
  });
});

describe('the token route: forwarded byte for byte', () => {
  gatewayTest.for([
    [
      'the required fields',
      '{"website_key": "a5f74b19-9e45-40e0-b45d-47ff91b7a6c2", "website_url": "https://accounts.hcaptcha.com/demo"}',
    ],
    [
      'rqdata and proxy',
      '{"website_key":"k","website_url":"https://x.test","rqdata":"RQ-data","proxy":"socks5://u:p@1.2.3.4:1080"}',
    ],
    [
      'async false and unknown fields',
      '{"website_key":"k","website_url":"u","async":false,"n":1.0,"extra":{"a":[1E5]}}',
    ],
  ] as const)('%s', async ([, text], { gateway }) => {
    const { res, rawBody } = await forwarded(gateway, text, TOKEN);
    expect(res.statusCode).toBe(200);
    expect(rawBody).toBe(text);
    expect(res.json()).toHaveProperty('token');
  });

  gatewayTest('async: true answers 201 with the task id', async ({ gateway }) => {
    const text = '{"website_key": "k", "website_url": "https://x.test", "async": true}';
    const { res, rawBody } = await forwarded(gateway, text, TOKEN);
    expect(res.statusCode).toBe(201);
    expect(rawBody).toBe(text);
    expect(res.json().task_id).toEqual(expect.any(String));
  });
});

describe('the tasks route: both poll shapes, forwarded byte for byte', () => {
  async function createTask(g: TestGateway): Promise<string> {
    const { res } = await forwarded(g, body([PNG_1X1], '"async":true'));
    expect(res.statusCode).toBe(201);
    return res.json().task_id as string;
  }

  gatewayTest('{"task_id"} (the spec, CLI and MCP tools)', async ({ gateway }) => {
    const id = await createTask(gateway);
    const text = `{"task_id": "${id}"}`;
    const { res, rawBody } = await forwarded(gateway, text, TASKS);
    expect(rawBody).toBe(text);
    expect(res.json()).toMatchObject({
      task_id: id,
      status: expect.stringMatching(/processing|ready/),
    });
  });

  gatewayTest('{"id", "action": "retrieve"} (the SDK\'s generic poller)', async ({ gateway }) => {
    const id = await createTask(gateway);
    const text = `{"id":"${id}","action":"retrieve"}`;
    const { res, rawBody } = await forwarded(gateway, text, TASKS);
    expect(rawBody).toBe(text);
    expect(res.statusCode).toBe(200);
  });

  gatewayTest('task_id and id both given and equal, with unknown fields', async ({ gateway }) => {
    const id = await createTask(gateway);
    const text = `{ "task_id" : "${id}", "id": "${id}", "action": "retrieve", "n": 1.0 }`;
    expect((await forwarded(gateway, text, TASKS)).rawBody).toBe(text);
  });
});
