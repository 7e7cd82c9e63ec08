// Shared helpers of the reliability suite (npm run test:reliability): figures, seeded randomness,
// images, a streaming secret scanner, a /metrics parser, the error-envelope check, raw sockets,
// and the real server process.
import { type ChildProcess, spawn } from 'node:child_process';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import type { TestGateway } from '../helpers.ts';

export { within } from '../helpers.ts';

import { mulberry32 } from '../../dev/fake-upstream.ts';

export const RECOGNITION = '/captcha/recognition/hcaptcha';
export const TASKS = '/captcha/tasks';

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

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// Images

const MAGIC = {
  png: Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
  jpeg: Buffer.from([0xff, 0xd8, 0xff, 0xe0]),
  gif: Buffer.from('GIF89a', 'latin1'),
  webp: Buffer.from('RIFF\x24\x00\x00\x00WEBPVP8 ', 'latin1'),
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

  /** A verbatim secret (token, key); `label` is what a hit reports instead of the secret. */
  addSecret(value: string, label: string): void {
    if (value.length < 8) throw new Error(`secret ${label} is too short to scan for`);
    this.#plain.set(value, label);
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

  scan(source: string, text: string): void {
    this.scanned.texts++;
    this.scanned.bytes += text.length;
    this.scanned.lines += countLines(text);
    for (const [value, label] of this.#plain) {
      const at = text.indexOf(value);
      if (at !== -1) this.#hit(source, label, text, at);
    }
    const bearer = text.search(/bearer\s+[A-Za-z0-9_]/i);
    if (bearer !== -1) this.#hit(source, 'a bearer credential', text, bearer);
    if (this.#windows.size === 0) return;
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

export async function scrapeMetrics(app: FastifyInstance): Promise<MetricsSnapshot> {
  const res = await app.inject({ method: 'GET', url: '/metrics' });
  if (res.statusCode !== 200) throw new Error(`/metrics answered ${res.statusCode}`);
  return parseMetrics(res.body);
}

// ---------------------------------------------------------------------------------------------
// The error envelope (design.md → Errors the gateway itself produces)

/** The contract's code table, written out here rather than imported from src/errors.ts. */
export const CONTRACT_STATUS: Readonly<Record<string, number>> = {
  bad_request: 400,
  invalid_token: 401,
  no_api: 404,
  request_too_large: 413,
  unsupported_media_type: 415,
  too_many_requests: 429,
  api_error: 500,
  upstream_error: 502,
  upstream_unavailable: 503,
  timeout: 504,
};

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
  const expected = CONTRACT_STATUS[envelope.error.code];
  if (expected !== status) return `status ${status} with code ${envelope.error.code}`;
  if (envelope.trace_id !== requestIdHeader) return 'trace_id differs from x-request-id';
  return undefined;
}

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
export const TRACE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

// ---------------------------------------------------------------------------------------------
// Raw sockets

export interface RawResponse {
  statusLine: string;
  status: number;
  headers: Record<string, string>;
  body: string;
  raw: string;
}

export function parseRawResponse(raw: string): RawResponse {
  const end = raw.indexOf('\r\n\r\n');
  const head = end === -1 ? raw : raw.slice(0, end);
  const [statusLine = '', ...lines] = head.split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
  }
  return {
    statusLine,
    status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? 0),
    headers,
    body: end === -1 ? '' : raw.slice(end + 4),
    raw,
  };
}

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
    code: 'bad_request',
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
 * A problem with the answer to a request the HTTP parser rejected, or undefined: one of the
 * statuses in CLIENT_ERRORS with its reason phrase, exactly the envelope with that status's code
 * (and message), `x-request-id` a fresh UUID equal to `trace_id`, `connection: close`, a JSON
 * content type, and `content-length` equal to the body's length.
 */
/**
 * Checks an answer written by the gateway's client error handler. `ownTraceId`: the request was
 * read far enough to be routed (e.g. a slow body), so the answer carries its own trace id;
 * otherwise the request was unreadable and gets a fresh UUID.
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
  if (Number(res.headers['content-length']) !== Buffer.byteLength(res.body, 'latin1')) {
    return `content-length ${res.headers['content-length']} for a ${res.body.length}-byte body`;
  }
  return undefined;
}

/** Writes `data` on a fresh connection and collects everything until the server closes it. */
export function rawExchange(port: number, data: Buffer | string, timeoutMs = 5_000) {
  return new Promise<RawResponse>((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no complete answer within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(parseRawResponse(Buffer.concat(chunks).toString('latin1')));
    });
    socket.write(data);
  });
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
// The real server process (src/server.ts), as in test/server-process.test.ts

const SERVER = fileURLToPath(new URL('../../src/server.ts', import.meta.url));

export interface ServerProcess {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The port from Fastify's "Server listening at …" line (PORT=0). */
  port(): Promise<number>;
}

/** Spawns the entry point with exactly `env` (nothing inherited). Kill it in a finally. */
export function startServerProcess(env: Record<string, string>, cwd: string): ServerProcess {
  const child = spawn(process.execPath, [SERVER], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  const port = () =>
    new Promise<number>((resolve, reject) => {
      const check = () => {
        const match = /"msg":"Server listening at http:\/\/127\.0\.0\.1:(\d+)"/.exec(stdout);
        if (!match) return;
        child.stdout?.off('data', check);
        resolve(Number(match[1]));
      };
      child.stdout?.on('data', check);
      check();
      exited.then(({ code, signal }) =>
        reject(new Error(`server exited (${code ?? signal}) before listening:\n${stderr}`)),
      );
    });
  return { child, stdout: () => stdout, stderr: () => stderr, exited, port };
}

// ---------------------------------------------------------------------------------------------
// Memory

export interface MemorySample {
  at: number;
  heapUsed: number;
  rss: number;
}

const gc = (globalThis as { gc?: () => void }).gc;
export const gcExposed = typeof gc === 'function';

/** Runs a full GC first when --expose-gc is on, so heapUsed is the live set. */
export function sampleMemory(at: number): MemorySample {
  gc?.();
  const { heapUsed, rss } = process.memoryUsage();
  return { at, heapUsed, rss };
}

export const mb = (bytes: number) => Math.round((bytes / 1024 / 1024) * 10) / 10;
