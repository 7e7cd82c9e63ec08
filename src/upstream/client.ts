import { Pool } from 'undici';
import { GatewayError } from '../errors.ts';
import { isRecognitionSuccess } from '../schemas/captcha.ts';
import { redactedExcerpt } from './redact.ts';

/** Named defaults for the connection pool; each one is a deliberate choice, not undici's default. */
export const POOL_DEFAULTS = {
  connections: 256,
  connectTimeoutMs: 10_000,
  keepAliveTimeoutMs: 30_000,
  keepAliveMaxTimeoutMs: 300_000,
  /** Upstream JSON is small; a bigger reply is a fault, not an answer. */
  maxResponseBytes: 4 * 1024 * 1024,
} as const;

export type UpstreamPath = '/captcha/recognition/hcaptcha' | '/captcha/tasks';

/** What the caller wants back: a sync solution, an async task id, or any JSON (task polling). */
export type ExpectedReply = 'solution' | 'task_id' | 'json';

/** Minimal logger shape (pino-compatible) so the core stays framework-free. */
export interface CoreLogger {
  error(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/** Filled in while the call runs, so the completion log line has it even when the call fails. */
export interface UpstreamCallReport {
  upstream_status?: number;
  upstream_ms?: number;
  upstream_trace_id?: string;
  retries: number;
}

export interface UpstreamCall {
  path: UpstreamPath;
  /** Serialized JSON body, exactly what is forwarded. */
  body: string;
  expect: ExpectedReply;
  traceId: string;
  report: UpstreamCallReport;
  log: CoreLogger;
}

/** An upstream answer to pass through unchanged: status and the exact body bytes. */
export interface UpstreamReply {
  status: number;
  body: Buffer;
  json: unknown;
  /** The upstream's `retry-after` header, if any. */
  retryAfter?: string;
}

export interface UpstreamClientOptions {
  baseUrl: string;
  tokens: readonly string[];
  timeoutMs: number;
  pool?: Partial<typeof POOL_DEFAULTS>;
}

export class UpstreamClient {
  readonly #pool: Pool;
  readonly #pathPrefix: string;
  readonly #tokens: readonly string[];
  readonly #timeoutMs: number;

  constructor(options: UpstreamClientOptions) {
    const url = new URL(options.baseUrl);
    const pool = { ...POOL_DEFAULTS, ...options.pool };
    this.#pathPrefix = url.pathname.replace(/\/+$/, '');
    this.#tokens = options.tokens;
    this.#timeoutMs = options.timeoutMs;
    this.#pool = new Pool(url.origin, {
      connections: pool.connections,
      pipelining: 1,
      connectTimeout: pool.connectTimeoutMs,
      keepAliveTimeout: pool.keepAliveTimeoutMs,
      keepAliveMaxTimeout: pool.keepAliveMaxTimeoutMs,
      // The whole-call deadline below is the real bound; these only stop a stuck socket earlier.
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
      maxResponseSize: pool.maxResponseBytes,
    });
  }

  /**
   * Forwards one request within the deadline. Resolves with an answer to pass through unchanged;
   * rejects with a GatewayError for every outcome the contract maps (502, 503, 504).
   */
  async call(call: UpstreamCall): Promise<UpstreamReply> {
    const deadline = new AbortController();
    const timer = setTimeout(
      () =>
        deadline.abort(
          new GatewayError('timeout', `upstream did not answer within ${this.#timeoutMs} ms`),
        ),
      this.#timeoutMs,
    );
    try {
      const reply = await this.#attempt(call, this.#tokens[0] ?? '', deadline.signal);
      return this.#judge(call, reply);
    } finally {
      clearTimeout(timer);
    }
  }

  async #attempt(call: UpstreamCall, token: string, signal: AbortSignal): Promise<UpstreamReply> {
    const started = performance.now();
    try {
      const response = await this.#pool.request({
        method: 'POST',
        path: this.#pathPrefix + call.path,
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/json',
          accept: 'application/json',
          'x-request-id': call.traceId,
        },
        body: call.body,
        signal,
      });
      const body = Buffer.from(await response.body.arrayBuffer());
      call.report.upstream_status = response.statusCode;
      const retryAfter = response.headers['retry-after'];
      return {
        status: response.statusCode,
        body,
        json: parseJson(body),
        retryAfter: typeof retryAfter === 'string' ? retryAfter : undefined,
      };
    } catch (error) {
      if (signal.aborted && signal.reason instanceof GatewayError) throw signal.reason;
      throw new GatewayError('upstream_error', 'upstream could not be reached', { cause: error });
    } finally {
      call.report.upstream_ms = Math.round(performance.now() - started);
    }
  }

  /** Applies the contract's mapping to an answer the upstream gave. */
  #judge(call: UpstreamCall, reply: UpstreamReply): UpstreamReply {
    const traceId = (reply.json as { trace_id?: unknown } | undefined)?.trace_id;
    if (typeof traceId === 'string') call.report.upstream_trace_id = traceId.slice(0, 128);

    const malformed = (why: string) => {
      call.log.error(
        { upstream_status: reply.status, upstream_excerpt: redactedExcerpt(reply.body) },
        `malformed upstream reply: ${why}`,
      );
      return new GatewayError('upstream_error', 'upstream sent a malformed reply');
    };
    if (reply.json === undefined) throw malformed('body is not JSON');
    if (reply.status === 401 || reply.status === 403) {
      call.log.error(
        { upstream_status: reply.status, upstream_code: upstreamErrorCode(reply.json) },
        "upstream rejected the gateway's own token or balance",
      );
      throw new GatewayError('upstream_error', "the gateway's upstream credentials were rejected");
    }
    if (reply.status === 429) {
      // The client's own 429 always means its own limit; the upstream's is our problem.
      throw new GatewayError(
        'upstream_unavailable',
        'upstream is rate limiting the gateway; retry later',
        {
          headers: { 'retry-after': retryAfterSeconds(reply.retryAfter) },
        },
      );
    }
    if (reply.status >= 200 && reply.status < 300 && call.expect !== 'json') {
      if (!isRecognitionSuccess(reply.json, call.expect === 'task_id')) {
        throw malformed(`a ${reply.status} without ${call.expect}`);
      }
    }
    return reply;
  }

  async close(): Promise<void> {
    await this.#pool.close();
  }
}

/** `retry-after` as whole seconds (it may be seconds or an HTTP date); 1 when absent or unreadable. */
export function retryAfterSeconds(value: string | undefined, now = Date.now()): string {
  if (value === undefined) return '1';
  const seconds = /^\d+$/.test(value.trim())
    ? Number(value.trim())
    : (Date.parse(value) - now) / 1000;
  return Number.isFinite(seconds) ? String(Math.max(1, Math.ceil(seconds))) : '1';
}

function parseJson(body: Buffer): unknown {
  try {
    const value: unknown = JSON.parse(body.toString('utf8'));
    return typeof value === 'object' && value !== null ? value : undefined;
  } catch {
    return undefined;
  }
}

/** The upstream's `error.code`, or its plain-string `error`, cut short for a log field. */
function upstreamErrorCode(json: unknown): string | undefined {
  const error = (json as { error?: unknown } | undefined)?.error;
  if (typeof error === 'string') return error.slice(0, 64);
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code.slice(0, 64) : undefined;
}
