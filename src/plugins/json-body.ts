import { isUtf8 } from 'node:buffer';
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { owned } from '../buffers.ts';
import { GatewayError } from '../errors.ts';
import { parseJsonText } from '../schemas/json-text.ts';

declare module 'fastify' {
  interface FastifyRequest {
    /** The body's exact bytes, from reading until the route releases them (releaseBody). */
    rawBody: Buffer | undefined;
    /** The body as parsed, before validation (numbers in the client's spelling), until released. */
    jsonBody: Record<string, unknown> | undefined;
  }
}

/** The body's exact bytes and parsed JSON; dropped by {@link releaseBody} once forwarded. */
export interface ReadBody {
  raw: Buffer;
  json: Record<string, unknown>;
}

/** Takes the request's body out of the request, so nothing but the forwarded bytes stays held. */
export function releaseBody(request: FastifyRequest): ReadBody {
  const raw = request.rawBody ?? Buffer.alloc(0);
  const json = request.jsonBody ?? {};
  request.rawBody = undefined;
  request.jsonBody = undefined;
  request.body = undefined;
  return { raw, json };
}

const EMPTY = Buffer.alloc(0);

function hasByteOrderMark(raw: Buffer): boolean {
  return raw.length >= 3 && raw[0] === 0xef && raw[1] === 0xbb && raw[2] === 0xbf;
}

/**
 * Two stages of the pipeline. Reading: JSON is the only body type (text/plain, a Fastify default,
 * must answer 415, not reach validation), collected as bytes. Parsing, in preValidation: UTF-8
 * only, no duplicate keys, numbers kept as the client wrote them (schemas/json-text.ts). Parsing
 * comes after the cache's raw-bytes hook, which answers a byte-identical repeat unparsed.
 */
const jsonBody: FastifyPluginAsync = async (app) => {
  app.decorateRequest('rawBody', undefined);
  app.decorateRequest('jsonBody', undefined);
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (request, body, done) => {
    // A UTF-8 byte order mark is not JSON (RFC 8259 §8.1: parsers may ignore it): it is dropped
    // here, so the key, the raw-bytes hit and the forwarded bytes all start at the JSON text.
    const read = hasByteOrderMark(body as Buffer) ? (body as Buffer).subarray(3) : (body as Buffer);
    // Held until the call ends (it is what is forwarded): in a buffer of its own.
    const raw = owned(read);
    request.rawBody = raw;
    request.report.body_bytes = raw.length;
    request.inflightHold?.shrinkTo(raw.length);
    done(null, undefined);
  });

  app.addHook('preValidation', (request, reply, done) => {
    if (reply.sent) return done();
    const raw = request.rawBody ?? (request.routeOptions.schema?.body ? EMPTY : undefined);
    if (raw === undefined) return done();
    // No content-type and no body skips the parser; for a route that takes a body it is empty.
    if (raw.length === 0) {
      return done(new GatewayError('bad_request', 'request body is empty; expected a JSON object'));
    }
    // JSON text is UTF-8 (RFC 8259 §8.1); decoding other bytes would forward U+FFFD instead.
    if (!isUtf8(raw))
      return done(new GatewayError('bad_request', 'request body is not valid UTF-8'));
    const parsed = parseJsonText(raw.toString('utf8'));
    if (!parsed.ok) return done(new GatewayError('bad_request', parsed.problem));
    const { value } = parsed;
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      return done(new GatewayError('bad_request', 'request body must be a JSON object'));
    }
    request.jsonBody = value as Record<string, unknown>;
    request.body = value;
    done();
  });
};

export default fp(jsonBody, {
  name: 'json-body',
  fastify: '5.x',
  dependencies: ['request-context'],
});
