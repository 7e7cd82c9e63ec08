import { createHash } from 'node:crypto';

/** Bump when the key derivation changes, so old entries are never read with a new meaning. */
const KEY_VERSION = 'agw-cache-v2';

/** A recognition body as forwarded: `queries` already in the form sent upstream. */
export interface CacheKeyBody {
  queries: readonly string[];
  question?: string;
  [field: string]: unknown;
}

/** An image's part of the key: the URL itself, or the SHA-256 of the (canonical) Base64 text. */
function imagePart(forwarded: string): string {
  if (/^https?:\/\//i.test(forwarded)) return `url:${forwarded}`;
  // Canonical Base64 and decoded bytes map one to one, so hashing the text identifies the image.
  return `b64:${createHash('sha256').update(forwarded).digest('hex')}`;
}

/**
 * The cache and merge key of a recognition request: SHA-256 over the route, the question exactly
 * as forwarded, each image in order, and every other field as it is forwarded (JSON.stringify
 * writes numbers in the client's own spelling, see schemas/json-text.ts). Two requests share a key
 * only if the upstream receives the same question, images and fields. The one exception is the
 * upstream's own default: `"async": false` keys like a missing `async`.
 * The client is deliberately not part of the key: answers are the same for everyone.
 */
export function cacheKey(route: string, body: CacheKeyBody): string {
  const { question, queries, ...rest } = body;
  if (rest.async === false) delete rest.async;
  const framed = JSON.stringify([
    KEY_VERSION,
    route,
    question ?? null,
    queries.map(imagePart),
    JSON.stringify(rest),
  ]);
  return createHash('sha256').update(framed).digest('hex');
}
