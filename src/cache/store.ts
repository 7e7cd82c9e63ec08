import { holdsExpected } from '../schemas/captcha.ts';

/** An upstream answer as stored: its status and the exact body bytes, replayed unchanged. */
export interface CachedAnswer {
  status: number;
  body: Buffer;
}

/**
 * One small interface in front of every store (memory, Redis). Implementations never throw into
 * the request path: a store failure reads as a miss and a failed write is dropped.
 */
export interface CacheStore {
  get(key: string): Promise<CachedAnswer | undefined>;
  /** Stores for `ttlSeconds`; a TTL of 0 or less stores nothing. */
  set(key: string, answer: CachedAnswer, ttlSeconds: number): Promise<void>;
  close?(): Promise<void>;
}

/**
 * Only an upstream 200 holding a `solution` object is worth keeping: never an error. Async
 * submissions, tokens and task polls never reach the cache (their routes do not use it).
 * `solution` stays opaque: whatever is accepted as a solution is kept.
 */
export function isCacheable(status: number, json: unknown): boolean {
  return status === 200 && holdsExpected(json, 'solution');
}
