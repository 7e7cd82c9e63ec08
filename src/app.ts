import swagger from '@fastify/swagger';
import Fastify, {
  type FastifyInstance,
  type FastifyRequest,
  type FastifyServerOptions,
} from 'fastify';
import {
  jsonSchemaTransform,
  jsonSchemaTransformObject,
  validatorCompiler,
} from 'fastify-type-provider-zod';
import type { OpenAPIV3 } from 'openapi-types';
import { ClientRegistry } from './clients/registry.ts';
import type { Config } from './config.ts';
import { errorEnvelope, toGatewayError } from './errors.ts';
import { answerFrameworkError, clientErrorHandler } from './http-errors.ts';
import { UpstreamGate } from './limits/upstream-gate.ts';
import { GatewayMetrics } from './metrics.ts';
import auth from './plugins/auth.ts';
import cache from './plugins/cache.ts';
import health from './plugins/health.ts';
import jsonBody from './plugins/json-body.ts';
import metricsPlugin from './plugins/metrics.ts';
import opsRoutes from './plugins/ops-routes.ts';
import quota from './plugins/quota.ts';
import clientRateLimit from './plugins/rate-limit.ts';
import redisPlugin from './plugins/redis.ts';
import requestContext, { CompletionLogController, traceIdFor } from './plugins/request-context.ts';
import upstreamPlugin from './plugins/upstream.ts';
import captchaRoutes from './routes/captcha.ts';
import { UpstreamClient } from './upstream/client.ts';

/** Anything pino can write to: a stream, or an object with write() in tests. */
export interface LogDestination {
  write(line: string): unknown;
}

export interface AppDeps {
  clients?: ClientRegistry;
  upstream?: UpstreamClient;
  /** Where log lines go; stdout when absent. */
  logDestination?: LogDestination;
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The operations server for ADMIN_PORT, when configured; closed with this app. */
    admin: FastifyInstance | undefined;
  }
}

/** Socket timeouts, each chosen against the upstream's slowness rather than left to defaults. */
export function serverTimeouts(config: Config) {
  return {
    /** Receiving a whole request (headers and body) from a client; slow senders are cut off. */
    requestTimeout: config.REQUEST_TIMEOUT_MS,
    http: {
      // Node's own default (60 s) would govern the body too; and it checks only every 30 s.
      headersTimeout: config.REQUEST_TIMEOUT_MS,
      connectionsCheckingInterval: 1_000,
    },
    /** Idle socket: must outlast the upstream deadline, or a slow answer would be cut. */
    connectionTimeout: config.UPSTREAM_TIMEOUT_MS + 10_000,
    /** Longer than common load balancers' 60 s idle timeout so they close first. */
    keepAliveTimeout: 72_000,
  };
}

/**
 * Logger redaction is a second line of defence: no code path logs headers or bodies, but if one
 * ever does, these paths are censored.
 */
const REDACT_PATHS = [
  'authorization',
  'headers.authorization',
  'req.headers.authorization',
  'request.headers.authorization',
  'token',
  'key',
  'body',
  'queries',
  'req.body',
];

const OPENAPI_INFO = {
  openapi: '3.0.3',
  info: {
    title: 'acedata-gateway',
    version: '0.1.0',
    description:
      "A drop-in gateway for Ace Data Cloud's hCaptcha recognition API: same paths and JSON, a gateway client key instead of the upstream token.",
  },
  components: {
    securitySchemes: {
      clientKey: { type: 'http', scheme: 'bearer', description: 'A gateway client key (agw_…)' },
    },
  },
  tags: [
    { name: 'captcha', description: 'The Ace Data Cloud API, proxied' },
    { name: 'operations', description: 'Health, readiness, metrics and this document' },
  ],
} satisfies Partial<OpenAPIV3.Document>;

/** Options shared by the main and the admin server. */
function fastifyOptions(config: Config, deps: AppDeps): FastifyServerOptions {
  return {
    logger: {
      level: config.LOG_LEVEL,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      ...(deps.logDestination ? { stream: deps.logDestination } : {}),
    },
    logController: new CompletionLogController(),
    requestIdHeader: false,
    genReqId: traceIdFor,
    bodyLimit: config.BODY_LIMIT_BYTES,
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    // Draining is answered by the health plugin, with the error envelope.
    return503OnClosing: false,
    ...serverTimeouts(config),
    frameworkErrors: answerFrameworkError,
    clientErrorHandler,
  };
}

/** The error envelope for every failure, and 404 `no_api` for unknown routes. */
function useGatewayErrors(app: FastifyInstance): void {
  app.setErrorHandler((error, request, reply) => {
    const gatewayError = toGatewayError(error);
    if (gatewayError.code === 'api_error') {
      request.log.error({ err: error }, 'unhandled error while serving the request');
    }
    return reply
      .code(gatewayError.statusCode)
      .headers(gatewayError.headers)
      .send(errorEnvelope(gatewayError.code, gatewayError.message, request.id));
  });
  app.setNotFoundHandler((request, reply) => reply.code(404).send(notFound(request)));
}

export async function buildApp(config: Config, deps: AppDeps = {}): Promise<FastifyInstance> {
  const clients = deps.clients ?? (await ClientRegistry.fromFile(config.GATEWAY_CLIENTS_FILE));
  const metrics = new GatewayMetrics({ clientIds: clients.ids });
  const upstream =
    deps.upstream ??
    new UpstreamClient({
      baseUrl: config.ACEDATA_BASE_URL,
      tokens: config.ACEDATA_API_TOKEN,
      timeoutMs: config.UPSTREAM_TIMEOUT_MS,
      maxRetries: config.UPSTREAM_MAX_RETRIES,
      breakerThreshold: config.CIRCUIT_BREAKER_THRESHOLD,
      breakerCooldownMs: config.CIRCUIT_BREAKER_COOLDOWN_MS,
      pool: { connections: config.derived.upstreamMaxConcurrency },
      gate: new UpstreamGate({
        maxConcurrency: config.derived.upstreamMaxConcurrency,
        ratePerSecond: config.derived.upstreamRatePerSecond,
        maxQueued: config.derived.upstreamQueueMax,
      }),
      events: metrics.upstreamEvents,
    });
  metrics.readCircuitFrom(() => upstream.circuitState());

  const app = Fastify(fastifyOptions(config, deps));
  app.setValidatorCompiler(validatorCompiler);
  // Response schemas document the API; answers are upstream bytes passed through, and the
  // envelopes are built by one function, so nothing is re-validated on the way out.
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));
  useGatewayErrors(app);

  // First, so that it sees every route that follows.
  await app.register(swagger, {
    openapi: OPENAPI_INFO,
    transform: jsonSchemaTransform,
    transformObject: jsonSchemaTransformObject,
  });
  await app.register(requestContext);
  answerUnknownRoutesEarly(app);
  await app.register(health);
  await app.register(redisPlugin, { url: config.REDIS_URL });
  await app.register(upstreamPlugin, { client: upstream });
  await app.register(auth, { registry: clients });
  await app.register(metricsPlugin, { metrics });
  await app.register(clientRateLimit, {
    defaultMax: config.RATE_LIMIT_MAX,
    defaultWindowSeconds: config.RATE_LIMIT_WINDOW_SECONDS,
    onStoreError: config.RATE_LIMIT_ON_STORE_ERROR,
    onLimited: metrics.rateLimited,
  });
  await app.register(quota, {
    onStoreError: config.RATE_LIMIT_ON_STORE_ERROR,
    onRefused: metrics.rateLimited,
  });
  await app.register(cache, {
    ttlSeconds: config.CACHE_TTL_SECONDS,
    maxEntries: config.CACHE_MAX_ENTRIES,
    onCacheEvent: metrics.cacheEvent,
  });
  await app.register(jsonBody);
  await app.register(captchaRoutes, { upstreamTimeoutMs: config.UPSTREAM_TIMEOUT_MS });

  const ops = {
    metrics: config.METRICS_ENABLED ? metrics : undefined,
    docs: config.DOCS_ENABLED ? {} : undefined,
  };
  if (config.ADMIN_PORT === undefined) {
    await app.register(opsRoutes, ops);
    app.decorate('admin', undefined);
  } else {
    const admin = Fastify(fastifyOptions(config, deps));
    app.decorate('admin', admin);
    app.addHook('onClose', async () => {
      await admin.close();
    });
    // The main app's document is complete once it is ready; the admin app serves it as is.
    await app.ready();
    useGatewayErrors(admin);
    await admin.register(requestContext);
    answerUnknownRoutesEarly(admin);
    await admin.register(opsRoutes, {
      metrics: ops.metrics,
      // Registered above with `openapi: '3.0.3'`, so the generated document is an OpenAPI 3.0 one.
      docs: ops.docs && { staticDocument: app.swagger() as OpenAPIV3.Document },
    });
  }
  return app;
}

/**
 * Answers an unknown route before its body is read: nobody should be able to make the gateway
 * read (or reject as 400/413/415) a body it will never use. Added after the request context, so
 * the answer carries the trace id.
 */
function answerUnknownRoutesEarly(app: FastifyInstance): void {
  app.addHook('onRequest', (request, reply, done) => {
    if (request.is404) reply.code(404).send(notFound(request));
    else done();
  });
}

function notFound(request: FastifyRequest) {
  return errorEnvelope(
    'no_api',
    `no route for ${request.method} ${routePath(request.url)}`,
    request.id,
  );
}

/** The path of an unmatched URL, without the query and cut short, for the 404 message. */
function routePath(url: string): string {
  const path = url.split('?')[0] ?? '';
  return path.length > 128 ? `${path.slice(0, 128)}…` : path;
}
