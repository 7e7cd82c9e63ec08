// One `queries` item (src/schemas/image.ts) and the request schemas (src/schemas/captcha.ts):
// accept what the upstream accepts, refuse only what is certainly malformed, and output the
// exact text to forward.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  holdsExpected,
  polledTaskId,
  recognitionRequestSchema,
  taskRequestSchema,
  tokenRequestSchema,
} from '../src/schemas/captcha.ts';
import {
  checkQuery,
  decodedLength,
  IMAGE_FORMATS,
  imageLimitProblem,
  imageQuerySchema,
  isImageUrl,
  MAX_IMAGE_URL_CHARS,
} from '../src/schemas/image.ts';
import { BMP_HEADER, GIF_HEADER, JPEG_HEADER, PNG_1X1, WEBP_HEADER } from './helpers.ts';

const NOT_BASE64 = `must be an http(s) URL or a Base64 ${IMAGE_FORMATS} image`;
const NOT_AN_IMAGE = `must be a ${IMAGE_FORMATS} image`;
const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** `size` bytes starting with the PNG signature. */
function pngOfSize(size: number): Buffer {
  const bytes = Buffer.alloc(size, 0x41);
  PNG_MAGIC.copy(bytes);
  return bytes;
}

function forwardOf(item: string): string {
  const result = checkQuery(item);
  if (!result.ok) throw new Error(`expected the item to be accepted, got: ${result.problem}`);
  return result.forward;
}

function problemOf(item: string): string {
  const result = checkQuery(item);
  if (result.ok) throw new Error('expected the item to be refused');
  return result.problem;
}

describe('checkQuery: Base64 images', () => {
  it.each([
    ['PNG', PNG_1X1],
    ['JPEG', JPEG_HEADER],
    ['GIF87a', Buffer.from('GIF87a\x01\x00\x01\x00', 'latin1').toString('base64')],
    ['GIF89a', GIF_HEADER],
    ['WebP', WEBP_HEADER],
    ['BMP', BMP_HEADER],
  ])('accepts %s in plain Base64 and forwards the very same string', (_name, base64) => {
    expect(forwardOf(base64)).toBe(base64);
  });

  // Bytes whose Base64 holds both '+' and '/', so their URL-safe spelling differs.
  const jpeg = Buffer.from([0xff, 0xd8, 0xff, 0xfb, 0xef, 0xbe, 0xfa, 0xfb, 0xff, 0xfe]);
  const standard = jpeg.toString('base64');

  it.each([
    ['URL-safe Base64', jpeg.toString('base64url')],
    ['URL-safe Base64 with padding', jpeg.toString('base64url').padEnd(standard.length, '=')],
    ['unpadded Base64', standard.replace(/=+$/, '')],
    ['a data:image/jpeg;base64, prefix', `data:image/jpeg;base64,${standard}`],
    ['an upper-case data URL prefix', `DATA:IMAGE/JPEG;BASE64,${standard}`],
    ['a data: prefix of another image type', `data:image/x-anything+v2;base64,${standard}`],
    ['CRLF line wrapping', standard.replace(/.{4}/g, '$&\r\n')],
    [
      'LF, tab and space wrapping',
      `${standard.slice(0, 4)}\n${standard.slice(4, 8)}\t${standard.slice(8, 12)} ${standard.slice(12)}`,
    ],
    [
      'everything at once',
      `data:image/jpeg;base64,${jpeg.toString('base64url').replace(/.{4}/g, '$&\r\n')}`,
    ],
  ])('accepts %s and forwards standard, padded Base64', (_name, item) => {
    expect(standard).toMatch(/[+/]/);
    expect(forwardOf(item)).toBe(standard);
  });

  it('property: any spelling of any image forwards the one standard spelling of its bytes', () => {
    const magic = [
      PNG_MAGIC,
      Buffer.from([0xff, 0xd8, 0xff]),
      Buffer.from('BM\0\0\0\0\0\0\0\0\0\0\0\0', 'latin1'),
    ];
    fc.assert(
      fc.property(
        fc.constantFrom(...magic),
        fc.uint8Array({ minLength: 0, maxLength: 300 }),
        fc.constantFrom('base64', 'base64url'),
        fc.boolean(),
        fc.option(fc.integer({ min: 1, max: 80 }), { nil: undefined }),
        (head, tail, alphabet, prefix, wrap) => {
          const bytes = Buffer.concat([head, tail]);
          let item = bytes.toString(alphabet as BufferEncoding);
          if (wrap !== undefined) item = item.replace(new RegExp(`.{${wrap}}`, 'g'), '$&\r\n');
          if (prefix) item = `data:image/png;base64,${item}`;
          const forward = forwardOf(item);
          expect(forward).toBe(bytes.toString('base64'));
          expect(decodedLength(forward)).toBe(bytes.length);
        },
      ),
      { numRuns: 300 },
    );
  });

  it.each([
    ['a character outside both alphabets', `${PNG_1X1.slice(0, 10)}*${PNG_1X1.slice(11)}`],
    ['non-ASCII', `${PNG_1X1.slice(0, 10)}é${PNG_1X1.slice(11)}`],
    ["'=' in the middle", `${PNG_1X1.slice(0, 12)}=${PNG_1X1.slice(13)}`],
    ['three padding characters', `${PNG_1X1.replace(/=+$/, '').slice(0, -1)}===`],
    ['padding on a length that is not a multiple of 4', `${PNG_1X1.replace(/=+$/, '')}=`],
    ['a length % 4 of 1', `${pngOfSize(12).toString('base64')}A`],
    ['a data URL of another type', `data:text/plain;base64,${PNG_1X1}`],
    ['only a data: prefix', 'data:image/png;base64,'],
    ['only whitespace', ' \r\n\t '],
    ['another URL scheme', 'ftp://images.example/tile.png'],
    ['a scheme-relative URL', '//images.example/tile.png'],
  ])('refuses %s as not Base64', (_name, item) => {
    expect(problemOf(item)).toBe(NOT_BASE64);
  });

  it.each([
    ['RIFF without WEBP', Buffer.from('RIFF\x24\x00\x00\x00WAVEfmt ', 'latin1')],
    ['a truncated PNG signature', PNG_MAGIC.subarray(0, 7)],
    ['GIF88a', Buffer.from('GIF88a\x01\x00\x01\x00', 'latin1')],
    ['a BMP shorter than its file header', Buffer.from('BM\x3a\x00\x00\x00', 'latin1')],
    ['text', Buffer.from('hello, world!')],
    ['a PDF', Buffer.from('%PDF-1.7\n%\xe2\xe3\xcf\xd3', 'latin1')],
  ])('refuses %s: decodes to no known image format', (_name, bytes) => {
    expect(problemOf(bytes.toString('base64'))).toBe(NOT_AN_IMAGE);
  });

  it('refuses an empty item', () => {
    expect(problemOf('')).toBe('must not be empty');
  });

  it('never echoes the item in a problem', () => {
    const secret = Buffer.from('secret text, not an image at all').toString('base64');
    for (const item of [secret, `${secret}*`, `https://exa mple/${secret}`]) {
      expect(problemOf(item)).not.toContain(secret.slice(0, 8));
    }
  });
});

describe('checkQuery: image URLs', () => {
  it.each([
    ['https', 'https://images.example/challenge/tile-1.jpg?size=128&v=2#top'],
    ['http with a port and an IP', 'http://10.0.0.7:8080/t.png'],
    ['an IPv6 host', 'http://[2001:db8::1]/t.png'],
    ['an upper-case scheme', 'HTTPS://images.example/T.PNG'],
    ['user info and percent escapes', 'https://u:p@images.example/a%20b.png'],
    [
      `exactly ${MAX_IMAGE_URL_CHARS} characters`,
      'https://images.example/'.padEnd(MAX_IMAGE_URL_CHARS, 'a'),
    ],
  ])('accepts %s and forwards it unchanged', (_name, url) => {
    expect(isImageUrl(url)).toBe(true);
    expect(forwardOf(url)).toBe(url);
  });

  it.each([
    ['a space in the host', 'http://exa mple.com/t.png', 'is not a valid http(s) URL'],
    ['no host', 'https://', 'is not a valid http(s) URL'],
    ['an unclosed IPv6 host', 'http://[::1/t.png', 'is not a valid http(s) URL'],
    ['a bad port', 'http://images.example:99999/t.png', 'is not a valid http(s) URL'],
    [
      `${MAX_IMAGE_URL_CHARS + 1} characters`,
      'https://images.example/'.padEnd(MAX_IMAGE_URL_CHARS + 1, 'a'),
      `is a URL longer than ${MAX_IMAGE_URL_CHARS} characters`,
    ],
  ])('refuses %s', (_name, url, problem) => {
    expect(problemOf(url)).toBe(problem);
  });
});

describe('imageLimitProblem: the settings', () => {
  const limits = { maxImages: 100, maxImageBytes: 1024, imageUrls: 'allow' as const };

  it('allows an image of exactly maxImageBytes and refuses one byte more', () => {
    expect(imageLimitProblem(pngOfSize(1024).toString('base64'), limits)).toBeUndefined();
    expect(imageLimitProblem(pngOfSize(1025).toString('base64'), limits)).toBe(
      'decodes to more than 1024 bytes',
    );
  });

  it('allows URLs, or refuses them with IMAGE_URLS=deny', () => {
    const url = 'https://images.example/t.png';
    expect(imageLimitProblem(url, limits)).toBeUndefined();
    expect(imageLimitProblem(url, { ...limits, imageUrls: 'deny' })).toBe(
      'is an image URL; this gateway accepts Base64 images only',
    );
    expect(imageLimitProblem(PNG_1X1, { ...limits, imageUrls: 'deny' })).toBeUndefined();
  });

  it('decodedLength matches the decoded size for every padding', () => {
    for (let size = 1; size <= 64; size++) {
      expect(decodedLength(pngOfSize(size).toString('base64'))).toBe(size);
    }
  });
});

describe('imageQuerySchema', () => {
  it('outputs the text to forward', () => {
    expect(
      imageQuerySchema.parse(
        `data:image/png;base64,${PNG_1X1.slice(0, 40)}\r\n${PNG_1X1.slice(40)}`,
      ),
    ).toBe(PNG_1X1);
  });

  it("fails with checkQuery's problem as the message", () => {
    const result = imageQuerySchema.safeParse(Buffer.from('plain text').toString('base64'));
    expect(result.error?.issues.map((issue) => issue.message)).toEqual([NOT_AN_IMAGE]);
  });

  it.each([[42], [null], [[PNG_1X1]], [{}]])('refuses %j as not a string', (value) => {
    expect(imageQuerySchema.safeParse(value).error?.issues.map((i) => i.message)).toEqual([
      'must be a string',
    ]);
  });
});

describe('recognitionRequestSchema', () => {
  const issues = (body: unknown) =>
    recognitionRequestSchema
      .safeParse(body)
      .error?.issues.map((i) => [i.path.join('.'), i.message]);

  it('keeps unknown fields and outputs queries as forwarded', () => {
    const body = {
      website_url: 'https://example.com',
      queries: [`data:image/png;base64,${PNG_1X1}`, 'https://images.example/t.png'],
      options: { grid: [3, 3] },
    };
    expect(recognitionRequestSchema.parse(body)).toEqual({
      website_url: 'https://example.com',
      queries: [PNG_1X1, 'https://images.example/t.png'],
      options: { grid: [3, 3] },
    });
  });

  it('accepts what the upstream accepts: no question, any question, any number of images', () => {
    for (const body of [
      { queries: [PNG_1X1] },
      { queries: [PNG_1X1], question: '' },
      { queries: [PNG_1X1], question: 'q'.repeat(100_000) },
      { queries: Array(1000).fill(PNG_1X1) },
      { queries: [PNG_1X1], async: false },
      { queries: [PNG_1X1], async: true },
    ]) {
      expect(recognitionRequestSchema.safeParse(body).success).toBe(true);
    }
  });

  it.each([
    [{ question: 'q' }, [['queries', 'is required']]],
    [{ queries: [] }, [['queries', 'must hold at least 1 image']]],
    [{ queries: [PNG_1X1], question: 42 }, [['question', 'must be a string']]],
    [{ queries: [PNG_1X1], async: 'true' }, [['async', 'must be a boolean']]],
    [
      { queries: [PNG_1X1, 7, 'x!'] },
      [
        ['queries.1', 'must be a string'],
        ['queries.2', NOT_BASE64],
      ],
    ],
  ])('refuses %j', (body, expected) => {
    expect(issues(body)).toEqual(expected);
  });
});

describe('tokenRequestSchema', () => {
  it('accepts the required strings, rqdata, proxy, async, and keeps unknown fields', () => {
    const body = {
      website_key: 'k',
      website_url: 'u',
      rqdata: 'r',
      proxy: 'socks5://h:1',
      async: true,
      x: 1,
    };
    expect(tokenRequestSchema.parse(body)).toEqual(body);
  });

  it.each([
    [{ website_url: 'u' }, 'website_key', 'is required'],
    [{ website_key: 'k' }, 'website_url', 'is required'],
    [{ website_key: '', website_url: 'u' }, 'website_key', 'must not be empty'],
    [{ website_key: 'k', website_url: 'u', rqdata: 1 }, 'rqdata', 'must be a string'],
    [{ website_key: 'k', website_url: 'u', proxy: null }, 'proxy', 'must be a string'],
    [{ website_key: 'k', website_url: 'u', async: 0 }, 'async', 'must be a boolean'],
  ])('refuses %j', (body, path, message) => {
    expect(
      tokenRequestSchema.safeParse(body).error?.issues.map((i) => [i.path.join('.'), i.message]),
    ).toEqual([[path, message]]);
  });
});

describe('taskRequestSchema and polledTaskId', () => {
  it.each([
    [{ task_id: 'abc' }, 'abc'],
    [{ id: 'abc', action: 'retrieve' }, 'abc'],
    [{ id: 'abc' }, 'abc'],
    [{ task_id: 'abc', id: 'abc', action: 'retrieve', extra: 1 }, 'abc'],
    [{ task_id: 'x'.repeat(256) }, 'x'.repeat(256)],
  ])('accepts %j, polling %s', (body, id) => {
    const parsed = taskRequestSchema.parse(body);
    expect(parsed).toEqual(body);
    expect(polledTaskId(parsed)).toBe(id);
  });

  it.each([
    [{}, 'task_id', 'is required'],
    [{ action: 'retrieve' }, 'task_id', 'is required'],
    [{ task_id: 'a', id: 'b' }, 'task_id', 'must equal body.id when both are given'],
    [{ id: 'a', action: 'delete' }, 'action', 'must be "retrieve"'],
    [{ task_id: '' }, 'task_id', 'must not be empty'],
    [{ task_id: 7 }, 'task_id', 'must be a string'],
    [{ id: null }, 'id', 'must be a string'],
  ])('refuses %j', (body, path, message) => {
    const result = taskRequestSchema.safeParse(body);
    expect(result.error?.issues.map((i) => [i.path.join('.'), i.message])).toEqual([
      [path, message],
    ]);
  });

  it('refuses a task id over 256 characters', () => {
    expect(taskRequestSchema.safeParse({ task_id: 'x'.repeat(257) }).success).toBe(false);
  });
});

describe('holdsExpected: what a 2xx must hold to be passed through', () => {
  it.each([
    [{ solution: { label: 'bus', box: ['360', '276'] } }, 'solution', true],
    [{ solution: {} }, 'solution', true],
    [{ solution: [{ box: [1, 2] }] }, 'solution', true],
    [{ solution: null }, 'solution', false],
    [{ solution: 'bus' }, 'solution', false],
    [{ elapsed: 1 }, 'solution', false],
    [{ token: 'P1_x' }, 'token', true],
    [{ token: '' }, 'token', false],
    [{ token: 1 }, 'token', false],
    [{ task_id: 't-1', trace_id: 'x' }, 'task_id', true],
    [{ task_id: 1 }, 'task_id', false],
    [null, 'solution', false],
    ['{"solution":{}}', 'solution', false],
    [{ anything: 1 }, undefined, true],
  ] as const)('%j holds %s: %s', (json, field, expected) => {
    expect(holdsExpected(json, field)).toBe(expected);
  });
});
