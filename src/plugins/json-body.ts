import { isUtf8 } from 'node:buffer';
import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import type { RawHit } from '../cache/cached-answers.ts';
import { parseCacheControl } from '../cache/cached-answers.ts';
import { GatewayError } from '../errors.ts';

declare module 'fastify' {
  interface FastifyRequest {
    /** `answers.rawDigest()` of the body, on routes that answer repeats from raw bytes. */
    rawDigest: string | undefined;
    /** Set when the body's exact bytes were answered before and the answer is still cached. */
    rawHit: RawHit | undefined;
  }
  interface FastifyContextConfig {
    /** Repeats of byte-identical bodies are answered from the cache before parsing. */
    answerRepeatsFromRawBytes?: boolean;
  }
}

/** Marks a body that was not parsed because its bytes were answered from the cache. */
const NOT_PARSED = Object.freeze({});

/**
 * JSON is the only body type (text/plain, a Fastify default, must answer 415, not reach
 * validation). On routes that opt in, the parser answers a repeat of
 * byte-identical bytes from the cache without parsing or validating them again: they were
 * validated when their answer was stored.
 */
const jsonBody: FastifyPluginAsync = async (app) => {
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.decorateRequest('rawDigest', undefined);
  app.decorateRequest('rawHit', undefined);
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (request, body, done) => {
    const raw = body as Buffer;
    request.report.body_bytes = raw.length;
    // JSON text is UTF-8 (RFC 8259 §8.1). Decoding other bytes would replace them with U+FFFD and
    // forward a question the client never sent; refuse them instead. The default parser accepts
    // a Buffer (secure-json-parse decodes it); its type says string.
    const parse = () =>
      isUtf8(raw)
        ? parseJson(request, raw as unknown as string, done)
        : done(new GatewayError('bad_request', 'request body is not valid UTF-8'), undefined);
    const directives = parseCacheControl(request.headers['cache-control']);
    if (
      !request.routeOptions.config.answerRepeatsFromRawBytes ||
      directives.noCache ||
      directives.noStore
    ) {
      return parse();
    }
    request.rawDigest = app.answers.rawDigest(request.routeOptions.url ?? '', raw);
    if (request.rawDigest === undefined) return parse();
    app.answers.rawHit(request.rawDigest).then(
      (hit) => {
        if (!hit) return parse();
        request.rawHit = hit;
        done(null, NOT_PARSED);
      },
      () => parse(),
    );
  });
};

export default fp(jsonBody, {
  name: 'json-body',
  fastify: '5.x',
  dependencies: ['request-context', 'cache'],
});
