import { z } from 'zod';

/** Per-image limit from the contract: each decoded image is at most 1 MiB. */
export const MAX_IMAGE_BYTES = 1024 * 1024;
/** Longest Base64 text (without whitespace) that can decode to MAX_IMAGE_BYTES. */
const MAX_BASE64_CHARS = Math.ceil(MAX_IMAGE_BYTES / 3) * 4;

const DATA_URL_PREFIX = /^data:image\/[a-z0-9.+-]+;base64,/i;
const WHITESPACE = /[\r\n\t ]+/g;
// Standard alphabet only; padding optional but never more than 2 and only at the end.
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

const MAGIC: ReadonlyArray<{ name: string; test: (b: Buffer) => boolean }> = [
  {
    name: 'png',
    test: (b) =>
      b.length >= 8 && b.readUInt32BE(0) === 0x89504e47 && b.readUInt32BE(4) === 0x0d0a1a0a,
  },
  { name: 'jpeg', test: (b) => b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff },
  {
    name: 'gif',
    test: (b) =>
      b.length >= 6 &&
      (b.toString('latin1', 0, 6) === 'GIF87a' || b.toString('latin1', 0, 6) === 'GIF89a'),
  },
  {
    name: 'webp',
    test: (b) =>
      b.length >= 12 &&
      b.toString('latin1', 0, 4) === 'RIFF' &&
      b.toString('latin1', 8, 12) === 'WEBP',
  },
];

/** Result of normalising one `queries` item: the Base64 to forward and its decoded bytes. */
export type ImageCheck =
  | { ok: true; base64: string; bytes: Buffer }
  | { ok: false; problem: string };

/**
 * Strips a `data:image/…;base64,` prefix and line wrapping, then checks strict Base64, the decoded
 * size and the magic bytes. Problems are phrased without echoing any of the image data.
 */
export function checkImage(raw: string): ImageCheck {
  const base64 = raw.replace(DATA_URL_PREFIX, '').replace(WHITESPACE, '');
  if (base64.length === 0) return { ok: false, problem: 'must not be empty' };
  if (base64.length > MAX_BASE64_CHARS + 2) {
    return { ok: false, problem: `decodes to more than ${MAX_IMAGE_BYTES} bytes (1 MiB)` };
  }
  if (
    !BASE64.test(base64) ||
    base64.length % 4 === 1 ||
    (base64.includes('=') && base64.length % 4 !== 0)
  ) {
    return {
      ok: false,
      problem: 'must be valid Base64 (standard alphabet, optional data:image/…;base64, prefix)',
    };
  }
  const bytes = Buffer.from(base64, 'base64');
  if (bytes.length > MAX_IMAGE_BYTES) {
    return { ok: false, problem: `decodes to more than ${MAX_IMAGE_BYTES} bytes (1 MiB)` };
  }
  if (!MAGIC.some((magic) => magic.test(bytes))) {
    return { ok: false, problem: 'must be a PNG, JPEG, GIF or WebP image' };
  }
  return { ok: true, base64, bytes };
}

/** One `queries` item: validates and outputs the Base64 text to forward (prefix and wrapping removed). */
export const imageQuerySchema = z
  .string()
  .transform((raw, ctx) => {
    const check = checkImage(raw);
    if (check.ok) return check.base64;
    ctx.issues.push({ code: 'custom', message: check.problem, input: undefined });
    return z.NEVER;
  })
  .meta({
    description:
      'Base64 image (PNG, JPEG, GIF or WebP, at most 1 MiB decoded); a data:image/…;base64, prefix is accepted and stripped',
  });
