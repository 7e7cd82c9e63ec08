import { describe, expect, it } from 'vitest';
import {
  isRecognitionSuccess,
  MAX_QUERIES,
  MAX_QUESTION_CHARS,
  recognitionRequestSchema,
  taskRequestSchema,
} from '../src/schemas/captcha.ts';
import { checkImage, imageQuerySchema, MAX_IMAGE_BYTES } from '../src/schemas/image.ts';
import { GIF_HEADER, JPEG_HEADER, PNG_1X1, WEBP_HEADER } from './helpers.ts';

const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** A buffer of `size` bytes that starts with the PNG signature. */
function pngOfSize(size: number): Buffer {
  const bytes = Buffer.alloc(size, 0x41);
  PNG_MAGIC.copy(bytes);
  return bytes;
}

const BASE64_PROBLEM =
  'must be valid Base64 (standard alphabet, optional data:image/…;base64, prefix)';
const MAGIC_PROBLEM = 'must be a PNG, JPEG, GIF or WebP image';

function accepted(raw: string): { base64: string; bytes: Buffer } {
  const result = checkImage(raw);
  if (!result.ok) throw new Error(`expected the image to be accepted, got: ${result.problem}`);
  return result;
}

function problemOf(raw: string): string {
  const result = checkImage(raw);
  if (result.ok) throw new Error('expected the image to be rejected');
  return result.problem;
}

describe('checkImage', () => {
  it.each([
    ['PNG', PNG_1X1],
    ['JPEG', JPEG_HEADER],
    ['GIF87a', Buffer.from('GIF87a\x01\x00\x01\x00', 'latin1').toString('base64')],
    ['GIF89a', GIF_HEADER],
    ['WebP', WEBP_HEADER],
  ])('accepts %s and returns the decoded bytes', (_name, base64) => {
    const result = accepted(base64);
    expect(result.base64).toBe(base64);
    expect(result.bytes.equals(Buffer.from(base64, 'base64'))).toBe(true);
  });

  it('strips a data:image/png;base64, prefix', () => {
    expect(accepted(`data:image/png;base64,${PNG_1X1}`).base64).toBe(PNG_1X1);
  });

  it('strips a data:image/jpeg;base64, prefix', () => {
    expect(accepted(`data:image/jpeg;base64,${JPEG_HEADER}`).base64).toBe(JPEG_HEADER);
  });

  it('strips a data URL prefix written in upper case', () => {
    expect(accepted(`DATA:IMAGE/PNG;BASE64,${PNG_1X1}`).base64).toBe(PNG_1X1);
  });

  it('removes CRLF, LF, tab and space line wrapping', () => {
    const wrapped = `${PNG_1X1.slice(0, 20)}\r\n${PNG_1X1.slice(20, 40)}\n${PNG_1X1.slice(40, 60)} ${PNG_1X1.slice(60, 80)}\t${PNG_1X1.slice(80)}\r\n`;
    expect(wrapped).not.toBe(PNG_1X1);
    expect(accepted(wrapped).base64).toBe(PNG_1X1);
  });

  it('accepts a data URL followed by wrapped Base64', () => {
    const wrapped = PNG_1X1.replace(/(.{16})/g, '$1\r\n');
    expect(accepted(`data:image/png;base64,${wrapped}`).base64).toBe(PNG_1X1);
  });

  it('accepts unpadded Base64 whose length % 4 is 2', () => {
    const unpadded = PNG_1X1.replace(/=+$/, '');
    expect(unpadded.length % 4).toBe(2);
    const result = accepted(unpadded);
    expect(result.base64).toBe(unpadded);
    expect(result.bytes.equals(Buffer.from(PNG_1X1, 'base64'))).toBe(true);
  });

  it('accepts unpadded Base64 whose length % 4 is 3', () => {
    const bytes = pngOfSize(11);
    const unpadded = bytes.toString('base64').replace(/=+$/, '');
    expect(unpadded.length % 4).toBe(3);
    expect(accepted(unpadded).bytes.equals(bytes)).toBe(true);
  });

  it('accepts an image of exactly MAX_IMAGE_BYTES, padded, unpadded and wrapped', () => {
    const bytes = pngOfSize(MAX_IMAGE_BYTES);
    const padded = bytes.toString('base64');
    expect(padded.endsWith('=')).toBe(true);
    expect(accepted(padded).bytes.length).toBe(MAX_IMAGE_BYTES);
    expect(accepted(padded.replace(/=+$/, '')).bytes.length).toBe(MAX_IMAGE_BYTES);
    expect(accepted(padded.replace(/(.{76})/g, '$1\r\n')).bytes.length).toBe(MAX_IMAGE_BYTES);
  });

  it('rejects an image one byte over MAX_IMAGE_BYTES', () => {
    const base64 = pngOfSize(MAX_IMAGE_BYTES + 1).toString('base64');
    expect(problemOf(base64)).toBe(`decodes to more than ${MAX_IMAGE_BYTES} bytes (1 MiB)`);
    expect(problemOf(base64.replace(/=+$/, ''))).toContain('1 MiB');
  });

  it('rejects a much larger image before decoding it', () => {
    expect(problemOf(pngOfSize(MAX_IMAGE_BYTES + 4096).toString('base64'))).toContain('1 MiB');
  });

  it.each([
    ['a non-alphabet character', `${PNG_1X1.slice(0, 10)}*${PNG_1X1.slice(11)}`],
    ['base64url characters', `${PNG_1X1.slice(0, 10)}-_${PNG_1X1.slice(12)}`],
    ['non-ASCII', `${PNG_1X1.slice(0, 10)}é${PNG_1X1.slice(11)}`],
    ["'=' in the middle", `${PNG_1X1.slice(0, 12)}=${PNG_1X1.slice(13)}`],
    ['three padding characters', `${PNG_1X1.replace(/=+$/, '').slice(0, -1)}===`],
    ['padding on a length that is not a multiple of 4', `${PNG_1X1.replace(/=+$/, '')}=`],
    ['length % 4 == 1', `${pngOfSize(12).toString('base64')}A`],
    ['a data URL of another type', `data:text/plain;base64,${PNG_1X1}`],
  ])('rejects %s as invalid Base64', (_name, raw) => {
    expect(problemOf(raw)).toBe(BASE64_PROBLEM);
  });

  it('rejects length % 4 == 1 even though the rest is a valid image', () => {
    const valid = pngOfSize(12).toString('base64');
    expect(valid.length % 4).toBe(0);
    expect(checkImage(valid).ok).toBe(true);
    const raw = `${valid}A`;
    expect(raw.length % 4).toBe(1);
    expect(problemOf(raw)).toBe(BASE64_PROBLEM);
  });

  it.each([
    ['RIFF without WEBP', Buffer.from('RIFF\x24\x00\x00\x00WAVEfmt ', 'latin1').toString('base64')],
    ['a truncated PNG signature', PNG_MAGIC.subarray(0, 7).toString('base64')],
    ['GIF88a', Buffer.from('GIF88a\x01\x00\x01\x00', 'latin1').toString('base64')],
    ['text', Buffer.from('hello, world!').toString('base64')],
  ])('rejects %s by its magic bytes', (_name, base64) => {
    expect(problemOf(base64)).toBe(MAGIC_PROBLEM);
  });

  it.each([
    ['an empty string', ''],
    ['only whitespace', ' \r\n\t '],
    ['only a data URL prefix', 'data:image/png;base64,'],
  ])('rejects %s as empty', (_name, raw) => {
    expect(problemOf(raw)).toBe('must not be empty');
  });

  it('never echoes image data in a problem', () => {
    const raw = `${PNG_1X1.slice(0, 30)}!${PNG_1X1.slice(31)}`;
    expect(problemOf(raw)).not.toContain(PNG_1X1.slice(0, 8));
  });
});

describe('imageQuerySchema', () => {
  it('outputs the Base64 to forward, without prefix or wrapping', () => {
    expect(
      imageQuerySchema.parse(
        `data:image/png;base64,${PNG_1X1.slice(0, 40)}\r\n${PNG_1X1.slice(40)}`,
      ),
    ).toBe(PNG_1X1);
  });

  it('fails with the checkImage problem as its message', () => {
    const result = imageQuerySchema.safeParse(Buffer.from('plain text').toString('base64'));
    expect(result.success).toBe(false);
    expect(result.error?.issues.map((issue) => issue.message)).toEqual([MAGIC_PROBLEM]);
  });

  it('rejects a non-string', () => {
    expect(imageQuerySchema.safeParse(42).success).toBe(false);
  });
});

describe('recognitionRequestSchema', () => {
  const question = 'Please click each image containing a bus';

  it('keeps unknown fields and normalises queries', () => {
    const body = {
      question,
      queries: [
        `data:image/png;base64,${PNG_1X1}`,
        `${JPEG_HEADER.slice(0, 4)}\r\n${JPEG_HEADER.slice(4)}`,
      ],
      async: false,
      website_url: 'https://example.com',
      options: { grid: [3, 3] },
    };
    expect(recognitionRequestSchema.parse(body)).toEqual({
      question,
      queries: [PNG_1X1, JPEG_HEADER],
      async: false,
      website_url: 'https://example.com',
      options: { grid: [3, 3] },
    });
  });

  it('treats async: false and a missing async as valid', () => {
    const withFalse = recognitionRequestSchema.safeParse({
      question,
      queries: [PNG_1X1],
      async: false,
    });
    const missing = recognitionRequestSchema.safeParse({ question, queries: [PNG_1X1] });
    expect(withFalse.success).toBe(true);
    expect(missing.success).toBe(true);
    expect(missing.data).not.toHaveProperty('async');
    expect(
      recognitionRequestSchema.safeParse({ question, queries: [PNG_1X1], async: true }).success,
    ).toBe(true);
  });

  it.each([['true'], [1], [null]])('rejects async: %j', (value) => {
    const result = recognitionRequestSchema.safeParse({
      question,
      queries: [PNG_1X1],
      async: value,
    });
    expect(result.success).toBe(false);
    expect(result.error?.issues[0]?.path).toEqual(['async']);
    expect(result.error?.issues[0]?.message).toBe('must be a boolean');
  });

  describe('question', () => {
    const parseQuestion = (q: unknown) =>
      recognitionRequestSchema.safeParse({ question: q, queries: [PNG_1X1] });

    it.each([
      ['ASCII', 'a'],
      ['CJK', '公'],
      ['emoji (astral, 2 UTF-16 units each)', '🚌'],
    ])('accepts exactly 500 %s characters and rejects 501', (_name, char) => {
      expect(MAX_QUESTION_CHARS).toBe(500);
      expect(parseQuestion(char.repeat(500)).success).toBe(true);
      const over = parseQuestion(char.repeat(501));
      expect(over.success).toBe(false);
      expect(over.error?.issues.map((i) => i.message)).toEqual(['must be at most 500 characters']);
      expect(over.error?.issues[0]?.path).toEqual(['question']);
    });

    it('does not count surrounding whitespace', () => {
      expect(parseQuestion(`  \n\t${'a'.repeat(500)} \r\n `).success).toBe(true);
      expect(parseQuestion(`  ${'a'.repeat(501)}  `).success).toBe(false);
    });

    it.each([[''], ['   '], ['\n\t']])('rejects an empty question %j', (q) => {
      const result = parseQuestion(q);
      expect(result.success).toBe(false);
      expect(result.error?.issues.map((i) => i.message)).toEqual(['must not be empty']);
    });

    it.each([[undefined], [42], [null]])('rejects question %j', (q) => {
      const result = parseQuestion(q);
      expect(result.success).toBe(false);
      expect(result.error?.issues[0]?.path).toEqual(['question']);
      expect(result.error?.issues[0]?.message).toBe('is required and must be a string');
    });
  });

  describe('queries', () => {
    const parseQueries = (queries: unknown) =>
      recognitionRequestSchema.safeParse({ question, queries });

    it(`accepts 1 to ${MAX_QUERIES} images and rejects 0 or ${MAX_QUERIES + 1}`, () => {
      expect(parseQueries([PNG_1X1]).success).toBe(true);
      expect(parseQueries(Array(MAX_QUERIES).fill(PNG_1X1)).success).toBe(true);
      expect(parseQueries([]).error?.issues[0]?.message).toBe('must hold at least 1 image');
      expect(parseQueries(Array(MAX_QUERIES + 1).fill(PNG_1X1)).error?.issues[0]?.message).toBe(
        'must hold at most 18 images',
      );
    });

    it('names the index of a bad image', () => {
      const result = parseQueries([PNG_1X1, 'not base64!']);
      expect(result.success).toBe(false);
      expect(result.error?.issues.map((i) => i.path)).toEqual([['queries', 1]]);
    });

    it.each([[undefined], ['a string'], [[42]]])('rejects queries %j', (queries) => {
      expect(parseQueries(queries).success).toBe(false);
    });
  });
});

describe('taskRequestSchema', () => {
  it('accepts a task id and keeps unknown fields', () => {
    expect(taskRequestSchema.parse({ task_id: 'abc-123', extra: 1 })).toEqual({
      task_id: 'abc-123',
      extra: 1,
    });
  });

  it('accepts 256 characters and rejects 257, empty or missing', () => {
    expect(taskRequestSchema.safeParse({ task_id: 'x'.repeat(256) }).success).toBe(true);
    expect(taskRequestSchema.safeParse({ task_id: 'x'.repeat(257) }).success).toBe(false);
    expect(taskRequestSchema.safeParse({ task_id: '' }).success).toBe(false);
    expect(taskRequestSchema.safeParse({}).success).toBe(false);
    expect(taskRequestSchema.safeParse({ task_id: 7 }).success).toBe(false);
  });
});

describe('isRecognitionSuccess', () => {
  it.each([
    // sync: needs a solution object
    [{ solution: { label: 'bus', box: ['360', '276'], confidences: 0.6 } }, false, true],
    [{ solution: {} }, false, true],
    [{ solution: { label: 'x' }, elapsed: 1 }, false, true],
    [{ elapsed: 1.2 }, false, false],
    [{ solution: null }, false, false],
    [{ solution: 'bus' }, false, false],
    [{ solution: 1 }, false, false],
    [{ task_id: 't-1' }, false, false],
    [null, false, false],
    ['{"solution":{}}', false, false],
    [undefined, false, false],
    // async: needs a string task_id
    [{ task_id: 't-1', trace_id: 'x' }, true, true],
    [{ task_id: 1 }, true, false],
    [{ task_id: null }, true, false],
    [{ solution: {} }, true, false],
    [null, true, false],
    ['t-1', true, false],
  ])('isRecognitionSuccess(%j, async=%s) is %s', (body, async, expected) => {
    expect(isRecognitionSuccess(body, async)).toBe(expected);
  });
});
