import { describe, expect, it } from 'vitest';
import { cacheKey, canonicalJson, imageDigest, normalizeQuestion } from '../src/cache/key.ts';
import { recognitionRequestSchema } from '../src/schemas/captcha.ts';
import { GIF_HEADER, JPEG_HEADER, PNG_1X1 } from './helpers.ts';

const ROUTE = '/captcha/recognition/hcaptcha';
const body = (overrides: Record<string, unknown> = {}) => ({
  question: 'Please click each image containing a bus',
  queries: [PNG_1X1],
  ...overrides,
});
/** The key of a body as the route sees it: after validation normalised it. */
const keyOf = (raw: Record<string, unknown>, route = ROUTE) =>
  cacheKey(route, recognitionRequestSchema.parse(raw));
const wrap = (base64: string, width: number) =>
  base64.match(new RegExp(`.{1,${width}}`, 'g'))?.join('\r\n') ?? '';

describe('cache key', () => {
  const base = keyOf(body());

  it('is SHA-256 hex', () => {
    expect(base).toMatch(/^[0-9a-f]{64}$/);
  });

  describe('is the same for the same request written differently', () => {
    it.each([
      ['a data: prefix on the image', body({ queries: [`data:image/png;base64,${PNG_1X1}`] })],
      ['Base64 line wrapping', body({ queries: [wrap(PNG_1X1, 16)] })],
      [
        'question whitespace',
        body({ question: '  Please  click each\timage\n containing a bus ' }),
      ],
      ['"async": false vs missing', body({ async: false })],
    ])('%s', (_, variant) => {
      expect(keyOf(variant)).toBe(base);
    });

    it('image text the key derivation decodes itself (no validation in front)', () => {
      const direct = cacheKey(ROUTE, body());
      expect(cacheKey(ROUTE, body({ queries: [wrap(PNG_1X1, 20)] }))).toBe(direct);
      expect(cacheKey(ROUTE, body({ queries: [`data:image/png;base64,${PNG_1X1}`] }))).toBe(direct);
    });

    it('extra fields in any key order, nested too', () => {
      const a = keyOf(body({ hint: { b: 1, a: [{ y: 2, x: 1 }] }, mode: 'fast' }));
      const b = keyOf({
        mode: 'fast',
        hint: { a: [{ x: 1, y: 2 }], b: 1 },
        queries: [PNG_1X1],
        question: 'Please click each image containing a bus',
      });
      expect(a).toBe(b);
    });
  });

  describe('differs when the answer could differ', () => {
    it.each([
      ['the question', body({ question: 'Please click each image containing a boat' })],
      ['the images', body({ queries: [JPEG_HEADER] })],
      ['"async": true vs missing', body({ async: true })],
      ['an extra field being present', body({ mode: 'fast' })],
    ])('%s', (_, variant) => {
      expect(keyOf(variant)).not.toBe(base);
    });

    it('image order', () => {
      expect(keyOf(body({ queries: [JPEG_HEADER, GIF_HEADER] }))).not.toBe(
        keyOf(body({ queries: [GIF_HEADER, JPEG_HEADER] })),
      );
    });

    it('extra field value', () => {
      expect(keyOf(body({ mode: 'fast' }))).not.toBe(keyOf(body({ mode: 'slow' })));
    });

    it('async true vs false', () => {
      expect(keyOf(body({ async: true }))).not.toBe(keyOf(body({ async: false })));
    });

    it('route', () => {
      expect(keyOf(body(), '/captcha/other')).not.toBe(base);
    });

    it('question case (the upstream may read it differently)', () => {
      expect(keyOf(body({ question: 'please click each image containing a bus' }))).not.toBe(base);
    });

    it('field boundaries cannot be forged by moving text between fields', () => {
      expect(cacheKey('/a', body({ question: 'b c' }))).not.toBe(
        cacheKey('/a b', body({ question: 'c' })),
      );
      expect(keyOf(body({ x: 'ab' }))).not.toBe(keyOf(body({ xa: 'b' })));
    });
  });
});

describe('helpers', () => {
  it('canonicalJson sorts keys recursively without whitespace', () => {
    expect(canonicalJson({ b: [3, { d: 1, c: null }], a: 'x', u: undefined })).toBe(
      '{"a":"x","b":[3,{"c":null,"d":1}]}',
    );
    expect(canonicalJson(undefined)).toBe('null');
  });

  it('normalizeQuestion trims and collapses inner whitespace', () => {
    expect(normalizeQuestion(' a \t b\n\nc ')).toBe('a b c');
  });

  it('imageDigest hashes the decoded bytes', () => {
    expect(imageDigest(PNG_1X1)).toBe(imageDigest(wrap(PNG_1X1, 8)));
    expect(imageDigest(PNG_1X1)).not.toBe(imageDigest(JPEG_HEADER));
    expect(imageDigest(PNG_1X1)).toMatch(/^[0-9a-f]{64}$/);
  });
});
