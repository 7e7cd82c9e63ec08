import type { FastifyPluginAsync, FastifyReply, FastifyRequest, RouteHandlerMethod } from 'fastify';
import fp from 'fastify-plugin';
import { type InflightHold, InflightLimits } from '../limits/inflight.ts';

declare module 'fastify' {
  interface FastifyInstance {
    inflight: InflightLimits;
  }
  interface FastifyRequest {
    /** This request's hold on the in-flight limits, while it has one. */
    inflightHold: InflightHold | undefined;
  }
  interface FastifyContextConfig {
    /** Requests to this route count against the client's in-flight limits and the byte budget. */
    inflightLimits?: boolean;
  }
}

export interface AdmissionOptions {
  maxBytes: number;
  maxBytesPerClient: number;
  /** Requests in flight per client when its clients-file record sets no `maxInFlight`. */
  defaultMaxInFlight: number;
  /** BODY_LIMIT_BYTES: what a body of unknown length (chunked) reserves until it is read. */
  bodyLimit: number;
}

/**
 * Admission: per-client requests in flight and the byte budget, checked before the body is read
 * (from content-length) and held until the answer is sent — or, when the client leaves first,
 * until the handler is done with the call that holds its bytes (an upstream call goes on for its
 * merged requests and the cache; its body stays in memory until then). The hook is
 * added to each opted-in route after the rate limit's (both are route-level onRequest hooks,
 * appended in plugin order), so a refused request never takes a rate-limit unit twice.
 */
const admission: FastifyPluginAsync<AdmissionOptions> = async (app, options) => {
  const limits = new InflightLimits(options);
  app.decorate('inflight', limits);

  function admit(request: FastifyRequest, reply: FastifyReply, done: (error?: Error) => void) {
    const client = request.client;
    if (!client) return done();
    const length = Number(request.headers['content-length']);
    // At most the body limit: a longer body is refused with 413 as soon as it is read, so counting
    // all of it here would answer 429 "retry later" to a request that can never succeed.
    const bytes =
      Number.isSafeInteger(length) && length >= 0
        ? Math.min(length, options.bodyLimit)
        : options.bodyLimit;
    try {
      const hold = limits.admit(client.id, client.maxInFlight ?? options.defaultMaxInFlight, bytes);
      request.inflightHold = hold;
      reply.raw.once('close', () => {
        if (!handling.has(request)) hold.release();
      });
    } catch (error) {
      return done(error as Error);
    }
    done();
  }

  /** Requests whose handler is running: a client leaving them does not end their hold. */
  const handling = new WeakSet<FastifyRequest>();
  function holdingUntilDone(handler: RouteHandlerMethod): RouteHandlerMethod {
    return async function (this: unknown, request, reply) {
      handling.add(request);
      try {
        return await handler.call(this as never, request, reply);
      } finally {
        handling.delete(request);
        if (reply.raw.destroyed || reply.raw.writableFinished) request.inflightHold?.release();
      }
    } as RouteHandlerMethod;
  }

  app.decorateRequest('inflightHold', undefined);
  app.addHook('onRoute', (route) => {
    if (!route.config?.inflightLimits) return;
    route.onRequest = [...[route.onRequest ?? []].flat(), admit];
    route.handler = holdingUntilDone(route.handler);
  });
};

export default fp(admission, {
  name: 'admission',
  fastify: '5.x',
  dependencies: ['auth', 'client-rate-limit'],
});
