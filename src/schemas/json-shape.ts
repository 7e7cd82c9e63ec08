/**
 * Limits on the shape of a JSON body that the gateway re-serialises and forwards. Fields beyond
 * the documented ones pass through, but two kinds of value cannot be forwarded faithfully:
 *
 * - nesting deeper than MAX_BODY_DEPTH: hashing the cache key and serialising the upstream body
 *   are recursive, and a body nested a few thousand levels deep (a few KiB of `[[[[…`) exhausts the
 *   stack, which answered 500 `api_error` for what is the client's own malformed request;
 * - a number beyond the double range (`1e400`): JSON.parse reads it as Infinity and JSON.stringify
 *   writes `null`, so the upstream would receive a different value than the client sent.
 *
 * The walk is iterative, so checking a hostile body cannot exhaust the stack itself.
 */

/** Objects and arrays nested in a body, the body itself counted as 1. Real bodies use 2–3. */
export const MAX_BODY_DEPTH = 64;

export interface ShapeProblem {
  /** The top-level field the problem is under, or undefined for the body itself. */
  field: string | undefined;
  message: string;
}

/** The first shape problem of a parsed JSON body, or undefined when it can be forwarded as is. */
export function jsonShapeProblem(
  body: unknown,
  maxDepth: number = MAX_BODY_DEPTH,
): ShapeProblem | undefined {
  const pending: Array<{ value: unknown; depth: number; field: string | undefined }> = [
    { value: body, depth: 1, field: undefined },
  ];
  for (let item = pending.pop(); item !== undefined; item = pending.pop()) {
    const { value, depth, field } = item;
    if (typeof value === 'number' && !Number.isFinite(value)) {
      return { field, message: 'holds a number outside the range of a JSON double (±1.8e308)' };
    }
    if (typeof value !== 'object' || value === null) continue;
    if (depth > maxDepth) {
      return { field, message: `nests objects or arrays deeper than ${maxDepth} levels` };
    }
    if (Array.isArray(value)) {
      for (const child of value) pending.push({ value: child, depth: depth + 1, field });
    } else {
      for (const [key, child] of Object.entries(value)) {
        pending.push({ value: child, depth: depth + 1, field: field ?? key });
      }
    }
  }
  return undefined;
}
