import Fastify, { type FastifyInstance } from 'fastify';
import { validatorCompiler } from 'fastify-type-provider-zod';
import { ClientRegistry } from './clients/registry.ts';
import type { Config } from './config.ts';
import { errorEnvelope, toGatewayError } from './errors.ts';
import { UpstreamGate } from './limits/upstream-gate.ts';
import auth from './plugins/auth.ts';
import cache from './plugins/cache.ts';
import health from './plugins/health.ts';
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

/** Socket timeouts, each chosen against the upstream's slowness rather than left to defaults. */
export function serverTimeouts(config: Config) {
  return {
    /** Receiving a whole request (headers and body) from a client; slow senders are cut off. */
    requestTimeout: 30_000,
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

export async function buildApp(config: Config, deps: AppDeps = {}): Promise<FastifyInstance> {
  const clients = deps.clients ?? (await ClientRegistry.fromFile(config.GATEWAY_CLIENTS_FILE));
  const upstream =
    deps.upstream ??
    new UpstreamClient({
      baseUrl: config.ACEDATA_BASE_URL,
      tokens: config.ACEDATA_API_TOKEN,
      timeoutMs: config.UPSTREAM_TIMEOUT_MS,
      maxRetries: config.UPSTREAM_MAX_RETRIES,
      breakerThreshold: config.CIRCUIT_BREAKER_THRESHOLD,
      breakerCooldownMs: config.CIRCUIT_BREAKER_COOLDOWN_MS,
      pool: { connections: config.UPSTREAM_MAX_CONCURRENCY },
      gate: new UpstreamGate({
        maxConcurrency: config.UPSTREAM_MAX_CONCURRENCY,
        // The upstream's limit is per token, so the pool's rate grows with its size.
        ratePerSecond: config.UPSTREAM_RATE_PER_SECOND * config.ACEDATA_API_TOKEN.length,
        maxQueued: config.UPSTREAM_QUEUE_MAX,
      }),
    });

  const app = Fastify({
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
    ...serverTimeouts(config),
  });

  app.setValidatorCompiler(validatorCompiler);

  // JSON only: text/plain (a Fastify default) must answer 415, not reach validation.
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (request, body, done) => {
    request.report.body_bytes = (body as Buffer).length;
    parseJson(request, body as Buffer as unknown as string, done);
  });

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

  app.setNotFoundHandler((request, reply) =>
    reply
      .code(404)
      .send(
        errorEnvelope(
          'no_api',
          `no route for ${request.method} ${routePath(request.url)}`,
          request.id,
        ),
      ),
  );

  await app.register(requestContext);
  await app.register(health);
  await app.register(redisPlugin, { url: config.REDIS_URL });
  await app.register(upstreamPlugin, { client: upstream });
  await app.register(auth, { registry: clients });
  await app.register(clientRateLimit, {
    defaultMax: config.RATE_LIMIT_MAX,
    defaultWindowSeconds: config.RATE_LIMIT_WINDOW_SECONDS,
    onStoreError: config.RATE_LIMIT_ON_STORE_ERROR,
  });
  await app.register(quota, { onStoreError: config.RATE_LIMIT_ON_STORE_ERROR });
  await app.register(cache, {
    ttlSeconds: config.CACHE_TTL_SECONDS,
    maxEntries: config.CACHE_MAX_ENTRIES,
  });
  await app.register(captchaRoutes, { upstreamTimeoutMs: config.UPSTREAM_TIMEOUT_MS });

  return app;
}

/** The path of an unmatched URL, without the query and cut short, for the 404 message. */
function routePath(url: string): string {
  const path = url.split('?')[0] ?? '';
  return path.length > 128 ? `${path.slice(0, 128)}…` : path;
}
