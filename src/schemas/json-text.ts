/**
 * Reading a client's JSON body so that what is validated is exactly what is forwarded.
 *
 * - Numbers keep the client's spelling: `18446744073709551617`, `1e-400` or `-0` would come out of
 *   JSON.parse as 18446744073709552000, 0 and 0; such numbers are kept as `JSON.rawJSON(source)`,
 *   which JSON.stringify writes back verbatim (ES2025 JSON.parse source text access).
 * - Duplicate keys are refused: JSON.parse keeps the last one, the upstream might keep the first.
 * - Nesting is bounded, and `__proto__` keys are refused (prototype poisoning).
 *
 * Hand-written because no JSON library both keeps number source text and reports duplicate keys;
 * the scan is linear, skips string contents with indexOf, and never recurses.
 */

declare global {
  interface JSON {
    rawJSON(text: string): unknown;
    isRawJSON(value: unknown): boolean;
  }
}

/** Objects and arrays nested in a body, the body itself counted as 1. Real bodies use 2–3. */
export const MAX_BODY_DEPTH = 64;

export type JsonTextResult = { ok: true; value: unknown } | { ok: false; problem: string };

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

interface Frame {
  /** Keys seen so far; undefined for an array. */
  keys: Set<string> | undefined;
  expectKey: boolean;
}

/** The first structural problem of a JSON text (duplicate key, depth, `__proto__`), if any. */
export function structuralProblem(text: string, maxDepth = MAX_BODY_DEPTH): string | undefined {
  const stack: Frame[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      const end = closingQuote(text, i);
      if (end < 0) return undefined; // unterminated: JSON.parse reports it
      const frame = stack[stack.length - 1];
      if (frame?.keys && frame.expectKey) {
        const key = decodeKey(text.slice(i, end + 1));
        if (key === undefined) return undefined;
        if (key === '__proto__') return 'holds a "__proto__" key';
        if (frame.keys.has(key)) return `holds the key ${JSON.stringify(key.slice(0, 64))} twice`;
        frame.keys.add(key);
        frame.expectKey = false;
      }
      i = end;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (stack.length >= maxDepth) return `nests objects or arrays deeper than ${maxDepth} levels`;
      stack.push({ keys: c === 0x7b ? new Set() : undefined, expectKey: c === 0x7b });
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
    } else if (c === 0x2c /* , */) {
      const frame = stack[stack.length - 1];
      if (frame?.keys) frame.expectKey = true;
    }
  }
  return undefined;
}

/** Index of the quote closing the string that opens at `start`, or -1. */
function closingQuote(text: string, start: number): number {
  let from = start + 1;
  for (;;) {
    const end = text.indexOf('"', from);
    if (end < 0) return -1;
    let backslashes = 0;
    while (text.charCodeAt(end - 1 - backslashes) === BACKSLASH) backslashes++;
    if (backslashes % 2 === 0) return end;
    from = end + 1;
  }
}

function decodeKey(quoted: string): string | undefined {
  if (!quoted.includes('\\')) return quoted.slice(1, -1);
  try {
    return JSON.parse(quoted) as string;
  } catch {
    return undefined;
  }
}

/** Keeps a number whose value would not print back as the client wrote it. */
function keepNumberSource(_key: string, value: unknown, context?: { source?: string }): unknown {
  if (typeof value !== 'number' || context?.source === undefined) return value;
  return String(value) === context.source ? value : JSON.rawJSON(context.source);
}

/** Parses a request body's text; problems are phrased without echoing values. */
export function parseJsonText(text: string): JsonTextResult {
  const problem = structuralProblem(text);
  if (problem !== undefined) return { ok: false, problem: `request body ${problem}` };
  try {
    return { ok: true, value: JSON.parse(text, keepNumberSource as never) };
  } catch {
    return { ok: false, problem: 'request body is not valid JSON' };
  }
}
