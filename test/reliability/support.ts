// Shared helpers of the reliability suite (npm run test:reliability): figures, seeded randomness,
// images, a streaming secret scanner, a /metrics parser, the error-envelope checks, raw sockets,
// a held upstream, and memory samples. The request helper, `within`, the gateway fixture and the
// server-process spawner are the project's shared ones (test/helpers.ts, test/support/).
import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { type AddressInfo, connect, type Socket } from 'node:net';
import { mulberry32 } from '../../dev/fake-upstream.ts';
import type { RawResponse, TestGateway } from '../helpers.ts';

/** Prints one part's figures as a single JSON line (docs/reliability.md quotes these lines). */
export function report(part: string, figures: Record<string, unknown>): void {
  console.log(`[reliability] ${JSON.stringify({ part, ...figures })}`);
}

/** A small seeded PRNG (the fake upstream's), so a run can be repeated exactly. */
export const seededRandom = mulberry32;

export const pick = <T>(random: () => number, items: readonly T[]): T => {
  const item = items[Math.floor(random() * items.length)];
  if (item === undefined) throw new Error('pick from an empty list');
  return item;
};

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  const index = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, index)] ?? 0;
}

/**
 * A test's timeout within the run's budget: vitest.reliability.config.ts sets
 * RELIABILITY_DEADLINE (5 minutes after the run starts), and no test may wait past it.
 */
const DEADLINE = Number(process.env.RELIABILITY_DEADLINE ?? Date.now() + 300_000);
export function budget(ms: number): number {
  return Math.max(1_000, Math.min(ms, DEADLINE - Date.now()));
}

/** Paces a sender (one request every so often); never used to wait for something to happen. */
export const pause = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Counts events (answers received) and lets a scenario wait for the n-th: a run's phases are
 * bounded by how many requests were answered, not by how long it ran, so a slower (busier)
 * machine runs the same scenario, only longer.
 */
export class Milestones {
  #count = 0;
  readonly #waiting = new Set<{ at: number; resolve: () => void }>();

  get count(): number {
    return this.#count;
  }

  tick(): void {
    this.#count++;
    for (const waiter of this.#waiting) {
      if (this.#count >= waiter.at) {
        this.#waiting.delete(waiter);
        waiter.resolve();
      }
    }
  }

  /** Resolves once `at` events were counted in all. */
  reach(at: number): Promise<void> {
    if (this.#count >= at) return Promise.resolve();
    return new Promise((resolve) => this.#waiting.add({ at, resolve }));
  }
}

// ---------------------------------------------------------------------------------------------
// Images

const MAGIC = {
  png: Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
  jpeg: Buffer.from([0xff, 0xd8, 0xff, 0xe0]),
  gif: Buffer.from('GIF89a', 'latin1'),
  webp: Buffer.from('RIFF\x24\x00\x00\x00WEBPVP8 ', 'latin1'),
  // The 14-byte BITMAPFILEHEADER: "BM", file size, two reserved words, pixel data offset.
  bmp: Buffer.from('BM\x3a\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00', 'latin1'),
} as const;
export type ImageKind = keyof typeof MAGIC;
export const IMAGE_KINDS = Object.keys(MAGIC) as ImageKind[];

/** An "image": real magic bytes followed by seeded noise, `bytes` long in total. */
export function makeImage(random: () => number, kind: ImageKind, bytes: number): Buffer {
  const magic = MAGIC[kind];
  const out = Buffer.alloc(Math.max(bytes, magic.length));
  magic.copy(out);
  for (let i = magic.length; i < out.length; i++) out[i] = Math.floor(random() * 256);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Secrets

export interface SecretHit {
  source: string;
  secret: string;
  excerpt: string;
}

const BASE64_RUN = /[A-Za-z0-9+/]{24,}/g;
const SLICE = 24;
/** Base64 encodes 3 bytes as 4 characters: windows are indexed at every 4th character. */
const STRIDE = 4;

/**
 * Scans text as it is produced (log lines, bodies, /metrics) for the upstream token, client keys
 * and image data. Keys and tokens are searched for verbatim. For images, every 24-character
 * window of each image's Base64 that starts on a 4-character (3-byte) boundary is indexed, and
 * every window of every run of 24+ Base64-alphabet characters in the text is looked up: a leaked
 * slice of 27 characters or more is always found, and so is any 24-character one that starts on
 * a Base64 quantum. Only counts and hits are kept, so a soak can stream millions of lines.
 */
export class SecretScanner {
  readonly #plain = new Map<string, string>();
  readonly #windows = new Set<string>();
  readonly #images = new Set<string>();
  /** The first 20 hits (every hit is counted in hitCount). */
  readonly hits: SecretHit[] = [];
  hitCount = 0;
  readonly scanned = { texts: 0, lines: 0, bytes: 0 };

  /**
   * A verbatim secret (token, key); `label` is what a hit reports instead of the secret. Secrets
   * are found by value whatever they look like, so a short word ("hunter2-pass") works too; below
   * six characters ordinary text would match by chance.
   */
  addSecret(value: string, label: string): void {
    if (value.length < 6) throw new Error(`secret ${label} is too short to scan for`);
    this.#plain.set(value, label);
    // Inside JSON (a log line, a body) a quote or backslash in the secret appears escaped.
    const escaped = JSON.stringify(value).slice(1, -1);
    if (escaped !== value) this.#plain.set(escaped, `${label} (JSON-escaped)`);
  }

  /** An image's Base64 as it was sent (no data: prefix, no wrapping). */
  addImage(base64: string): void {
    if (base64.length < SLICE || this.#images.has(base64)) return;
    this.#images.add(base64);
    for (let i = 0; i + SLICE <= base64.length; i += STRIDE) {
      this.#windows.add(base64.slice(i, i + SLICE));
    }
  }

  get imageCount(): number {
    return this.#images.size;
  }

  /**
   * `images: false` looks for tokens and keys only: an upstream error body passed through may
   * quote the caller's own image back to it, which is not a leak, but it must never hold a token
   * or a key (the gateway masks them by value).
   */
  scan(source: string, text: string, options: { images?: boolean } = {}): void {
    this.scanned.texts++;
    this.scanned.bytes += text.length;
    this.scanned.lines += countLines(text);
    for (const [value, label] of this.#plain) {
      const at = text.indexOf(value);
      if (at !== -1) this.#hit(source, label, text, at);
    }
    const bearer = text.search(/bearer\s+[A-Za-z0-9_]/i);
    if (bearer !== -1) this.#hit(source, 'a bearer credential', text, bearer);
    if (this.#windows.size === 0 || options.images === false) return;
    for (const match of text.matchAll(BASE64_RUN)) {
      const run = match[0];
      for (let i = 0; i + SLICE <= run.length; i++) {
        if (this.#windows.has(run.slice(i, i + SLICE))) {
          this.#hit(source, 'image data', text, (match.index ?? 0) + i);
          break;
        }
      }
    }
  }

  #hit(source: string, secret: string, text: string, at: number): void {
    // The excerpt stops where the match starts, so a failing run never prints a secret either.
    const excerpt = `${text.slice(Math.max(0, at - 60), at)}<${secret}>`;
    this.hitCount++;
    if (this.hits.length < 20) this.hits.push({ source, secret, excerpt });
  }

  summary(): Record<string, number> {
    return {
      secrets: this.#plain.size,
      images: this.#images.size,
      texts: this.scanned.texts,
      lines: this.scanned.lines,
      bytes: this.scanned.bytes,
      hits: this.hitCount,
    };
  }
}

function countLines(text: string): number {
  let lines = text.length > 0 ? 1 : 0;
  for (let i = text.indexOf('\n'); i !== -1 && i < text.length - 1; i = text.indexOf('\n', i + 1)) {
    lines++;
  }
  return lines;
}

/**
 * Moves the log lines a test gateway captured so far through `each` and the scanner, and empties
 * its buffer, so a long run holds no log history in memory.
 */
export function drainLogs(
  gw: Pick<TestGateway, 'logLines'>,
  scanner: SecretScanner,
  source: string,
  each?: (line: Record<string, unknown>) => void,
): number {
  const lines = gw.logLines.splice(0);
  for (const line of lines) {
    scanner.scan(source, line);
    if (each) each(JSON.parse(line) as Record<string, unknown>);
  }
  return lines.length;
}

// ---------------------------------------------------------------------------------------------
// /metrics

export interface MetricsSnapshot {
  text: string;
  /** Sum over every series of `name` whose labels include `labels`. */
  sum(name: string, labels?: Record<string, string>): number;
  series(name: string): Array<{ labels: Record<string, string>; value: number }>;
}

export function parseMetrics(text: string): MetricsSnapshot {
  const rows: Array<{ name: string; labels: Record<string, string>; value: number }> = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match) continue;
    const labels: Record<string, string> = {};
    for (const pair of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1] ?? ''] = pair[2] ?? '';
    }
    rows.push({ name: match[1] ?? '', labels, value: Number(match[3]) });
  }
  const series = (name: string) => rows.filter((row) => row.name === name);
  return {
    text,
    series,
    sum: (name, labels = {}) =>
      series(name)
        .filter((row) => Object.entries(labels).every(([k, v]) => row.labels[k] === v))
        .reduce((total, row) => total + row.value, 0),
  };
}

/**
 * Reads `/metrics` as text from the admin server (it is not served on the API port), for the
 * figures (sums over label subsets, series) and for the secret scanner.
 */
export async function adminMetrics(g: Pick<TestGateway, 'admin'>): Promise<MetricsSnapshot> {
  const res = await g.admin.inject({ method: 'GET', url: '/metrics' });
  if (res.statusCode !== 200) throw new Error(`/metrics answered ${res.statusCode}`);
  return parseMetrics(res.body);
}

// ---------------------------------------------------------------------------------------------
// The error envelope (issues 11–14 and design.md: the gateway's own errors)

/**
 * The contract's code table, written out here rather than imported from src/errors.ts: each code
 * with the statuses it may come with. `request_too_large` is 413 for a body and 431 for headers.
 */
export const CONTRACT_STATUS: Readonly<Record<string, readonly number[]>> = {
  bad_request: [400],
  invalid_token: [401],
  used_up: [403],
  disabled: [403],
  forbidden: [403],
  not_found: [404],
  no_api: [404],
  request_timeout: [408],
  request_too_large: [413, 431],
  unsupported_media_type: [415],
  too_many_requests: [429],
  api_error: [500],
  upstream_error: [502],
  upstream_unavailable: [503],
  timeout: [504],
};

/** True when `code` may come with `status` in the contract's table. */
export const codeFits = (code: string, status: number): boolean =>
  CONTRACT_STATUS[code]?.includes(status) === true;

export interface Envelope {
  success: false;
  error: { code: string; message: string };
  trace_id: string;
}

/** Exactly `{success:false, error:{code,message}, trace_id}`, nothing more, nothing less. */
export function asEnvelope(body: string): Envelope | undefined {
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  const v = value as Record<string, unknown>;
  const keys = Object.keys(v).sort().join(',');
  if (keys !== 'error,success,trace_id' || v.success !== false) return undefined;
  if (typeof v.trace_id !== 'string' || typeof v.error !== 'object' || v.error === null) {
    return undefined;
  }
  const error = v.error as Record<string, unknown>;
  if (Object.keys(error).sort().join(',') !== 'code,message') return undefined;
  if (typeof error.code !== 'string' || typeof error.message !== 'string') return undefined;
  return value as Envelope;
}

/**
 * A problem with an answer the gateway produced itself, or undefined: the envelope, its code
 * matching the status in the contract's table, and its trace id equal to `x-request-id`.
 */
export function gatewayErrorProblem(
  status: number,
  body: string,
  requestIdHeader: unknown,
): string | undefined {
  const envelope = asEnvelope(body);
  if (!envelope) return `status ${status} without the error envelope: ${body.slice(0, 120)}`;
  if (!codeFits(envelope.error.code, status)) {
    return `status ${status} with code ${envelope.error.code}`;
  }
  if (envelope.trace_id !== requestIdHeader) return 'trace_id differs from x-request-id';
  return undefined;
}

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
export const TRACE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

// ---------------------------------------------------------------------------------------------
// Raw sockets (the connection itself: rawConnection in test/helpers.ts)

/**
 * What the gateway answers to a request Node's HTTP parser rejects (it never reaches a route):
 * the status, the envelope's code and, where the contract fixes it, its message. The trace id is
 * always a fresh UUID: the request is unreadable, so its own x-request-id cannot be trusted.
 */
export const CLIENT_ERRORS: Readonly<
  Record<number, { reason: string; code: string; message?: string }>
> = {
  400: { reason: 'Bad Request', code: 'bad_request', message: 'malformed HTTP request' },
  408: {
    reason: 'Request Timeout',
    code: 'request_timeout',
    message: 'the request was not received in full within the request timeout',
  },
  431: { reason: 'Request Header Fields Too Large', code: 'request_too_large' },
};

/** True when a raw answer carries the parser-rejection message of its status (see CLIENT_ERRORS). */
export function isClientErrorAnswer(res: RawResponse): boolean {
  const expected = CLIENT_ERRORS[res.status];
  const envelope = asEnvelope(res.body);
  if (!expected || !envelope || envelope.error.code !== expected.code) return false;
  return expected.message === undefined || envelope.error.message === expected.message;
}

/**
 * A problem with an answer written by the gateway's client error handler, or undefined: one of
 * the statuses in CLIENT_ERRORS with its reason phrase, exactly the envelope with that status's
 * code (and message), `x-request-id` equal to `trace_id`, `connection: close`, a JSON content
 * type, and `content-length` equal to the body's length. `ownTraceId`: the request was read far
 * enough to be routed (a slow body), so the answer carries its own trace id; otherwise the
 * request was unreadable and gets a fresh UUID.
 */
export function clientErrorProblem(res: RawResponse, ownTraceId?: string): string | undefined {
  const expected = CLIENT_ERRORS[res.status];
  if (!expected) return `status line ${JSON.stringify(res.statusLine)}`;
  if (res.statusLine !== `HTTP/1.1 ${res.status} ${expected.reason}`) {
    return `status line ${JSON.stringify(res.statusLine)}`;
  }
  const envelope = asEnvelope(res.body);
  if (!envelope)
    return `status ${res.status} without the error envelope: ${res.body.slice(0, 120)}`;
  if (envelope.error.code !== expected.code) {
    return `status ${res.status} with code ${envelope.error.code}`;
  }
  if (expected.message !== undefined && envelope.error.message !== expected.message) {
    return `status ${res.status} with message ${JSON.stringify(envelope.error.message)}`;
  }
  if (ownTraceId !== undefined) {
    if (envelope.trace_id !== ownTraceId)
      return `trace_id ${envelope.trace_id} is not ${ownTraceId}`;
  } else if (!UUID.test(envelope.trace_id)) {
    return `trace_id ${envelope.trace_id} is not a fresh UUID`;
  }
  if (res.headers['x-request-id'] !== envelope.trace_id)
    return 'trace_id differs from x-request-id';
  if (res.headers.connection !== 'close') return `connection: ${res.headers.connection}`;
  if (res.headers['content-type'] !== 'application/json; charset=utf-8') {
    return `content-type: ${res.headers['content-type']}`;
  }
  if (Number(res.headers['content-length']) !== Buffer.byteLength(res.body)) {
    return `content-length ${res.headers['content-length']} for a ${res.body.length}-byte body`;
  }
  return undefined;
}

/** Resolves when a TCP connection to the port is accepted, rejects with its error otherwise. */
export function tryConnect(port: number): Promise<'connected'> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', reject);
  });
}

// ---------------------------------------------------------------------------------------------
// A held upstream: answers nothing until the test releases it

export interface HeldCall {
  authorization: string | undefined;
  requestId: string | undefined;
  body: string;
}

export interface HeldUpstream {
  url: string;
  /** Every call received, in order. */
  readonly calls: HeldCall[];
  /** Resolves once this many calls are held (an event, not a poll). */
  waitForHeld(count: number): Promise<void>;
  /** Answers every held call, and every later one at once, as the upstream answers a solve. */
  release(): void;
  close(): Promise<void>;
}

/**
 * An upstream whose answers the test lets go: calls wait until `release()`, so "N requests are in
 * flight" is a fact the test establishes, not a latency it hopes is long enough. Each answer is a
 * sync solve in the upstream's shape (the fake upstream, dev/fake-upstream.ts, is the faithful
 * one; this only holds).
 */
export async function startHeldUpstream(): Promise<HeldUpstream> {
  const calls: HeldCall[] = [];
  const pending: Array<() => void> = [];
  const waiters = new Set<{ count: number; resolve: () => void }>();
  const sockets = new Set<Socket>();
  let released = false;
  const answer = (res: ServerResponse) => () => {
    const body = JSON.stringify({ solution: { objects: [1, 4] }, elapsed: 0.5 });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
    res.end(body);
  };
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      calls.push({
        authorization: req.headers.authorization,
        requestId: req.headers['x-request-id'] as string | undefined,
        body: Buffer.concat(chunks).toString('utf8'),
      });
      if (released) answer(res)();
      else pending.push(answer(res));
      for (const waiter of waiters) {
        if (calls.length >= waiter.count) {
          waiters.delete(waiter);
          waiter.resolve();
        }
      }
    });
  });
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    calls,
    waitForHeld: (count) =>
      new Promise((resolve) => {
        if (calls.length >= count) resolve();
        else waiters.add({ count, resolve });
      }),
    release() {
      released = true;
      for (const send of pending.splice(0)) send();
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Memory

export interface MemorySample {
  at: number;
  heapUsed: number;
  /** Memory outside the JS heap held by live objects: Buffers, mostly (bodies, answers). */
  external: number;
  rss: number;
}

const gc = (globalThis as { gc?: () => void }).gc;
export const gcExposed = typeof gc === 'function';

/** Runs a full GC first when --expose-gc is on, so heapUsed and external are the live set. */
export function sampleMemory(at: number): MemorySample {
  gc?.();
  const { heapUsed, external, rss } = process.memoryUsage();
  return { at, heapUsed, external, rss };
}

export const mb = (bytes: number) => Math.round((bytes / 1024 / 1024) * 10) / 10;
