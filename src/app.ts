import swagger from '@fastify/swagger';
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import {
  jsonSchemaTransform,
  jsonSchemaTransformObject,
  validatorCompiler,
} from 'fastify-type-provider-zod';
import type { OpenAPIV3 } from 'openapi-types';
import type { ClientRegistry } from './clients/registry.ts';
import type { Config } from './config.ts';
import { GatewayError, toGatewayError } from './errors.ts';
import { answerFrameworkError, clientErrorHandler } from './http-errors.ts';
import { GatewayMetrics } from './metrics.ts';
import admission from './plugins/admission.ts';
import auth from './plugins/auth.ts';
import cache from './plugins/cache.ts';
import clientsPlugin from './plugins/clients.ts';
import health from './plugins/health.ts';
import jsonBody from './plugins/json-body.ts';
import lingeringClose from './plugins/lingering-close.ts';
import metricsPlugin from './plugins/metrics.ts';
import opsRoutes from './plugins/ops-routes.ts';
import quota from './plugins/quota.ts';
import clientRateLimit from './plugins/rate-limit.ts';
import redisPlugin from './plugins/redis.ts';
import requestContext, { CompletionLogController, traceIdFor } from './plugins/request-context.ts';
import tasks from './plugins/tasks.ts';
import upstreamPlugin from './plugins/upstream.ts';
import usagePlugin, { usageRoutes } from './plugins/usage.ts';
import captchaRoutes from './routes/captcha.ts';
import { tidyOpenApiDocument } from './routes/responses.ts';
import { UpstreamClient } from './upstream/client.ts';
import { UpstreamGate } from './upstream/gate.ts';
import { RetryBudget } from './upstream/retry-budget.ts';
import { SecretMask } from './upstream/secrets.ts';
import type { UsageReader } from './usage/report.ts';

/** Anything pino can write to: a stream, or an object with write() in tests. */
export interface LogDestination {
  write(line: string): unknown;
}

export interface AppDeps {
  /** A fixed set of clients (tests, benchmarks) instead of GATEWAY_CLIENTS_FILE. */
  clients?: ClientRegistry;
  upstream?: UpstreamClient;
  /** Where log lines go; stdout when absent. */
  logDestination?: LogDestination;
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The operations server (ADMIN_HOST:ADMIN_PORT): metrics, docs, usage. Closed with this app. */
    admin: FastifyInstance;
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
    version: '0.2.0',
    description:
      "A drop-in gateway for Ace Data Cloud's hCaptcha API: the same paths and JSON, with a gateway client key instead of the upstream token. Errors use the upstream's envelope and codes, so Ace Data Cloud's SDKs raise the same exceptions.",
  },
  components: {
    securitySchemes: {
      clientKey: { type: 'http', scheme: 'bearer', description: 'A gateway client key (agw_…)' },
    },
  },
  tags: [
    { name: 'captcha', description: "Ace Data Cloud's hCaptcha API, through the gateway" },
    { name: 'operations', description: 'Health and readiness' },
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
    // A base URL configured with a trailing slash (`http://gateway/`) sends `//captcha/…`.
    routerOptions: { ignoreDuplicateSlashes: true },
    genReqId: traceIdFor,
    bodyLimit: config.BODY_LIMIT_BYTES,
    // Draining is answered by the health plugin, with the error envelope.
    return503OnClosing: false,
    ...serverTimeouts(config),
    frameworkErrors: answerFrameworkError,
    clientErrorHandler,
  };
}

/** The one error handler: every failure becomes the envelope, and the log line gets its code. */
function useGatewayErrors(app: FastifyInstance): void {
  app.setErrorHandler((error, request, reply) => {
    const gatewayError = toGatewayError(error);
    request.report.error_code = gatewayError.code;
    if (gatewayError.limit) request.report.limit = gatewayError.limit;
    if (gatewayError.code === 'api_error') {
      request.log.error({ err: error }, 'unhandled error while serving the request');
    }
    return reply
      .code(gatewayError.statusCode)
      .headers(gatewayError.headers)
      .send(gatewayError.envelope(request.id));
  });
  // Unknown routes are answered by answerUnknownRoutesEarly; this is for a matched route whose
  // plugin finds nothing (a missing file under /docs/static calls reply.callNotFound()).
  app.setNotFoundHandler((request) => {
    throw new GatewayError('no_api', `nothing at ${request.method} ${shownPath(request.url)}`);
  });
}

/** The path of a URL, without the query and cut short, for a 404 message. */
function shownPath(url: string): string {
  const path = url.split('?')[0] ?? '';
  return path.length > 128 ? `${path.slice(0, 128)}…` : path;
}

/**
 * Answers an unknown route before its body is read: nobody should be able to make the gateway
 * read (or reject as 400/413/415) a body it will never use.
 */
function answerUnknownRoutesEarly(app: FastifyInstance): void {
  app.addHook('onRequest', (request, _reply, done) => {
    if (!request.is404) return done();
    done(new GatewayError('no_api', `no route for ${request.method} ${shownPath(request.url)}`));
  });
}

export async function buildApp(config: Config, deps: AppDeps = {}): Promise<FastifyInstance> {
  // Filled in once the clients plugin is registered; metrics only label known clients.
  let isKnownClient: (id: string) => boolean = () => false;
  const metrics = new GatewayMetrics({ isKnownClient: (id) => isKnownClient(id) });
  const { derived } = config;
  const gate = new UpstreamGate({
    ratePerSecond: derived.upstreamRatePerSecond,
    maxConcurrency: derived.upstreamMaxConcurrency,
    maxQueued: derived.upstreamQueueMax,
    minAttemptMs: Math.min(1_000, config.UPSTREAM_TIMEOUT_MS / 10),
  });
  const upstream =
    deps.upstream ??
    new UpstreamClient({
      baseUrl: config.ACEDATA_BASE_URL,
      tokens: config.ACEDATA_API_TOKEN,
      timeoutMs: config.UPSTREAM_TIMEOUT_MS,
      maxConnections: derived.upstreamMaxConcurrency,
      maxRetries: config.UPSTREAM_MAX_RETRIES,
      breakerThreshold: config.CIRCUIT_BREAKER_THRESHOLD,
      breakerCooldownMs: config.CIRCUIT_BREAKER_COOLDOWN_MS,
      gate,
      ratePerToken: config.UPSTREAM_RATE_PER_SECOND,
      retryBudget: new RetryBudget({
        percent: config.RETRY_BUDGET_PERCENT,
        minPerSecond: config.RETRY_BUDGET_MIN_PER_SECOND,
      }),
      secrets: new SecretMask(config.ACEDATA_API_TOKEN),
      events: metrics.upstreamEvents,
    });

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
    // The type provider emits an input and an output twin of each schema; keep one of each.
    transformObject: (document) =>
      tidyOpenApiDocument(jsonSchemaTransformObject(document) as Partial<OpenAPIV3.Document>),
  });

  // The request pipeline, stage by stage in the order a request meets them; each stage is the
  // plugin (or module) named beside it.
  //   1. trace id, report, one completion log line   plugins/request-context.ts
  await app.register(requestContext);
  //      an answer given before the body was read closes after a bounded read   plugins/lingering-close.ts
  await app.register(lingeringClose);
  //   2. unknown route → 404, before any body is read answerUnknownRoutesEarly (above)
  answerUnknownRoutesEarly(app);
  //   3. draining → 503; /healthz, /readyz           plugins/health.ts
  await app.register(health);
  await app.register(redisPlugin, {
    url: config.REDIS_URL,
    onStoreError: config.RATE_LIMIT_ON_STORE_ERROR,
  });
  await app.register(upstreamPlugin, { client: upstream });
  //   4. client key → client                          plugins/auth.ts (keys: plugins/clients.ts)
  await app.register(
    clientsPlugin,
    deps.clients
      ? { clients: deps.clients, registry: metrics.registry }
      : {
          file: config.GATEWAY_CLIENTS_FILE,
          reloadIntervalMs: config.CLIENTS_RELOAD_INTERVAL_MS,
          registry: metrics.registry,
        },
  );
  isKnownClient = (id) => app.clients.has(id);
  await app.register(auth, { clients: app.clients });
  await app.register(metricsPlugin, { metrics });
  await app.register(usagePlugin, {
    redis: app.redis?.client,
    registry: metrics.registry,
    clientLabel: (id) => metrics.clientLabel(id),
  });
  //   5. per-client rate limit                        plugins/rate-limit.ts
  await app.register(clientRateLimit, {
    defaultMax: config.RATE_LIMIT_MAX,
    defaultWindowSeconds: config.RATE_LIMIT_WINDOW_SECONDS,
    onStoreError: config.RATE_LIMIT_ON_STORE_ERROR,
  });
  //   6. requests in flight per client, body bytes    plugins/admission.ts
  await app.register(admission, {
    maxBytes: derived.inflightBytesMax,
    maxBytesPerClient: derived.clientInflightBytesMax,
    defaultMaxInFlight: derived.clientMaxInFlight,
    bodyLimit: config.BODY_LIMIT_BYTES,
  });
  //   7. cache hit on the identical raw bytes          plugins/cache.ts (also owns cache + merging)
  await app.register(cache, {
    ttlSeconds: config.CACHE_TTL_SECONDS,
    maxEntries: config.CACHE_MAX_ENTRIES,
    maxBytes: config.CACHE_MAX_BYTES,
    onMergeEvent: metrics.mergeEvent,
  });
  //   8. read the body, parse the JSON                 plugins/json-body.ts
  await app.register(jsonBody);
  //   9. validate: the route's zod schema              schemas/captcha.ts
  //  10. the route: limits, forwarded bytes, cache key routes/captcha.ts
  //  11. cache lookup, merge identical calls           cache/cached-answers.ts, cache/merge.ts
  //  12. daily quota, by the request that calls        routes/captcha.ts → limits/quota.ts
  //  13. breaker → retries → token → gate → send       upstream/client.ts
  await app.register(quota, { onStoreError: config.RATE_LIMIT_ON_STORE_ERROR });
  await app.register(tasks, { maxEntries: 100_000 });
  await app.register(captchaRoutes, {
    upstreamTimeoutMs: config.UPSTREAM_TIMEOUT_MS,
    images: {
      maxImages: config.IMAGES_MAX,
      maxImageBytes: config.IMAGE_MAX_BYTES,
      imageUrls: config.IMAGE_URLS,
    },
  });

  metrics.readFrom({
    circuit: () => upstream.circuitState(),
    tokens: () => upstream.tokenState(),
    gate: () => gate.load,
    inflight: () => app.inflight.load,
  });

  const admin = Fastify(fastifyOptions(config, deps));
  app.decorate('admin', admin);
  app.addHook('onClose', async () => {
    await admin.close();
  });
  // The main app's document is complete once it is ready; the admin app serves it as is.
  await app.ready();
  await buildAdmin(admin, config, metrics, app.swagger() as OpenAPIV3.Document, app.usage);
  return app;
}

/**
 * The operations server: /metrics, /docs, /openapi.json and /usage expose client ids and counts, so they
 * live on ADMIN_HOST:ADMIN_PORT (loopback by default) and never on the API port.
 */
async function buildAdmin(
  admin: FastifyInstance,
  config: Config,
  metrics: GatewayMetrics,
  document: OpenAPIV3.Document,
  usage: UsageReader,
): Promise<void> {
  useGatewayErrors(admin);
  await admin.register(requestContext);
  await admin.register(lingeringClose);
  answerUnknownRoutesEarly(admin);
  await admin.register(opsRoutes, {
    metrics: config.METRICS_ENABLED ? metrics : undefined,
    docs: config.DOCS_ENABLED ? { document } : undefined,
  });
  await admin.register(usageRoutes, { reader: usage });
}
