// A faithful fake of Ace Data Cloud's hCaptcha recognition API, for tests, benchmarks
// and the demo. Plain node:http, no dependencies. Behaviour follows the documented
// upstream (see docs "The upstream"); faults can be injected per call, by default, or
// at random from a seeded PRNG.

import { createHash, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export type Fault =
  | { kind: 'latency'; ms: number }
  | {
      kind: 'status';
      status: number;
      code?: string;
      message?: string;
      retryAfter?: string;
      plainError?: boolean;
      /** Answer only after this many ms (an error can be as slow as a success). */
      afterMs?: number;
    }
  | { kind: 'reset' }
  | { kind: 'hang' }
  | { kind: 'garbage'; status?: number; body?: string }
  | { kind: 'malformed' };

export interface RecordedCall {
  method: string;
  path: string;
  headers: Record<string, string | string[] | undefined>;
  token: string | undefined;
  rawBody: string;
  body: unknown;
  at: number;
  /** True once the connection closed before a reply was sent (client abort, or a reset fault). */
  closedEarly: boolean;
}

export interface FakeUpstreamOptions {
  tokens?: string[];
  latencyMs?: number;
  asyncReadyAfterMs?: number;
  host?: string;
  port?: number;
}

export interface RandomFaults {
  rate: number;
  seed: number;
  faults: Fault[];
}

export interface FakeUpstream {
  readonly url: string;
  readonly calls: RecordedCall[];
  callCount(path?: string): number;
  enqueueFaults(...faults: Fault[]): void;
  setDefaultFault(fault: Fault | undefined): void;
  setRandomFaults(opts: RandomFaults | undefined): void;
  setLatency(ms: number): void;
  revokeToken(token: string, code: RevocationCode): void;
  reset(): void;
  close(): Promise<void>;
}

export type RevocationCode = 'invalid_token' | 'token_expired' | 'used_up' | 'disabled';

export const FAKE_UPSTREAM_DEFAULT_TOKEN = 'test-upstream-token';

const RECOGNITION_PATH = '/captcha/recognition/hcaptcha';
const TASKS_PATH = '/captcha/tasks';
const CONTROL_PREFIX = '/__fake';

const DEFAULT_CODES: Readonly<Record<number, string>> = {
  400: 'bad_request',
  401: 'invalid_token',
  403: 'forbidden',
  404: 'not_found',
  408: 'timeout',
  429: 'too_many_requests',
  500: 'api_error',
  502: 'api_error',
  503: 'api_error',
  504: 'timeout',
};

const REVOCATION_STATUS: Readonly<Record<RevocationCode, number>> = {
  invalid_token: 401,
  token_expired: 401,
  used_up: 403,
  disabled: 403,
};

const REVOCATION_MESSAGES: Readonly<Record<RevocationCode, string>> = {
  invalid_token: 'The token is invalid.',
  token_expired: 'The token has expired.',
  used_up: 'The balance of this token is used up, please recharge.',
  disabled: 'The token has been disabled.',
};

const FAULT_KINDS = new Set(['latency', 'status', 'reset', 'hang', 'garbage', 'malformed']);

/** First 8 hex characters of SHA-256: deterministic, short, not reversible. */
export function fingerprint(value: string): string {
  return createHash('sha256').update(value).digest('hex').slice(0, 8);
}

/** The solution the fake returns for a question and its images (sync and async alike). */
export function deriveSolution(question: string, queries: readonly string[]) {
  const label = createHash('sha256')
    .update(JSON.stringify([question, queries]))
    .digest('hex')
    .slice(0, 8);
  return { label, box: ['360', '276'], confidences: 0.635 };
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

type Parsed = { ok: true; value: unknown } | { ok: false };

function parseJson(text: string): Parsed {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false };
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isNonNegativeNumber(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0;
}

function isOptionalString(value: unknown): boolean {
  return value === undefined || typeof value === 'string';
}

/** Runtime check of a fault received over HTTP; returns an error message or undefined. */
function faultProblem(value: unknown): string | undefined {
  if (!isRecord(value) || typeof value.kind !== 'string' || !FAULT_KINDS.has(value.kind)) {
    return `a fault must be an object whose kind is one of ${[...FAULT_KINDS].join(', ')}`;
  }
  switch (value.kind) {
    case 'latency':
      return isNonNegativeNumber(value.ms) ? undefined : 'latency fault needs ms >= 0';
    case 'status': {
      const status = value.status;
      if (typeof status !== 'number' || !Number.isInteger(status) || status < 200 || status > 599) {
        return 'status fault needs an integer status between 200 and 599';
      }
      if (
        !isOptionalString(value.code) ||
        !isOptionalString(value.message) ||
        !isOptionalString(value.retryAfter) ||
        !(value.plainError === undefined || typeof value.plainError === 'boolean')
      ) {
        return 'status fault: code, message and retryAfter must be strings, plainError a boolean';
      }
      if (value.afterMs !== undefined && !isNonNegativeNumber(value.afterMs)) {
        return 'status fault: afterMs must be a number >= 0';
      }
      return undefined;
    }
    case 'garbage':
      if (
        value.status !== undefined &&
        (typeof value.status !== 'number' ||
          !Number.isInteger(value.status) ||
          value.status < 200 ||
          value.status > 599)
      ) {
        return 'garbage fault: status must be an integer between 200 and 599';
      }
      return isOptionalString(value.body) ? undefined : 'garbage fault: body must be a string';
    default:
      return undefined;
  }
}

function checkRandomFaults(opts: RandomFaults): void {
  if (typeof opts.rate !== 'number' || !(opts.rate >= 0 && opts.rate <= 1)) {
    throw new RangeError('random faults: rate must be between 0 and 1');
  }
  if (typeof opts.seed !== 'number' || !Number.isFinite(opts.seed)) {
    throw new RangeError('random faults: seed must be a finite number');
  }
  if (!Array.isArray(opts.faults) || (opts.rate > 0 && opts.faults.length === 0)) {
    throw new RangeError('random faults: faults must be a non-empty array');
  }
}

function checkLatency(ms: number): void {
  if (!isNonNegativeNumber(ms)) throw new RangeError('latency must be a finite number >= 0');
}

function bearerToken(header: string | undefined): string | undefined {
  const match = header ? /^Bearer\s+(\S.*)$/i.exec(header.trim()) : null;
  return match?.[1]?.trim() || undefined;
}

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  if (res.destroyed || res.writableEnded) return;
  const text = JSON.stringify(body);
  res.writeHead(status, {
    ...headers,
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(text)),
  });
  res.end(text);
}

function sendError(
  res: ServerResponse,
  status: number,
  code: string,
  message: string,
  opts: { plainError?: boolean; retryAfter?: string } = {},
): void {
  const body = {
    success: false,
    error: opts.plainError ? message : { code, message },
    trace_id: randomUUID(),
  };
  const headers: Record<string, string> = {};
  if (opts.retryAfter !== undefined) headers['retry-after'] = opts.retryAfter;
  sendJson(res, status, body, headers);
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

interface Task {
  question: string;
  queries: string[];
  readyAt: number;
}

/** Start the fake on an ephemeral port (by default) and resolve once it listens. */
export async function startFakeUpstream(options: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const host = options.host ?? '127.0.0.1';
  const tokens = new Set(options.tokens ?? [FAKE_UPSTREAM_DEFAULT_TOKEN]);
  const initialLatencyMs = options.latencyMs ?? 0;
  const asyncReadyAfterMs = options.asyncReadyAfterMs ?? 0;
  checkLatency(initialLatencyMs);
  checkLatency(asyncReadyAfterMs);

  const calls: RecordedCall[] = [];
  const faultQueue: Fault[] = [];
  const revoked = new Map<string, RevocationCode>();
  const tasks = new Map<string, Task>();
  const timers = new Set<NodeJS.Timeout>();
  const sockets = new Set<Socket>();
  let latencyMs = initialLatencyMs;
  let defaultFault: Fault | undefined;
  let random: (RandomFaults & { next: () => number }) | undefined;
  let closing: Promise<void> | undefined;

  /** Resolves after ms; if close() runs first the timer is cleared and it never resolves. */
  function sleep(ms: number): Promise<void> {
    if (ms <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        timers.delete(timer);
        resolve();
      }, ms);
      timers.add(timer);
    });
  }

  function nextFault(): Fault | undefined {
    const queued = faultQueue.shift();
    if (queued) return queued;
    if (random && random.faults.length > 0 && random.next() < random.rate) {
      return random.faults[Math.floor(random.next() * random.faults.length)];
    }
    return defaultFault;
  }

  function setRandom(opts: RandomFaults | undefined): void {
    if (opts === undefined) {
      random = undefined;
      return;
    }
    checkRandomFaults(opts);
    random = {
      rate: opts.rate,
      seed: opts.seed,
      faults: [...opts.faults],
      next: mulberry32(opts.seed),
    };
  }

  function reset(): void {
    calls.length = 0;
    faultQueue.length = 0;
    revoked.clear();
    tasks.clear();
    defaultFault = undefined;
    random = undefined;
    latencyMs = initialLatencyMs;
  }

  /** Applies a fault. Returns true when the response is settled (or deliberately never will be). */
  async function applyFault(
    fault: Fault,
    req: IncomingMessage,
    res: ServerResponse,
  ): Promise<boolean> {
    switch (fault.kind) {
      case 'latency':
        await sleep(fault.ms);
        return false;
      case 'status': {
        if (fault.afterMs) await sleep(fault.afterMs);
        const code =
          fault.code ??
          DEFAULT_CODES[fault.status] ??
          (fault.status >= 500 ? 'api_error' : 'bad_request');
        const message = fault.message ?? `Injected fault: HTTP ${fault.status} ${code}.`;
        sendError(res, fault.status, code, message, {
          plainError: fault.plainError,
          retryAfter: fault.retryAfter,
        });
        return true;
      }
      case 'reset':
        req.socket.destroy();
        return true;
      case 'hang':
        return true;
      case 'garbage': {
        const body = fault.body ?? '<html>oops</html>';
        res.writeHead(fault.status ?? 200, {
          'content-type': 'text/html',
          'content-length': String(Buffer.byteLength(body)),
        });
        res.end(body);
        return true;
      }
      case 'malformed':
        sendJson(res, 200, { elapsed: 1.2 });
        return true;
    }
  }

  /** Returns true when the request was refused (response sent). */
  function refuseAuth(token: string | undefined, res: ServerResponse): boolean {
    if (token === undefined) {
      sendError(
        res,
        400,
        'no_token',
        'No token provided, please add `authorization: Bearer <token>`.',
      );
      return true;
    }
    const revocation = revoked.get(token);
    if (revocation) {
      sendError(res, REVOCATION_STATUS[revocation], revocation, REVOCATION_MESSAGES[revocation]);
      return true;
    }
    if (!tokens.has(token)) {
      sendError(res, 401, 'invalid_token', REVOCATION_MESSAGES.invalid_token);
      return true;
    }
    return false;
  }

  async function recognition(parsed: Parsed, res: ServerResponse): Promise<void> {
    if (!parsed.ok)
      return sendError(res, 400, 'bad_request', 'The request body is not valid JSON.');
    const body = parsed.value;
    if (!isRecord(body)) {
      return sendError(res, 400, 'bad_request', 'The request body must be a JSON object.');
    }
    const { question, queries } = body;
    if (typeof question !== 'string' || question.trim() === '') {
      return sendError(
        res,
        400,
        'bad_request',
        '`question` is required and must be a non-empty string.',
      );
    }
    if (
      !Array.isArray(queries) ||
      queries.length === 0 ||
      !queries.every((q): q is string => typeof q === 'string' && q !== '')
    ) {
      return sendError(
        res,
        400,
        'bad_request',
        '`queries` is required and must be a non-empty array of Base64 image strings.',
      );
    }
    if (body.async !== undefined && typeof body.async !== 'boolean') {
      return sendError(res, 400, 'bad_request', '`async` must be a boolean.');
    }
    if (body.async === true) {
      const taskId = randomUUID();
      tasks.set(taskId, { question, queries, readyAt: Date.now() + asyncReadyAfterMs });
      return sendJson(res, 200, { task_id: taskId, trace_id: randomUUID() });
    }
    const elapsed = Math.round(latencyMs / 100) / 10;
    await sleep(latencyMs);
    sendJson(res, 200, { solution: deriveSolution(question, queries), elapsed });
  }

  function poll(parsed: Parsed, res: ServerResponse) {
    if (!parsed.ok)
      return sendError(res, 400, 'bad_request', 'The request body is not valid JSON.');
    const taskId = isRecord(parsed.value) ? parsed.value.task_id : undefined;
    if (typeof taskId !== 'string' || taskId === '') {
      return sendError(res, 400, 'bad_request', '`task_id` is required and must be a string.');
    }
    const task = tasks.get(taskId);
    if (!task) return sendError(res, 404, 'not_found', `Task ${taskId} was not found.`);
    if (Date.now() < task.readyAt) {
      return sendJson(res, 200, { task_id: taskId, status: 'processing', trace_id: randomUUID() });
    }
    sendJson(res, 200, {
      task_id: taskId,
      status: 'ready',
      solution: deriveSolution(task.question, task.queries),
      trace_id: randomUUID(),
    });
  }

  function control(method: string, path: string, parsed: Parsed, res: ServerResponse) {
    if (method === 'GET' && path === `${CONTROL_PREFIX}/calls`) {
      return sendJson(res, 200, {
        count: calls.length,
        calls: calls.map((c) => ({
          method: c.method,
          path: c.path,
          tokenFingerprint: c.token === undefined ? null : fingerprint(c.token),
          requestId: c.headers['x-request-id'] ?? null,
          at: c.at,
        })),
      });
    }
    if (method === 'POST' && path === `${CONTROL_PREFIX}/reset`) {
      reset();
      return sendJson(res, 200, { ok: true });
    }
    if (method === 'POST' && path === `${CONTROL_PREFIX}/faults`) {
      const problem = applyControlFaults(parsed);
      if (problem) return sendError(res, 400, 'bad_request', problem);
      return sendJson(res, 200, { ok: true, queued: faultQueue.length });
    }
    sendError(res, 404, 'no_api', `No control route ${method} ${path}.`);
  }

  /** Validates everything first, then applies it all; returns an error message on bad input. */
  function applyControlFaults(parsed: Parsed): string | undefined {
    if (!parsed.ok || !isRecord(parsed.value)) return 'the body must be a JSON object';
    const { enqueue, default: dflt, random: rnd, latencyMs: latency } = parsed.value;
    if (enqueue !== undefined) {
      if (!Array.isArray(enqueue)) return '`enqueue` must be an array of faults';
      for (const fault of enqueue) {
        const problem = faultProblem(fault);
        if (problem) return `enqueue: ${problem}`;
      }
    }
    if (dflt !== undefined && dflt !== null) {
      const problem = faultProblem(dflt);
      if (problem) return `default: ${problem}`;
    }
    let randomOpts: RandomFaults | undefined;
    if (rnd !== undefined && rnd !== null) {
      if (!isRecord(rnd) || !Array.isArray(rnd.faults))
        return '`random` must be {rate, seed, faults}';
      for (const fault of rnd.faults) {
        const problem = faultProblem(fault);
        if (problem) return `random: ${problem}`;
      }
      randomOpts = rnd as unknown as RandomFaults;
      try {
        checkRandomFaults(randomOpts);
      } catch (err) {
        return (err as Error).message;
      }
    }
    if (latency !== undefined && !isNonNegativeNumber(latency)) {
      return '`latencyMs` must be a number >= 0';
    }
    // Everything is valid: apply.
    if (Array.isArray(enqueue)) faultQueue.push(...(enqueue as Fault[]));
    if (dflt !== undefined) defaultFault = dflt === null ? undefined : (dflt as Fault);
    if (rnd !== undefined) setRandom(randomOpts);
    if (typeof latency === 'number') latencyMs = latency;
    return undefined;
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const at = Date.now();
    const method = req.method ?? 'GET';
    const path = new URL(req.url ?? '/', 'http://fake.invalid').pathname;
    let raw: Buffer;
    try {
      raw = await readBody(req);
    } catch {
      return; // the client went away mid-body
    }
    const rawBody = raw.toString('utf8');
    const parsed = parseJson(rawBody);

    if (path === CONTROL_PREFIX || path.startsWith(`${CONTROL_PREFIX}/`)) {
      return control(method, path, parsed, res);
    }

    const authorization = req.headers.authorization;
    const token = bearerToken(authorization);
    const record: RecordedCall = {
      method,
      path,
      headers: { ...req.headers },
      token,
      rawBody,
      body: parsed.ok ? parsed.value : undefined,
      at,
      closedEarly: false,
    };
    calls.push(record);
    res.once('close', () => {
      if (!res.writableFinished) record.closedEarly = true;
    });

    const isApi = method === 'POST' && (path === RECOGNITION_PATH || path === TASKS_PATH);
    if (!isApi) return sendError(res, 404, 'no_api', `No API found for ${method} ${path}.`);

    const fault = nextFault();
    if (fault && (await applyFault(fault, req, res))) return;
    if (res.destroyed) return;
    if (refuseAuth(token, res)) return;
    if (path === RECOGNITION_PATH) return recognition(parsed, res);
    return poll(parsed, res);
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent && !res.destroyed) {
        sendError(res, 500, 'api_error', `Fake upstream bug: ${(err as Error).message}`);
      } else {
        res.destroy();
      }
    });
  });
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 0;
  server.requestTimeout = 0;
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;

  return {
    url,
    calls,
    callCount(path?: string) {
      return path === undefined ? calls.length : calls.filter((c) => c.path === path).length;
    },
    enqueueFaults(...faults: Fault[]) {
      faultQueue.push(...faults);
    },
    setDefaultFault(fault: Fault | undefined) {
      defaultFault = fault;
    },
    setRandomFaults: setRandom,
    setLatency(ms: number) {
      checkLatency(ms);
      latencyMs = ms;
    },
    revokeToken(token: string, code: RevocationCode) {
      revoked.set(token, code);
    },
    reset,
    close() {
      closing ??= new Promise<void>((resolve) => {
        for (const timer of timers) clearTimeout(timer);
        timers.clear();
        server.close(() => resolve());
        server.closeAllConnections();
        for (const socket of sockets) socket.destroy();
      });
      return closing;
    },
  };
}
