// The fuzz test's oracle: what the contract (design.md, README "What the gateway checks before
// forwarding" and "Errors") says the gateway must answer to a request, written from the contract
// rather than from src/, so the fuzz compares two independent readings of it.
import { RECOGNITION, TASKS } from './support.ts';

export interface FuzzRequest {
  method: string;
  url: string;
  /** Lower-case names; an array is a repeated header (inject passes it as is). */
  headers: Record<string, string | string[]>;
  payload?: string | Buffer;
}

export interface Expectation {
  /** `malformed-url`: a path whose percent-encoding does not decode; no route can match it. */
  route: 'recognition' | 'tasks' | 'operations' | 'unknown' | 'malformed-url';
  /** Statuses the contract allows for this request. */
  statuses: ReadonlySet<number>;
  /** A valid captcha request: it may reach the upstream (a cache hit does not). */
  forwardable: boolean;
}

export interface OracleOptions {
  clientKeys: readonly string[];
  bodyLimitBytes: number;
}

const MAX_QUESTION_CODE_POINTS = 500;
const MAX_QUERIES = 18;
const MAX_IMAGE_BYTES = 1024 * 1024;
const MAX_TASK_ID = 256;
const MAX_DEPTH = 64;
const OPERATIONS = new Set(['/healthz', '/readyz', '/metrics', '/openapi.json', '/docs', '/docs/']);

/**
 * Headers as Node's IncomingMessage folds a repeated one (inject goes through the same code):
 * the first value wins for authorization and content-type, others are joined with ", ".
 */
const FIRST_WINS = new Set(['authorization', 'content-type']);

export function headerAsSeen(headers: FuzzRequest['headers'], name: string): string | undefined {
  const value = headers[name];
  if (!Array.isArray(value)) return value;
  return FIRST_WINS.has(name) ? value[0] : value.join(', ');
}

export function expectationFor(request: FuzzRequest, options: OracleOptions): Expectation {
  const route = routeOf(request.method, request.url);
  const only = (status: number) => ({ route, statuses: new Set([status]), forwardable: false });
  // A URL that cannot be decoded is a bad request ("Errors": 400 for "a malformed URL"), whatever
  // its method, key or body.
  if (route === 'malformed-url') return only(400);
  if (route === 'operations') {
    return { route, statuses: new Set([200, 302]), forwardable: false };
  }
  // An unknown route is 404 "with or without a key", and whatever its body: the gateway has no
  // reason to read a body it will not use, so its size, type and syntax cannot change the answer.
  if (route === 'unknown') return only(404);
  if (!authorised(headerAsSeen(request.headers, 'authorization'), options.clientKeys)) {
    return only(401);
  }
  return { route, ...bodyVerdict(route, request, options) };
}

function routeOf(method: string, url: string): Expectation['route'] {
  // inject (light-my-request) parses the URL as a WHATWG client would: dot segments resolved,
  // the fragment dropped; a leading "//" is a path, not an authority.
  const base = 'http://localhost';
  const rawPath = new URL(url.startsWith('//') ? base + url : url, base).pathname;
  const segments: string[] = [];
  for (const segment of rawPath.split('/')) {
    try {
      segments.push(decodeURIComponent(segment));
    } catch {
      return 'malformed-url';
    }
  }
  // An encoded slash stays part of its segment: it never turns into a route's separator.
  if (segments.some((segment) => segment.includes('/'))) return 'unknown';
  const path = segments.join('/');
  if (method === 'POST' && path === RECOGNITION) return 'recognition';
  if (method === 'POST' && path === TASKS) return 'tasks';
  if ((method === 'GET' || method === 'HEAD') && OPERATIONS.has(path)) return 'operations';
  return 'unknown';
}

/** `authorization: Bearer <key>` with exactly one known key. */
function authorised(header: string | undefined, keys: readonly string[]): boolean {
  if (header === undefined) return false;
  const match = /^bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
  return match !== null && keys.includes(match[1] ?? '');
}

function contentTypeClass(header: string | undefined): 'json' | 'other' | 'absent' {
  if (header === undefined) return 'absent';
  return /^\s*application\/json\s*(;.*)?$/i.test(header) ? 'json' : 'other';
}

function bodyVerdict(
  route: 'recognition' | 'tasks',
  request: FuzzRequest,
  options: OracleOptions,
): { statuses: Set<number>; forwardable: boolean } {
  const bytes = payloadBytes(request.payload);
  const type = contentTypeClass(headerAsSeen(request.headers, 'content-type'));
  if (type === 'absent') {
    // No body at all: nothing to parse, so validation refuses the missing body.
    return { statuses: new Set([bytes.length === 0 ? 400 : 415]), forwardable: false };
  }
  if (type === 'other') return { statuses: new Set([415]), forwardable: false };
  return parsedBody(route, bytes, options);
}

function parsedBody(
  route: 'recognition' | 'tasks',
  bytes: Buffer,
  options: OracleOptions,
): { statuses: Set<number>; forwardable: boolean } {
  const reject = (status: number) => ({ statuses: new Set([status]), forwardable: false });
  if (bytes.length > options.bodyLimitBytes) return reject(413);
  if (bytes.length === 0) return reject(400);
  let text: string;
  try {
    // JSON text is UTF-8 (RFC 8259 §8.1); a leading BOM is tolerated (TextDecoder drops it).
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return reject(400);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return reject(400);
  }
  if (poisoned(value)) return reject(400);
  const problem = route === 'recognition' ? recognitionProblem(value) : taskProblem(value);
  if (problem !== undefined) return reject(400);
  return { statuses: new Set(route === 'recognition' ? [200] : [200, 404]), forwardable: true };
}

export function payloadBytes(payload: string | Buffer | undefined): Buffer {
  if (payload === undefined) return Buffer.alloc(0);
  return typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** A `__proto__` key, or a `constructor` object with a `prototype` key, anywhere in the value. */
function poisoned(value: unknown): boolean {
  const pending: unknown[] = [value];
  while (pending.length > 0) {
    const v = pending.pop();
    if (typeof v !== 'object' || v === null) continue;
    if (!Array.isArray(v)) {
      if (Object.hasOwn(v, '__proto__')) return true;
      const ctor = (v as Record<string, unknown>).constructor;
      if (Object.hasOwn(v, 'constructor') && isObject(ctor) && Object.hasOwn(ctor, 'prototype')) {
        return true;
      }
    }
    for (const child of Array.isArray(v) ? v : Object.values(v)) pending.push(child);
  }
  return false;
}

/** Too deep to forward, or a number JSON.parse could only read as ±Infinity. */
function shapeProblem(value: unknown): boolean {
  const pending: Array<[unknown, number]> = [[value, 1]];
  for (let item = pending.pop(); item !== undefined; item = pending.pop()) {
    const [v, depth] = item;
    if (typeof v === 'number' && !Number.isFinite(v)) return true;
    if (typeof v !== 'object' || v === null) continue;
    if (depth > MAX_DEPTH) return true;
    for (const child of Array.isArray(v) ? v : Object.values(v)) pending.push([child, depth + 1]);
  }
  return false;
}

function recognitionProblem(body: unknown): string | undefined {
  if (!isObject(body)) return 'body is not an object';
  const { question, queries } = body;
  if (typeof question !== 'string') return 'question is not a string';
  const trimmed = question.trim();
  if (trimmed === '') return 'question is blank';
  if ([...trimmed].length > MAX_QUESTION_CODE_POINTS) return 'question is too long';
  if (!Array.isArray(queries)) return 'queries is not an array';
  if (queries.length < 1 || queries.length > MAX_QUERIES) return 'wrong number of queries';
  for (const query of queries) {
    if (typeof query !== 'string') return 'a query is not a string';
    const problem = imageProblem(query);
    if (problem) return problem;
  }
  if (Object.hasOwn(body, 'async') && typeof body.async !== 'boolean') return 'async';
  if (shapeProblem(body)) return 'shape';
  return undefined;
}

function taskProblem(body: unknown): string | undefined {
  if (!isObject(body)) return 'body is not an object';
  const id = body.task_id;
  // "Characters" as for the question: code points.
  if (typeof id !== 'string' || id.length < 1 || [...id].length > MAX_TASK_ID) return 'task_id';
  if (shapeProblem(body)) return 'shape';
  return undefined;
}

const SIGNATURES: ReadonlyArray<(b: Buffer) => boolean> = [
  (b) => b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])),
  (b) => b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff,
  (b) => ['GIF87a', 'GIF89a'].includes(b.subarray(0, 6).toString('latin1')),
  (b) =>
    b.length >= 12 &&
    b.subarray(0, 4).toString('latin1') === 'RIFF' &&
    b.subarray(8, 12).toString('latin1') === 'WEBP',
];

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/**
 * Canonical RFC 4648 Base64 (§3.5: the unused bits of the last character are zero; padding
 * optional, but complete when present) of a PNG/JPEG/GIF/WebP of at most 1 MiB.
 */
export function imageProblem(raw: string): string | undefined {
  const text = raw.replace(/^data:image\/[a-z0-9.+-]+;base64,/i, '').replace(/[\r\n\t ]/g, '');
  const match = /^([A-Za-z0-9+/]+)(={0,2})$/.exec(text);
  if (!match) return 'not Base64';
  const data = match[1] ?? '';
  const padding = match[2]?.length ?? 0;
  if (data.length % 4 === 1) return 'not Base64 (length)';
  if (padding > 0 && (data.length + padding) % 4 !== 0) return 'not Base64 (padding)';
  const unusedBits = [0, 0, 4, 2][data.length % 4] ?? 0;
  const last = ALPHABET.indexOf(data.at(-1) ?? 'A');
  if ((last & ((1 << unusedBits) - 1)) !== 0) return 'not canonical Base64';
  const bytes = Buffer.from(text, 'base64');
  if (bytes.length > MAX_IMAGE_BYTES) return 'image too large';
  if (!SIGNATURES.some((signature) => signature(bytes))) return 'not an image';
  return undefined;
}
