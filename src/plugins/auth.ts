import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import type { ClientRecord } from '../clients/registry.ts';
import { GatewayError } from '../errors.ts';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Route needs a gateway client key (`authorization: Bearer <key>`). */
    auth?: boolean;
  }
  interface FastifyRequest {
    client: ClientRecord | undefined;
    /** The key the client presented: masked by value in upstream text, never logged or stored. */
    clientKey: string | undefined;
  }
}

/** Whatever knows the client keys (the client registry, reloaded when its file changes). */
export interface ClientAuthenticator {
  authenticate(key: string | undefined): ClientRecord | undefined;
}

export interface AuthOptions {
  clients: ClientAuthenticator;
}

const BEARER = /^Bearer[ \t]+(\S+)[ \t]*$/i;

/** Runs before the body is read, so an unknown caller costs no parsing and never reaches upstream. */
const auth: FastifyPluginAsync<AuthOptions> = async (app, { clients }) => {
  app.decorateRequest('client', undefined);
  app.decorateRequest('clientKey', undefined);

  // Callback-style hooks on the hot path: an async one costs a promise per request.
  app.addHook('onRequest', (request, _reply, done) => {
    if (request.routeOptions.config.auth !== true) return done();
    const header = request.headers.authorization;
    const key = typeof header === 'string' ? BEARER.exec(header)?.[1] : undefined;
    const client = clients.authenticate(key);
    if (!client) {
      return done(
        new GatewayError(
          'invalid_token',
          'missing or unknown client key; send authorization: Bearer <client key>',
        ),
      );
    }
    request.client = client;
    request.clientKey = key;
    request.report.client = client.id;
    done();
  });
};

export default fp(auth, { name: 'auth', fastify: '5.x', dependencies: ['request-context'] });
