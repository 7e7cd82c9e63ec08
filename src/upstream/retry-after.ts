/** `retry-after` (RFC 9110 §10.2.3): delay-seconds or an HTTP date. */

/** Milliseconds to wait, or undefined when the header is absent or unreadable. Never negative. */
export function retryAfterMs(value: string | undefined, now = Date.now()): number | undefined {
  if (value === undefined) return undefined;
  const text = value.trim();
  const ms = /^\d+$/.test(text) ? Number(text) * 1000 : Date.parse(text) - now;
  return Number.isFinite(ms) ? Math.max(0, ms) : undefined;
}

/** `retry-after` as whole seconds for a response header; 1 when absent or unreadable. */
export function retryAfterSeconds(value: string | undefined, now = Date.now()): string {
  const ms = retryAfterMs(value, now);
  return ms === undefined ? '1' : secondsFromMs(ms);
}

/** Whole seconds, rounded up, at least 1: what a client can act on. */
export function secondsFromMs(ms: number): string {
  return String(Math.max(1, Math.ceil(ms / 1000)));
}
