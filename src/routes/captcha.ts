import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { recognitionRequestSchema, taskRequestSchema } from '../schemas/captcha.ts';
import type { ExpectedReply, UpstreamPath } from '../upstream/client.ts';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Path this route forwards to on Ace Data Cloud. */
    upstreamPath?: UpstreamPath;
  }
}

/** The two drop-in routes: same paths and JSON as Ace Data Cloud, answered through the upstream. */
const captchaRoutes: FastifyPluginAsync = async (app) => {
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
      request.report.images = request.body.queries.length;
      return forward(request.body.async === true ? 'task_id' : 'solution', request, reply);
    },
  );

  routes.post(
    '/captcha/tasks',
    {
      schema: { body: taskRequestSchema },
      // Polling is free upstream, so it is rate limited but not counted toward the quota.
      config: { auth: true, rateLimit: {}, upstreamPath: '/captcha/tasks' },
    },
    async (request, reply) => forward('json', request, reply),
  );

  async function forward(expect: ExpectedReply, request: FastifyRequest, reply: FastifyReply) {
    const path = request.routeOptions.config.upstreamPath;
    if (path === undefined) throw new Error('route is missing config.upstreamPath');
    const { client } = request;
    const reservation = await app.quota.reserve(
      client?.id ?? 'anonymous',
      request.routeOptions.config.countsTowardQuota
        ? client?.quota?.upstreamCallsPerDay
        : undefined,
    );
    let billed = false;
    try {
      const answer = await app.upstream.call({
        path,
        body: JSON.stringify(request.body),
        expect,
        traceId: request.id,
        report: request.report,
        log: request.log,
      });
      // The upstream bills successful results only; anything else gives the unit back.
      billed = answer.status >= 200 && answer.status < 300;
      return reply.code(answer.status).type('application/json; charset=utf-8').send(answer.body);
    } finally {
      if (!billed) await reservation.release();
    }
  }
};

export default captchaRoutes;
