import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { parseCacheControl } from '../cache/cached-answers.ts';
import {
  asyncSubmissionSchema,
  errorEnvelopeSchema,
  recognitionRequestSchema,
  recognitionResponseSchema,
  taskRequestSchema,
  taskStatusSchema,
} from '../schemas/captcha.ts';
import type { ExpectedReply, UpstreamPath } from '../upstream/client.ts';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Path this route forwards to on Ace Data Cloud. */
    upstreamPath?: UpstreamPath;
  }
}

const JSON_TYPE = 'application/json; charset=utf-8';

/** Error answers every captcha route can give (the upstream's own pass through with its status). */
const errorResponses = Object.fromEntries(
  [400, 401, 404, 413, 415, 429, 500, 502, 503, 504].map((status) => [status, errorEnvelopeSchema]),
);
const security = [{ clientKey: [] }];

export interface CaptchaRoutesOptions {
  /** UPSTREAM_TIMEOUT_MS: a request merged into another's call waits at most this long. */
  upstreamTimeoutMs: number;
}

/** The two drop-in routes: same paths and JSON as Ace Data Cloud, answered through the upstream. */
const captchaRoutes: FastifyPluginAsync<CaptchaRoutesOptions> = async (app, options) => {
  const routes = app.withTypeProvider<ZodTypeProvider>();

  routes.post(
    '/captcha/recognition/hcaptcha',
    {
      schema: {
        tags: ['captcha'],
        summary: 'Recognise an hCaptcha challenge (sync, or async with "async": true)',
        description:
          'Forwarded to Ace Data Cloud unchanged after validation; answers carry an RFC 9211 cache-status header.',
        security,
        body: recognitionRequestSchema,
        response: { 200: recognitionResponseSchema.or(asyncSubmissionSchema), ...errorResponses },
      },
      config: {
        auth: true,
        rateLimit: {},
        countsTowardQuota: true,
        answerRepeatsFromRawBytes: true,
        upstreamPath: '/captcha/recognition/hcaptcha',
      },
      // A repeat of bytes answered before was found by the body parser: answer it, skip validation.
      preValidation: async (request, reply) => {
        const hit = request.rawHit;
        if (!hit) return;
        request.report.images = hit.images;
        request.report.cache = hit.event;
        reply.header('cache-status', hit.cacheStatus);
        return sendUpstreamBytes(reply, hit);
      },
    },
    async (request, reply) => {
      const { body } = request;
      request.report.images = body.queries.length;
      const answer = await app.answers.answer({
        route: request.routeOptions.url ?? '',
        body,
        directives: parseCacheControl(request.headers['cache-control']),
        reserveQuota: () => reserveQuota(request),
        callUpstream: () => callUpstream(request, body.async === true ? 'task_id' : 'solution'),
        deadline: Date.now() + options.upstreamTimeoutMs,
        rawDigest: request.rawDigest,
      });
      request.report.cache = answer.event;
      reply.header('cache-status', answer.cacheStatus);
      return sendUpstreamBytes(reply, answer);
    },
  );

  routes.post(
    '/captcha/tasks',
    {
      schema: {
        tags: ['captcha'],
        summary: 'Poll an async recognition task (never cached)',
        security,
        body: taskRequestSchema,
        response: { 200: taskStatusSchema, ...errorResponses },
      },
      // Polling is free upstream and never cached: rate limited, not counted toward the quota.
      config: { auth: true, rateLimit: {}, upstreamPath: '/captcha/tasks' },
    },
    async (request, reply) => {
      return sendUpstreamBytes(reply, await callUpstream(request, 'json'));
    },
  );

  /**
   * The upstream's status and exact bytes, unchanged (the response schemas describe them for the
   * OpenAPI document; the bytes are not re-serialized).
   */
  function sendUpstreamBytes(reply: FastifyReply, answer: { status: number; body: Buffer }) {
    return reply.code(answer.status).type(JSON_TYPE).send(answer.body);
  }

  function reserveQuota(request: FastifyRequest) {
    const { client } = request;
    const perDay = request.routeOptions.config.countsTowardQuota
      ? client?.quota?.upstreamCallsPerDay
      : undefined;
    return app.quota.reserve(client?.id ?? 'anonymous', perDay);
  }

  function callUpstream(request: FastifyRequest, expect: ExpectedReply) {
    const path = request.routeOptions.config.upstreamPath;
    if (path === undefined) throw new Error('route is missing config.upstreamPath');
    return app.upstream.call({
      path,
      body: JSON.stringify(request.body),
      expect,
      traceId: request.id,
      report: request.report,
      log: request.log,
    });
  }
};

export default captchaRoutes;
