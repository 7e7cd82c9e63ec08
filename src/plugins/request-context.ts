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
    const report: Partial<RequestReport> = request.report ?? {};
    const failed = error != null || reply.statusCode >= 500;
    request.log[failed ? 'warn' : 'info'](
      {
        client: report.client,
        route: request.routeOptions.url ?? 'unmatched',
        method: request.method,
        status: reply.statusCode,
        duration_ms: Math.round(reply.elapsedTime * 100) / 100,
        cache: report.cache,
        upstream_status: report.upstream_status,
        upstream_ms: report.upstream_ms,
        upstream_trace_id: report.upstream_trace_id,
        retries: report.retries ?? 0,
        images: report.images,
        body_bytes: report.body_bytes,
        ...(error ? { response_error: error.message } : {}),
      },
      'request completed',
    );
  }
}

/** Gives every request its report and echoes the trace id on every response. */
const requestContext: FastifyPluginAsync = async (app) => {
  app.decorateRequest('report', null as unknown as RequestReport);

  app.addHook('onRequest', async (request, reply) => {
    request.report = { retries: 0 };
    reply.header('x-request-id', request.id);
  });
};

export default fp(requestContext, { name: 'request-context', fastify: '5.x' });
