import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import {
  type FastifyInstance,
  type FastifyPluginAsync,
  type FastifyReply,
  type FastifyRequest,
  LogController,
} from 'fastify';
import fp from 'fastify-plugin';
import type { CacheEvent } from '../cache/cached-answers.ts';
import type { LimitName } from '../errors.ts';
import type { UpstreamCallReport } from '../upstream/client.ts';

/** Fields of the one completion log line that request handling fills in as it goes. */
export interface RequestReport extends UpstreamCallReport {
  client?: string;
  cache?: CacheEvent;
  images?: number;
  body_bytes?: number;
  /** The envelope code of an error the gateway answered with. */
  error_code?: string;
  /** The limit that refused this request, if one did. */
  limit?: LimitName;
}

declare module 'fastify' {
  interface FastifyRequest {
    report: RequestReport;
    /** Epoch ms the request arrived: its deadline counts from here. */
    receivedAt: number;
    /** Aborted when the client leaves before its answer: a call not yet sent need not be. */
    left: AbortSignal;
  }
  interface FastifyContextConfig {
    /** Completion line at debug level (health probes arrive every few seconds). */
    quietLog?: boolean;
  }
}

const TRACE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** Honours a well-formed incoming `x-request-id`, otherwise makes one (Fastify's genReqId). */
export function traceIdFor(req: IncomingMessage): string {
  const incoming = req.headers['x-request-id'];
  return typeof incoming === 'string' && TRACE_ID.test(incoming) ? incoming : randomUUID();
}

/** Status logged for a request whose client went away before the answer (nginx's 499). */
export const CLIENT_CLOSED_REQUEST = 499;

/** One completed (or abandoned) request, as metrics and usage counters see it. */
export interface Completion {
  route: string;
  status: number;
  clientId: string | undefined;
  durationMs: number;
  cache: CacheEvent | undefined;
  /** An upstream call made for this request was billed (the upstream answered 2xx). */
  billed: boolean;
  errorCode: string | undefined;
  limit: LimitName | undefined;
}

/** Called once per request when it completes, e.g. to count it. */
export type CompletionListener = (completion: Completion) => void;

declare module 'fastify' {
  interface FastifyInstance {
    /** Adds a listener called once per completed (or abandoned) request. */
    onRequestCompleted(listener: CompletionListener): void;
  }
}

const kCompleted = Symbol('completed');
const kStartedAt = Symbol('startedAt');
const kListeners = Symbol('completionListeners');
type Tracked = RequestReport & { [kCompleted]?: boolean; [kStartedAt]: number };
type WithListeners = { [kListeners]?: CompletionListener[] };

/** The request a socket is serving, so a parser error on that socket is logged as that request. */
const requestOnSocket = new WeakMap<Socket, FastifyRequest>();

/** Starts tracking a request: its report, its start time, and the socket it arrived on. */
export function trackRequest(request: FastifyRequest): void {
  request.report = { retries: 0, [kStartedAt]: performance.now() } as Tracked;
  request.receivedAt = Date.now();
  if (request.raw.socket) requestOnSocket.set(request.raw.socket, request);
}

/** The request being served on `socket`, if any. */
export function requestServedOn(socket: Socket): FastifyRequest | undefined {
  return requestOnSocket.get(socket);
}

function notify(app: object, completion: Completion): void {
  for (const listener of (app as WithListeners)[kListeners] ?? []) listener(completion);
}

/**
 * Writes the request's one completion line and tells the listeners, exactly once: a client that
 * disconnects while its request waits on the upstream is logged as 499 when it leaves, and the
 * late answer (if Fastify ever finishes it) does not log again.
 */
export function completeRequest(
  request: FastifyRequest,
  status: number,
  details: { error?: Error | null; clientError?: string } = {},
): void {
  const report = request.report as Tracked | null;
  if (!report || report[kCompleted]) return;
  report[kCompleted] = true;
  const { socket } = request.raw;
  if (socket && requestOnSocket.get(socket) === request) requestOnSocket.delete(socket);
  const durationMs = performance.now() - report[kStartedAt];
  const route = request.routeOptions.url ?? 'unmatched';
  const failed = details.error != null || status >= 500;
  // Probes (and scrapes) arrive every few seconds on every replica: debug whatever they answer
  // (a draining /readyz is 503 by design), unless writing the answer itself failed.
  const quiet = request.routeOptions.config?.quietLog === true && details.error == null;
  const level = quiet ? 'debug' : failed ? 'warn' : 'info';
  request.log[level](
    {
      client: report.client,
      route,
      method: request.method,
      status,
      duration_ms: Math.round(durationMs * 100) / 100,
      cache: report.cache,
      upstream_status: report.upstream_status,
      upstream_ms: report.upstream_ms,
      upstream_trace_id: report.upstream_trace_id,
      retries: report.retries,
      retry_budget_exhausted: report.retry_budget_exhausted,
      billed: report.billed,
      images: report.images,
      body_bytes: report.body_bytes,
      error_code: report.error_code,
      limit: report.limit,
      ...(details.error ? { response_error: details.error.message } : {}),
      ...(details.clientError ? { client_error: details.clientError } : {}),
    },
    'request completed',
  );
  notify(request.server, {
    route,
    status,
    clientId: report.client,
    durationMs,
    cache: report.cache,
    billed: report.billed === true,
    errorCode: report.error_code,
    limit: report.limit,
  });
}

/** The completion line of an answer given before any request existed (an unparseable request). */
export function completeUnparsedRequest(
  app: FastifyInstance,
  traceId: string,
  status: number,
  errorCode: string,
  clientError: string | undefined,
): void {
  app.log.info(
    {
      trace_id: traceId,
      route: 'unmatched',
      status,
      error_code: errorCode,
      client_error: clientError,
    },
    'request completed',
  );
  notify(app, {
    route: 'unmatched',
    status,
    clientId: undefined,
    durationMs: 0,
    cache: undefined,
    billed: false,
    errorCode,
    limit: undefined,
  });
}

/**
 * Replaces Fastify's two request lines with exactly one completion line per request. The request
 * logger is bound to `trace_id`, so every line of a request, this one included, carries it.
 */
export class CompletionLogController extends LogController {
  constructor() {
    super({ requestIdLogLabel: 'trace_id' });
  }

  override incomingRequest(): void {}

  override requestCompleted(
    error: Error | null | undefined,
    request: FastifyRequest,
    reply: FastifyReply,
  ): void {
    completeRequest(request, reply.statusCode, { error });
  }
}

/** Gives every request its report, echoes the trace id, and completes abandoned requests. */
const requestContext: FastifyPluginAsync = async (app) => {
  const listeners: CompletionListener[] = [];
  app.decorate(kListeners, listeners);
  app.decorate('onRequestCompleted', (listener: CompletionListener) => {
    listeners.push(listener);
  });
  app.decorateRequest('report', null as unknown as RequestReport);
  app.decorateRequest('receivedAt', 0);
  app.decorateRequest('left', null as unknown as AbortSignal);

  app.addHook('onRequest', (request, reply, done) => {
    trackRequest(request);
    reply.header('x-request-id', request.id);
    // Fastify's onRequestAbort fires only while the body is still arriving; a client that leaves
    // while its request waits on the upstream is seen here, as a response closed unfinished.
    const left = new AbortController();
    request.left = left.signal;
    reply.raw.once('close', () => {
      if (reply.raw.writableFinished) return;
      left.abort();
      completeRequest(request, CLIENT_CLOSED_REQUEST);
    });
    done();
  });
};

export default fp(requestContext, { name: 'request-context', fastify: '5.x' });
