// The fuzz test's oracle: what the contract (issues 11–14, design.md "What a client sees",
// "Errors", "Validation") says the gateway must answer to a request, written from the contract
// rather than from src/, so the fuzz compares two independent readings of it.
//
// The contract in one breath: reject only what is certainly malformed, accept everything the
// upstream accepts, and forward exactly what the client sent (its bytes, or its JSON with only
// `queries` put in standard Base64).
import { isDeepStrictEqual } from 'node:util';
import { RECOGNITION, TASKS, TOKEN } from '../helpers.ts';

export interface FuzzRequest {
  method: string;
  url: string;
  /** Lower-case names; an array is a repeated header (inject passes it as is). */
  headers: Record<string, string | string[]>;
  payload?: string | Buffer;
}

export type Route = 'recognition' | 'token' | 'tasks' | 'operations' | 'unknown' | 'malformed-url';

export interface Expectation {
  /** `malformed-url`: a path whose percent-encoding does not decode; no route can match it. */
  route: Route;
  /** Statuses the contract allows for this request. */
  statuses: ReadonlySet<number>;
  /** The envelope code of a refusal the gateway makes itself (undefined: an answer, or any). */
  code?: string;
  /** A valid captcha request: it may reach the upstream (a cache hit does not). */
  forwardable: boolean;
  /**
   * For a forwardable request: the body the upstream must receive. `exact`: the client's own
   * bytes; `queries`: the client's JSON with `queries` replaced by these items, every other
   * member (numbers in their spelling, member order) unchanged.
   */
  forwarded?: { exact: true } | { exact: false; queries: string[] };
}

export interface OracleOptions {
  clientKeys: readonly string[];
  bodyLimitBytes: number;
  /** IMAGES_MAX and IMAGE_MAX_BYTES, the settings that bound `queries`. */
  imagesMax: number;
  imageMaxBytes: number;
  /** Tasks created before the fuzz: task id → the key of the client that created it. */
  taskOwners: ReadonlyMap<string, string>;
}

/** "Objects and arrays nested in a body, the body itself counted as 1": at most 64. */
const MAX_DEPTH = 64;
const MAX_TASK_ID = 256;
const MAX_URL_CHARS = 2_048;
/** On the API port only health and readiness; metrics, docs and usage live on the admin port. */
const OPERATIONS = new Set(['/healthz', '/readyz']);

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
  const refuse = (status: number, code: string): Expectation => ({
    route,
    statuses: new Set([status]),
    code,
    forwardable: false,
  });
  // A URL that cannot be decoded is a bad request, whatever its method, key or body.
  if (route === 'malformed-url') return refuse(400, 'bad_request');
  if (route === 'operations') return { route, statuses: new Set([200]), forwardable: false };
  // An unknown route is 404 "with or without a key", and whatever its body: the gateway has no
  // reason to read a body it will not use, so its size, type and syntax cannot change the answer.
  if (route === 'unknown') return refuse(404, 'no_api');
  const key = bearerKey(headerAsSeen(request.headers, 'authorization'));
  if (key === undefined || !options.clientKeys.includes(key)) return refuse(401, 'invalid_token');
  return { route, ...bodyVerdict(route, key, request, options) };
}

function routeOf(method: string, url: string): Route {
  // inject (light-my-request) parses the URL as a WHATWG client would: dot segments resolved,
  // the fragment dropped; a leading "//" is a path, not an authority.
  const base = 'http://localhost';
  // Repeated slashes count as one: an SDK configured with a base URL ending in "/" sends
  // `//captcha/…`, and it must reach the route.
  const rawPath = new URL(url.startsWith('//') ? base + url : url, base).pathname.replace(
    /\/{2,}/g,
    '/',
  );
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
  if (method === 'POST' && path === TOKEN) return 'token';
  if (method === 'POST' && path === TASKS) return 'tasks';
  if ((method === 'GET' || method === 'HEAD') && OPERATIONS.has(path)) return 'operations';
  return 'unknown';
}

/** The key of `authorization: Bearer <key>`, if the header has that form. */
function bearerKey(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  return /^bearer[ \t]+(\S+)[ \t]*$/i.exec(header)?.[1];
}

function contentTypeClass(header: string | undefined): 'json' | 'other' | 'absent' {
  if (header === undefined) return 'absent';
  return /^\s*application\/json\s*(;.*)?$/i.test(header) ? 'json' : 'other';
}

type Verdict = Omit<Expectation, 'route'>;
const bad = (): Verdict => ({ statuses: new Set([400]), code: 'bad_request', forwardable: false });

function bodyVerdict(
  route: 'recognition' | 'token' | 'tasks',
  key: string,
  request: FuzzRequest,
  options: OracleOptions,
): Verdict {
  const bytes = payloadBytes(request.payload);
  const type = contentTypeClass(headerAsSeen(request.headers, 'content-type'));
  if (type === 'absent') {
    // No body at all: nothing to parse, so validation refuses the missing body.
    if (bytes.length === 0) return bad();
    return { statuses: new Set([415]), code: 'unsupported_media_type', forwardable: false };
  }
  if (type === 'other') {
    return { statuses: new Set([415]), code: 'unsupported_media_type', forwardable: false };
  }
  if (bytes.length > options.bodyLimitBytes) {
    return { statuses: new Set([413]), code: 'request_too_large', forwardable: false };
  }
  const value = parseBody(bytes);
  if (value === undefined) return bad();
  if (route === 'recognition') return recognitionVerdict(value, options);
  if (route === 'token') return tokenVerdict(value);
  return taskVerdict(value, key, options);
}

export function payloadBytes(payload: string | Buffer | undefined): Buffer {
  if (payload === undefined) return Buffer.alloc(0);
  return typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * The body as a JSON object the gateway may forward, or undefined when it must be refused: not
 * UTF-8 (RFC 8259 §8.1), not JSON, not an object, a key twice in one object (the validated value
 * must be the forwarded one), a `__proto__` key, or nested deeper than 64 levels. A leading byte
 * order mark is not part of the JSON text (§8.1: a parser may ignore it), so it is dropped.
 * Numbers of any size or precision are fine: they are forwarded as written.
 */
function parseBody(bytes: Buffer): Record<string, unknown> | undefined {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return undefined;
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isObject(value)) return undefined;
  return structureOk(text) ? value : undefined;
}

/**
 * Walks the tokens of a valid JSON text: no object has a key twice, no key is `__proto__`
 * (however it is escaped), and nothing nests deeper than MAX_DEPTH. Written as a tokenizer over
 * the whole text (strings matched by one sticky regex), not as the gateway's scanner is.
 */
function structureOk(text: string): boolean {
  const STRING = /"(?:[^"\\]|\\.)*"/y;
  const stack: Array<Set<string> | null> = [];
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      STRING.lastIndex = i;
      const match = STRING.exec(text);
      if (!match) return true; // cannot happen in valid JSON
      const top = stack[stack.length - 1];
      if (top && expectKey) {
        const name = JSON.parse(match[0]) as string;
        if (name === '__proto__' || top.has(name)) return false;
        top.add(name);
        expectKey = false;
      }
      i += match[0].length - 1;
    } else if (c === '{' || c === '[') {
      stack.push(c === '{' ? new Set() : null);
      if (stack.length > MAX_DEPTH) return false;
      expectKey = c === '{';
    } else if (c === '}' || c === ']') {
      stack.pop();
      expectKey = false;
    } else if (c === ',') {
      expectKey = stack[stack.length - 1] !== null && stack.length > 0;
    }
  }
  return true;
}

const optionalOf = (body: Record<string, unknown>, name: string, type: string) =>
  !Object.hasOwn(body, name) || typeof body[name] === type;

function recognitionVerdict(body: Record<string, unknown>, options: OracleOptions): Verdict {
  const { queries } = body;
  if (!optionalOf(body, 'question', 'string') || !optionalOf(body, 'async', 'boolean')) {
    return bad();
  }
  if (!Array.isArray(queries) || queries.length === 0 || queries.length > options.imagesMax) {
    return bad();
  }
  const forwarded: string[] = [];
  for (const query of queries) {
    if (typeof query !== 'string') return bad();
    const item = forwardedImage(query, options.imageMaxBytes);
    if (item === undefined) return bad();
    forwarded.push(item);
  }
  const unchanged = forwarded.every((item, i) => item === queries[i]);
  return {
    statuses: new Set([body.async === true ? 201 : 200]),
    forwardable: true,
    forwarded: unchanged ? { exact: true } : { exact: false, queries: forwarded },
  };
}

function tokenVerdict(body: Record<string, unknown>): Verdict {
  const required = (name: string) => typeof body[name] === 'string' && body[name] !== '';
  if (!required('website_key') || !required('website_url')) return bad();
  for (const name of ['rqdata', 'proxy']) if (!optionalOf(body, name, 'string')) return bad();
  if (!optionalOf(body, 'async', 'boolean')) return bad();
  return {
    statuses: new Set([body.async === true ? 201 : 200]),
    forwardable: true,
    forwarded: { exact: true },
  };
}

/**
 * A poll: `{"task_id"}` or the SDK poller's `{"id", "action": "retrieve"}` (both, if given, the
 * same id), each a non-empty string of at most 256 characters. Only the client that created a
 * task may poll it: anyone else gets 404 `not_found`, and the upstream is not asked.
 */
function taskVerdict(body: Record<string, unknown>, key: string, options: OracleOptions): Verdict {
  const idOk = (name: string) => {
    if (!Object.hasOwn(body, name)) return true;
    const v = body[name];
    // "Characters" are code points, as for every length the contract states.
    return typeof v === 'string' && v.length >= 1 && [...v].length <= MAX_TASK_ID;
  };
  if (!idOk('task_id') || !idOk('id')) return bad();
  if (Object.hasOwn(body, 'action') && body.action !== 'retrieve') return bad();
  const taskId = (body.task_id ?? body.id) as string | undefined;
  if (taskId === undefined) return bad();
  if (body.task_id !== undefined && body.id !== undefined && body.task_id !== body.id) return bad();
  if (options.taskOwners.get(taskId) !== key) {
    return { statuses: new Set([404]), code: 'not_found', forwardable: false };
  }
  return { statuses: new Set([200]), forwardable: true, forwarded: { exact: true } };
}

// ---------------------------------------------------------------------------------------------
// Images

const SIGNATURES: ReadonlyArray<(b: Buffer) => boolean> = [
  (b) => b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])),
  (b) => b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff,
  (b) => ['GIF87a', 'GIF89a'].includes(b.subarray(0, 6).toString('latin1')),
  (b) =>
    b.length >= 12 &&
    b.subarray(0, 4).toString('latin1') === 'RIFF' &&
    b.subarray(8, 12).toString('latin1') === 'WEBP',
  // BMP: "BM" and the rest of its 14-byte file header.
  (b) => b.length >= 14 && b.subarray(0, 2).toString('latin1') === 'BM',
];

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/**
 * What the gateway forwards for one `queries` item, or undefined when it must refuse it:
 * - an http(s) URL, forwarded unchanged (never fetched): a valid WHATWG URL of at most 2,048
 *   characters;
 * - otherwise Base64 of a PNG, JPEG, GIF, WebP or BMP image of at most `maxBytes` bytes: a
 *   `data:image/…;base64,` prefix and whitespace (line wrapping) are removed, the URL-safe
 *   alphabet is read as the standard one, and the text must be canonical RFC 4648 (§3.5: unused
 *   bits zero; padding optional but complete when present). Forwarded in standard padded form.
 */
export function forwardedImage(raw: string, maxBytes: number): string | undefined {
  if (/^https?:\/\//i.test(raw)) {
    return raw.length <= MAX_URL_CHARS && URL.canParse(raw) ? raw : undefined;
  }
  const text = raw
    .replace(/^data:image\/[a-z0-9.+-]+;base64,/i, '')
    .replace(/[\r\n\t ]/g, '')
    .replace(/-/g, '+')
    .replace(/_/g, '/');
  const match = /^([A-Za-z0-9+/]+)(={0,2})$/.exec(text);
  if (!match) return undefined;
  const data = match[1] ?? '';
  const padding = match[2]?.length ?? 0;
  if (data.length % 4 === 1) return undefined;
  if (padding > 0 && (data.length + padding) % 4 !== 0) return undefined;
  const unusedBits = [0, 0, 4, 2][data.length % 4] ?? 0;
  const last = ALPHABET.indexOf(data.at(-1) ?? 'A');
  if ((last & ((1 << unusedBits) - 1)) !== 0) return undefined;
  const bytes = Buffer.from(data, 'base64');
  if (bytes.length > maxBytes) return undefined;
  if (!SIGNATURES.some((signature) => signature(bytes))) return undefined;
  return bytes.toString('base64');
}

// ---------------------------------------------------------------------------------------------
// What reached the upstream

/** JSON with every number replaced by its source text, so `1e-400` and `0` stay different. */
function withNumberSources(text: string): unknown {
  return JSON.parse(text, (_key, value, context?: { source?: string }) =>
    typeof value === 'number' ? { number: context?.source } : value,
  );
}

const BOM = Buffer.from([0xef, 0xbb, 0xbf]);

/**
 * A problem with the body the upstream received for a forwardable request, or undefined: the
 * client's own bytes (after a byte order mark, which is not JSON) when nothing needed rewriting;
 * otherwise the client's JSON, member for member and number for number as written, with only
 * `queries` in standard Base64.
 */
export function forwardedProblem(
  expectation: Expectation,
  clientBytes: Buffer,
  upstreamBody: string,
): string | undefined {
  const forwarded = expectation.forwarded;
  if (forwarded === undefined) return undefined;
  const json = clientBytes.subarray(0, 3).equals(BOM) ? clientBytes.subarray(3) : clientBytes;
  const client = json.toString('utf8');
  if (forwarded.exact) {
    return upstreamBody === client ? undefined : 'the upstream did not receive the client bytes';
  }
  const sent = withNumberSources(client) as Record<string, unknown>;
  const received = withNumberSources(upstreamBody) as Record<string, unknown>;
  if (!isDeepStrictEqual(Object.keys(received), Object.keys(sent))) {
    return 'the forwarded body has other members, or in another order';
  }
  if (!isDeepStrictEqual(received.queries, forwarded.queries)) {
    return 'the forwarded queries are not the standard Base64 of the images sent';
  }
  const { queries: _sent, ...sentRest } = sent;
  const { queries: _received, ...receivedRest } = received;
  return isDeepStrictEqual(receivedRest, sentRest)
    ? undefined
    : 'a member other than queries was changed on the way (a number respelled?)';
}
