import { randomUUID } from 'node:crypto';
import type { Socket } from 'node:net';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { GatewayError } from './errors.ts';
import {
  completeRequest,
  completeUnparsedRequest,
  requestServedOn,
  trackRequest,
} from './plugins/request-context.ts';

/** Node's parser errors we answer (others, like a reset, have nobody left to answer). */
const CLIENT_ERRORS: Readonly<Record<string, () => GatewayError>> = {
  ERR_HTTP_REQUEST_TIMEOUT: () =>
    new GatewayError(
      'request_timeout',
      'the request was not received in full within the request timeout',
    ),
  HPE_HEADER_OVERFLOW: () =>
    new GatewayError('headers_too_large', 'request headers exceed the size limit'),
};
const malformed = () => new GatewayError('bad_request', 'malformed HTTP request');
const REASONS: Readonly<Record<number, string>> = {
  400: 'Bad Request',
  408: 'Request Timeout',
  431: 'Request Header Fields Too Large',
};

/**
 * Requests Node's HTTP parser rejects never reach Fastify (no route, no hooks): answer them with the
 * envelope and a trace id anyway, and log one completion line so they are not invisible. An
 * unreadable request's own x-request-id cannot be trusted: a fresh id is used. Fastify calls this
 * with the instance as `this`.
 */
export function clientErrorHandler(
  this: FastifyInstance,
  error: NodeJS.ErrnoException,
  socket: Socket,
): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) return;
  const answer = (CLIENT_ERRORS[error.code ?? ''] ?? malformed)();
  // A request timeout hits a request Fastify already knows (its headers were read): answer and
  // log it as that request, under its own trace id. Otherwise nothing was readable.
  const request = requestServedOn(socket);
  const traceId = request?.id ?? randomUUID();
  const body = JSON.stringify(answer.envelope(traceId));
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${answer.statusCode} ${REASONS[answer.statusCode]}\r\n` +
        `content-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
        `x-request-id: ${traceId}\r\nconnection: close\r\n\r\n${body}`,
    );
  }
  if (request) {
    request.report.error_code = answer.code;
    completeRequest(request, answer.statusCode, { clientError: error.code });
  } else {
    completeUnparsedRequest(this, traceId, answer.statusCode, answer.code, error.code);
  }
  socket.destroy();
}

/** A URL Fastify cannot decode (`/%zz`) never reaches a route: answer it like any bad request. */
export function answerFrameworkError(
  _error: Error,
  request: FastifyRequest,
  reply: FastifyReply,
): void {
  // No hook runs for such a request, and Fastify writes no completion line for it: do both here.
  trackRequest(request);
  const error = new GatewayError('bad_request', 'the request URL is malformed');
  request.report.error_code = error.code;
  reply.code(400).header('x-request-id', request.id).send(error.envelope(request.id));
  completeRequest(request, 400);
}
