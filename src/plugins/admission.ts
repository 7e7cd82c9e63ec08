import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { InflightLimits } from '../limits/inflight.ts';

declare module 'fastify' {
  interface FastifyInstance {
    inflight: InflightLimits;
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
 * (from content-length) and held until the answer is sent or the client leaves. The hook is
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
      reply.raw.once('close', hold.release);
      request.inflightHold = hold;
    } catch (error) {
      return done(error as Error);
    }
    done();
  }

  app.decorateRequest('inflightHold', undefined);
  app.addHook('onRoute', (route) => {
    if (!route.config?.inflightLimits) return;
    route.onRequest = [...[route.onRequest ?? []].flat(), admit];
  });
};

declare module 'fastify' {
  interface FastifyRequest {
    /** This request's hold on the in-flight limits, while it has one. */
    inflightHold: import('../limits/inflight.ts').InflightHold | undefined;
  }
}

export default fp(admission, {
  name: 'admission',
  fastify: '5.x',
  dependencies: ['auth', 'client-rate-limit'],
});
