import { createHash } from 'node:crypto';

/** Bump when the key derivation changes, so old entries are never read with a new meaning. */
const KEY_VERSION = 'agw-cache-v1';

const DATA_URL_PREFIX = /^data:[^,]*,/i;

export interface CacheKeyBody {
  question: string;
  queries: readonly string[];
  [field: string]: unknown;
}

/** Trimmed, with every inner whitespace run collapsed to one space. */
export function normalizeQuestion(question: string): string {
  return question.trim().replace(/\s+/g, ' ');
}

/**
 * SHA-256 hex of a decoded image. Decoding (rather than hashing the text) makes line wrapping and
 * a `data:` prefix irrelevant even if a caller skipped the validation that normally strips them.
 */
export function imageDigest(base64: string): string {
  const bytes = Buffer.from(base64.trim().replace(DATA_URL_PREFIX, ''), 'base64');
  return createHash('sha256').update(bytes).digest('hex');
}

/**
 * JSON with object keys sorted recursively and no whitespace, so equal values always serialise
 * the same way. Follows JSON.stringify otherwise: `undefined`/functions are dropped from objects
 * and become `null` in arrays; `toJSON` is honoured.
 */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value)) ?? 'null';
}

function sortKeys(value: unknown): unknown {
  if (typeof value !== 'object' || value === null) return value;
  const json = (value as { toJSON?: unknown }).toJSON;
  if (typeof json === 'function') return sortKeys(json.call(value));
  if (Array.isArray(value)) return value.map(sortKeys);
  const sorted: Record<string, unknown> = {};
  for (const key of Object.keys(value).sort()) {
    sorted[key] = sortKeys((value as Record<string, unknown>)[key]);
  }
  return sorted;
}

/**
 * The cache and merge key of a recognition request (design.md → Cache and request merging):
 * SHA-256 hex over the route, the normalised question, the SHA-256 of each decoded image in order,
 * and the canonical JSON of every other field. `async: false` is dropped so it keys like a missing
 * `async`. The parts are framed as one JSON array, so no field boundary can be forged by content.
 * The client is deliberately not part of the key: answers are the same for everyone.
 */
export function cacheKey(route: string, body: CacheKeyBody): string {
  const { question, queries, ...rest } = body;
  if (rest.async === false) delete rest.async;
  const framed = JSON.stringify([
    KEY_VERSION,
    route,
    normalizeQuestion(question),
    queries.map(imageDigest),
    canonicalJson(rest),
  ]);
  return createHash('sha256').update(framed).digest('hex');
}
