import { z } from 'zod';

/**
 * One `queries` item: an http(s) image URL (forwarded unchanged, never fetched) or a Base64 image.
 * Only what is certainly malformed is refused; the size and count limits are settings, checked
 * by {@link imageLimitProblem} once the item is known to be well formed.
 */

/** The longest image URL accepted (a common limit of browsers, servers and proxies). */
export const MAX_IMAGE_URL_CHARS = 2048;

const DATA_URL_PREFIX = /^data:image\/[a-z0-9.+-]+;base64,/i;
const HTTP_URL = /^https?:\/\//i;
const WHITESPACE = /[\r\n\t ]+/g;
const URL_SAFE_CHARS = /[-_]/;
const PADDING = 61; // '='

const MAGIC: ReadonlyArray<(b: Buffer) => boolean> = [
  // PNG
  (b) => b.length >= 8 && b.readUInt32BE(0) === 0x89504e47 && b.readUInt32BE(4) === 0x0d0a1a0a,
  // JPEG
  (b) => b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff,
  // GIF
  (b) => b.length >= 6 && /^GIF8[79]a$/.test(b.toString('latin1', 0, 6)),
  // WebP
  (b) =>
    b.length >= 12 &&
    b.toString('latin1', 0, 4) === 'RIFF' &&
    b.toString('latin1', 8, 12) === 'WEBP',
  // BMP
  (b) => b.length >= 14 && b[0] === 0x42 && b[1] === 0x4d,
];

export const IMAGE_FORMATS = 'PNG, JPEG, GIF, WebP or BMP';

/** Result of checking one item: the text to forward, or what is wrong (never echoing data). */
export type QueryCheck = { ok: true; forward: string } | { ok: false; problem: string };

export function isImageUrl(item: string): boolean {
  return HTTP_URL.test(item);
}

/** Bytes a Base64 text in standard form decodes to, without decoding it. */
export function decodedLength(base64: string): number {
  let padding = 0;
  while (padding < 2 && base64.charCodeAt(base64.length - 1 - padding) === PADDING) padding++;
  return Math.floor((base64.length * 3) / 4) - padding;
}

export function checkQuery(item: string): QueryCheck {
  if (item.length === 0) return { ok: false, problem: 'must not be empty' };
  return isImageUrl(item) ? checkUrl(item) : checkBase64(item);
}

function checkUrl(item: string): QueryCheck {
  if (item.length > MAX_IMAGE_URL_CHARS) {
    return { ok: false, problem: `is a URL longer than ${MAX_IMAGE_URL_CHARS} characters` };
  }
  if (!URL.canParse(item)) return { ok: false, problem: 'is not a valid http(s) URL' };
  return { ok: true, forward: item };
}

/**
 * Accepts the standard and the URL-safe alphabet, with or without padding, line wrapping or a
 * `data:image/…;base64,` prefix, and forwards the standard form: the upstream documents plain
 * Base64, and one spelling per image means one cache entry per image.
 */
function checkBase64(item: string): QueryCheck {
  let text = DATA_URL_PREFIX.test(item) ? item.replace(DATA_URL_PREFIX, '') : item;
  let bytes = Buffer.from(text, 'base64');
  // Fast path: already canonical. Only other spellings pay for the regexes.
  let canonical = canonicalOf(text, bytes);
  if (canonical === undefined) {
    text = text.replace(WHITESPACE, '');
    if (URL_SAFE_CHARS.test(text)) text = text.replaceAll('-', '+').replaceAll('_', '/');
    bytes = Buffer.from(text, 'base64');
    canonical = canonicalOf(text, bytes);
    if (canonical === undefined) {
      return { ok: false, problem: `must be an http(s) URL or a Base64 ${IMAGE_FORMATS} image` };
    }
  }
  if (!MAGIC.some((matches) => matches(bytes))) {
    return { ok: false, problem: `must be a ${IMAGE_FORMATS} image` };
  }
  // The client's own string when it is already canonical: no second copy is kept.
  return { ok: true, forward: canonical === item ? item : canonical };
}

/**
 * Strict Base64 by round trip: Node's decoder skips what is not Base64, so the text is valid
 * exactly when re-encoding its bytes gives the text back (padding optional). Two native passes;
 * a regex over a megabyte string costs far more. Returns the canonical (padded, standard) text,
 * or undefined when the text is not strict Base64 — one encoding serves both the check and the
 * forwarded form.
 */
function canonicalOf(base64: string, bytes: Buffer): string | undefined {
  if (bytes.length === 0) return undefined;
  const canonical = bytes.toString('base64');
  if (canonical === base64) return canonical;
  let end = canonical.length;
  while (end > 0 && canonical.charCodeAt(end - 1) === PADDING) end--;
  const unpadded = end < canonical.length && base64.length === end && canonical.startsWith(base64);
  return unpadded ? canonical : undefined;
}

/** The settings that bound `queries`. */
export interface ImageLimits {
  maxImages: number;
  maxImageBytes: number;
  imageUrls: 'allow' | 'deny';
}

/** A limit one (well-formed) item breaks, or undefined. */
export function imageLimitProblem(forward: string, limits: ImageLimits): string | undefined {
  if (isImageUrl(forward)) {
    return limits.imageUrls === 'deny'
      ? 'is an image URL; this gateway accepts Base64 images only'
      : undefined;
  }
  return decodedLength(forward) > limits.maxImageBytes
    ? `decodes to more than ${limits.maxImageBytes} bytes`
    : undefined;
}

/** One `queries` item: validated, and output as the text to forward. */
export const imageQuerySchema = z
  .string({ error: 'must be a string' })
  .transform((item, ctx) => {
    const check = checkQuery(item);
    if (check.ok) return check.forward;
    ctx.issues.push({ code: 'custom', message: check.problem, input: undefined });
    return z.NEVER;
  })
  .meta({
    description: `An http(s) image URL (at most ${MAX_IMAGE_URL_CHARS} characters; forwarded unchanged, never fetched by the gateway) or a Base64 ${IMAGE_FORMATS} image (standard or URL-safe alphabet; a data:image/…;base64, prefix and line breaks are accepted and removed)`,
  });
