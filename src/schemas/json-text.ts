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

const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;
const COMMA = 0x2c;
const COLON = 0x3a;
const isSpace = (byte: number | undefined) =>
  byte === 0x20 || byte === 0x09 || byte === 0x0a || byte === 0x0d;

/**
 * Where the value of top-level member `name` sits in the UTF-8 bytes of a valid JSON object, as
 * [start, end) byte offsets — so that one member can be replaced and every other byte forwarded as
 * the client wrote it. Works on bytes: JSON's structural characters are ASCII, and no byte of a
 * multi-byte UTF-8 sequence is. The text must have parsed without duplicate keys.
 */
export function memberValueSpan(json: Buffer, name: string): [number, number] | undefined {
  let depth = 0;
  let expectKey = false;
  let start = -1;
  for (let i = 0; i < json.length; i++) {
    const byte = json[i];
    if (byte === QUOTE) {
      const end = closingQuoteByte(json, i);
      if (end < 0) return undefined;
      if (depth === 1 && expectKey && start < 0) {
        if (decodeKey(json.toString('utf8', i, end + 1)) === name) {
          let at = json.indexOf(COLON, end + 1) + 1;
          while (isSpace(json[at])) at++;
          start = at;
        }
        expectKey = false;
      }
      i = end;
    } else if (byte === OPEN_OBJECT || byte === OPEN_ARRAY) {
      depth++;
      if (depth === 1) expectKey = true;
    } else if (byte === CLOSE_OBJECT || byte === CLOSE_ARRAY) {
      if (depth === 1 && start >= 0) return [start, trimEnd(json, i)];
      depth--;
    } else if (byte === COMMA && depth === 1) {
      if (start >= 0) return [start, trimEnd(json, i)];
      expectKey = true;
    }
  }
  return undefined;
}

function trimEnd(json: Buffer, end: number): number {
  let at = end;
  while (isSpace(json[at - 1])) at--;
  return at;
}

function closingQuoteByte(json: Buffer, start: number): number {
  let from = start + 1;
  for (;;) {
    const end = json.indexOf(QUOTE, from);
    if (end < 0) return -1;
    let backslashes = 0;
    while (json[end - 1 - backslashes] === BACKSLASH) backslashes++;
    if (backslashes % 2 === 0) return end;
    from = end + 1;
  }
}
