import { z } from 'zod';

/** Per-image limit from the contract: each decoded image is at most 1 MiB. */
export const MAX_IMAGE_BYTES = 1024 * 1024;
/** Longest Base64 text (without whitespace) that can decode to MAX_IMAGE_BYTES. */
const MAX_BASE64_CHARS = Math.ceil(MAX_IMAGE_BYTES / 3) * 4;

const DATA_URL_PREFIX = /^data:image\/[a-z0-9.+-]+;base64,/i;
const WHITESPACE = /[\r\n\t ]+/g;
const PADDING = 61; // '='

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
  const text = /^data:/i.test(raw) ? raw.replace(DATA_URL_PREFIX, '') : raw;
  if (text.length === 0) return { ok: false, problem: 'must not be empty' };
  if (text.length > MAX_BASE64_CHARS + 2 && stripWhitespace(text).length > MAX_BASE64_CHARS + 2) {
    return { ok: false, problem: `decodes to more than ${MAX_IMAGE_BYTES} bytes (1 MiB)` };
  }
  // Fast path: no line wrapping. Only text that is not already canonical pays for the regex.
  let base64 = text;
  let bytes = Buffer.from(base64, 'base64');
  if (!isCanonical(base64, bytes)) {
    base64 = stripWhitespace(text);
    if (base64.length === 0) return { ok: false, problem: 'must not be empty' };
    bytes = Buffer.from(base64, 'base64');
    if (!isCanonical(base64, bytes)) {
      return {
        ok: false,
        problem: 'must be valid Base64 (standard alphabet, optional data:image/…;base64, prefix)',
      };
    }
  }
  if (bytes.length > MAX_IMAGE_BYTES) {
    return { ok: false, problem: `decodes to more than ${MAX_IMAGE_BYTES} bytes (1 MiB)` };
  }
  if (!MAGIC.some((magic) => magic.test(bytes))) {
    return { ok: false, problem: 'must be a PNG, JPEG, GIF or WebP image' };
  }
  return { ok: true, base64, bytes };
}

function stripWhitespace(text: string): string {
  return text.replace(WHITESPACE, '');
}

/**
 * Strict Base64 (standard alphabet, padding optional) by round trip: Node's decoder skips what is
 * not Base64 (and accepts the URL-safe alphabet), so the text is valid exactly when re-encoding
 * its bytes gives the text back. Two native passes; a regex over a 1.4 MB string was a quarter of
 * the gateway's CPU time on cache hits (docs/benchmarks.md).
 */
function isCanonical(base64: string, bytes: Buffer): boolean {
  if (bytes.length === 0) return false;
  const canonical = bytes.toString('base64');
  if (canonical === base64) return true;
  let end = canonical.length;
  while (end > 0 && canonical.charCodeAt(end - 1) === PADDING) end--;
  return end < canonical.length && base64.length === end && canonical.startsWith(base64);
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
