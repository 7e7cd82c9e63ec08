import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { parseCacheControl } from '../cache/cached-answers.ts';
import { recognitionRequestSchema, taskRequestSchema } from '../schemas/captcha.ts';
import type { ExpectedReply, UpstreamPath } from '../upstream/client.ts';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Path this route forwards to on Ace Data Cloud. */
    upstreamPath?: UpstreamPath;
  }
}

const JSON_TYPE = 'application/json; charset=utf-8';

/** The two drop-in routes: same paths and JSON as Ace Data Cloud, answered through the upstream. */
export interface CaptchaRoutesOptions {
  /** UPSTREAM_TIMEOUT_MS: a request merged into another's call waits at most this long. */
  upstreamTimeoutMs: number;
}

const captchaRoutes: FastifyPluginAsync<CaptchaRoutesOptions> = async (app, options) => {
  const routes = app.withTypeProvider<ZodTypeProvider>();

  routes.post(
    '/captcha/recognition/hcaptcha',
    {
      schema: { body: recognitionRequestSchema },
      config: {
        auth: true,
        rateLimit: {},
        countsTowardQuota: true,
        upstreamPath: '/captcha/recognition/hcaptcha',
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
      });
      request.report.cache = answer.event;
      return reply
        .code(answer.status)
        .header('cache-status', answer.cacheStatus)
        .type(JSON_TYPE)
        .send(answer.body);
    },
  );

  routes.post(
    '/captcha/tasks',
    {
      schema: { body: taskRequestSchema },
      // Polling is free upstream and never cached: rate limited, not counted toward the quota.
      config: { auth: true, rateLimit: {}, upstreamPath: '/captcha/tasks' },
    },
    async (request, reply) => {
      const answer = await callUpstream(request, 'json');
      return reply.code(answer.status).type(JSON_TYPE).send(answer.body);
    },
  );

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
