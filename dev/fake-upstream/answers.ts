// What the fake "solves": recognition answers derived from the request (so tests can predict them
// and a cache can be checked), and fresh single-use tokens for the token endpoint.

import { createHash, randomBytes } from 'node:crypto';

export interface Solution {
  label: string;
  box: [string, string];
  confidences: number;
}

/**
 * The solution for a question and its images, sync and async alike: the object form of the spec's
 * example (`box` as strings, the key `confidences`), with a label that depends on both inputs.
 * A request without `question` is answered too (the spec marks no field required).
 */
export function deriveSolution(question: string | undefined, queries: readonly string[]): Solution {
  const label = createHash('sha256')
    .update(JSON.stringify([question, queries]))
    .digest('hex')
    .slice(0, 8);
  return { label, box: ['360', '276'], confidences: 0.635 };
}

/** A new hCaptcha pass token, shaped like the spec's example (`P1_eyJ…`); never the same twice. */
export function freshPassToken(): string {
  return `P1_eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.${randomBytes(48).toString('base64url')}`;
}

/** mulberry32: a tiny seeded PRNG, deterministic for a given seed (the reliability suite uses it too). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
