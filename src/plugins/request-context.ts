import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import {
  type FastifyPluginAsync,
  type FastifyReply,
  type FastifyRequest,
  LogController,
} from 'fastify';
import fp from 'fastify-plugin';
import type { UpstreamCallReport } from '../upstream/client.ts';

/** Fields of the one completion log line that request handling fills in as it goes. */
export interface RequestReport extends UpstreamCallReport {
  client?: string;
  cache?: string;
  images?: number;
  body_bytes?: number;
}

declare module 'fastify' {
  interface FastifyRequest {
    report: RequestReport;
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

/** Called once per request when it completes, e.g. to count it. */
export type CompletionListener = (
  request: FastifyRequest,
  status: number,
  durationMs: number,
) => void;

declare module 'fastify' {
  interface FastifyInstance {
    /** Adds a listener called once per completed (or abandoned) request. */
    onRequestCompleted(listener: CompletionListener): void;
  }
}

const kCompleted = Symbol('completed');
const kStartedAt = Symbol('startedAt');
const kListeners = Symbol('completionListeners');
type Tracked = RequestReport & { [kCompleted]?: boolean; [kStartedAt]?: number };

/**
 * Writes the request's one completion line and tells the listeners, exactly once: a client that
 * disconnects while its request waits on the upstream is logged as 499 when it leaves, and the
 * late answer (if Fastify ever finishes it) does not log again.
 */
function completeRequest(
  request: FastifyRequest,
  status: number,
  durationMs: number,
  error?: Error | null,
): void {
  const report = request.report as Tracked | null;
  if (!report || report[kCompleted]) return;
  report[kCompleted] = true;
  const failed = error != null || status >= 500;
  request.log[failed ? 'warn' : 'info'](
    {
      client: report.client,
      route: request.routeOptions.url ?? 'unmatched',
      method: request.method,
      status,
      duration_ms: Math.round(durationMs * 100) / 100,
      cache: report.cache,
      upstream_status: report.upstream_status,
      upstream_ms: report.upstream_ms,
      upstream_trace_id: report.upstream_trace_id,
      retries: report.retries,
      images: report.images,
      body_bytes: report.body_bytes,
      ...(error ? { response_error: error.message } : {}),
    },
    'request completed',
  );
  const listeners = (request.server as unknown as { [kListeners]?: CompletionListener[] })[
    kListeners
  ];
  for (const listener of listeners ?? []) listener(request, status, durationMs);
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
    completeRequest(request, reply.statusCode, reply.elapsedTime, error);
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

  app.addHook('onRequest', (request, reply, done) => {
    request.report = { retries: 0, [kStartedAt]: performance.now() } as Tracked;
    reply.header('x-request-id', request.id);
    done();
  });

  app.addHook('onRequestAbort', async (request) => {
    const startedAt = (request.report as Tracked | null)?.[kStartedAt] ?? performance.now();
    completeRequest(request, CLIENT_CLOSED_REQUEST, performance.now() - startedAt);
  });
};

export default fp(requestContext, { name: 'request-context', fastify: '5.x' });
