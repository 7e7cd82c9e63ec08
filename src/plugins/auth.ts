import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import type { ClientRecord, ClientRegistry } from '../clients/registry.ts';
import { GatewayError } from '../errors.ts';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Route needs a gateway client key (`authorization: Bearer <key>`). */
    auth?: boolean;
  }
  interface FastifyRequest {
    client: ClientRecord | undefined;
  }
}

export interface AuthOptions {
  registry: ClientRegistry;
}

const BEARER = /^Bearer[ \t]+(\S+)[ \t]*$/i;

/** Runs before the body is read, so an unknown caller costs no parsing and never reaches upstream. */
const auth: FastifyPluginAsync<AuthOptions> = async (app, { registry }) => {
  app.decorateRequest('client', undefined);

  // Callback-style hooks on the hot path: an async one costs a promise per request.
  app.addHook('onRequest', (request, _reply, done) => {
    if (request.routeOptions.config.auth !== true) return done();
    const header = request.headers.authorization;
    const key = typeof header === 'string' ? BEARER.exec(header)?.[1] : undefined;
    const client = registry.authenticate(key);
    if (!client) {
      return done(
        new GatewayError(
          'invalid_token',
          'missing or unknown client key; send authorization: Bearer <client key>',
        ),
      );
    }
    request.client = client;
    request.report.client = client.id;
    done();
  });
};

export default fp(auth, { name: 'auth', fastify: '5.x', dependencies: ['request-context'] });
