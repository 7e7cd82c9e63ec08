import { isRecognitionSuccess } from '../schemas/captcha.ts';

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
 * Only a sync upstream 200 holding a `solution` object is worth keeping (design.md): never an
 * error, never an async submission (its task id is single-use), never a task poll.
 * `solution` stays opaque: whatever the forwarder accepts as a solution is kept.
 */
export function isCacheable(status: number, json: unknown, async: boolean): boolean {
  return !async && status === 200 && isRecognitionSuccess(json, false);
}
