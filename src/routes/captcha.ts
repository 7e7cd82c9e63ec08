import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { concatOwned, owned } from '../buffers.ts';
import { type Answer, parseCacheControl } from '../cache/cached-answers.ts';
import { cacheKey } from '../cache/key.ts';
import { GatewayError } from '../errors.ts';
import { releaseBody } from '../plugins/json-body.ts';
import {
  polledTaskId,
  type RecognitionRequest,
  recognitionRequestSchema,
  taskRequestSchema,
  tokenRequestSchema,
} from '../schemas/captcha.ts';
import { type ImageLimits, imageLimitProblem } from '../schemas/image.ts';
import { memberValueSpan } from '../schemas/json-text.ts';
import { parseJson, upstreamErrorCode } from '../upstream/reply.ts';
import { retryAfterMs } from '../upstream/retry-after.ts';
import type { UpstreamCall, UpstreamPath, UpstreamReply } from '../upstream/types.ts';
import { recognitionResponses, taskResponses, tokenResponses } from './responses.ts';

export interface CaptchaRoutesOptions {
  /** UPSTREAM_TIMEOUT_MS: a request's deadline, counted from its arrival. */
  upstreamTimeoutMs: number;
  images: ImageLimits;
}

/** What a route decides about its upstream call; the rest comes from the request. */
type Forward = Pick<UpstreamCall, 'path' | 'kind' | 'body' | 'expect'>;

const RECOGNITION = '/captcha/recognition/hcaptcha';
const TOKEN = '/captcha/token/hcaptcha';
const TASKS = '/captcha/tasks';
const JSON_TYPE = 'application/json; charset=utf-8';
const security = [{ clientKey: [] }];

/**
 * The drop-in routes: Ace Data Cloud's hCaptcha paths and JSON, answered through the upstream.
 * Each handler is the tail of the pipeline, top to bottom: check the limits the schema cannot
 * know → build the exact bytes to forward → cache and merge (recognition only) → quota → upstream
 * call (breaker, retries, token, gate: upstream/client.ts) → the upstream's bytes, unchanged.
 */
const captchaRoutes: FastifyPluginAsync<CaptchaRoutesOptions> = async (app, options) => {
  const routes = app.withTypeProvider<ZodTypeProvider>();

  routes.post(
    RECOGNITION,
    {
      schema: {
        tags: ['captcha'],
        summary: 'Recognise an hCaptcha challenge (sync, or async with "async": true)',
        description:
          'Forwarded to Ace Data Cloud after validation; sync answers come from the cache when the same request was answered before, and identical requests in flight share one upstream call. Answers carry an RFC 9211 cache-status header.',
        security,
        body: recognitionRequestSchema,
        response: recognitionResponses,
      },
      config: {
        auth: true,
        rateLimit: {},
        inflightLimits: true,
        cached: true,
        countsTowardQuota: true,
      },
    },
    async (request, reply) => {
      const { bytes, key, images } = prepareRecognition(request);
      const directives = parseCacheControl(request.headers['cache-control']);
      const answer =
        key === undefined
          ? await app.answers.bypass(() => submitTask(request, RECOGNITION, bytes), directives)
          : await app.answers.answer({
              key,
              directives,
              deadline: deadlineOf(request),
              rawDigest: request.rawDigest,
              images,
              call: () =>
                billedCall(request, {
                  path: RECOGNITION,
                  kind: 'solve',
                  body: bytes,
                  expect: 'solution',
                }),
              onShared: () => {
                request.report.cache = 'merged';
              },
            });
      request.report.cache = answer.event;
      reply.header('cache-status', answer.cacheStatus);
      return sendUpstreamBytes(request, reply, answer);
    },
  );

  routes.post(
    TOKEN,
    {
      schema: {
        tags: ['captcha'],
        summary: 'Solve an hCaptcha and get a single-use token (sync, or async with "async": true)',
        description:
          'Forwarded to Ace Data Cloud after validation; never cached, never merged: every token is single-use.',
        security,
        body: tokenRequestSchema,
        response: tokenResponses,
      },
      config: { auth: true, rateLimit: {}, inflightLimits: true, countsTowardQuota: true },
    },
    async (request, reply) => {
      const isAsync = request.body.async === true;
      const { raw } = releaseBody(request);
      const answer = isAsync
        ? await submitTask(request, TOKEN, raw)
        : await billedCall(request, { path: TOKEN, kind: 'solve', body: raw, expect: 'token' });
      return sendUpstreamBytes(request, reply, answer);
    },
  );

  routes.post(
    TASKS,
    {
      schema: {
        tags: ['captcha'],
        summary: 'Poll an async task (recognition or token)',
        description:
          'Forwarded unchanged; never cached. Only the client that created a task may poll it: anyone else gets 404 not_found. Both {"task_id"} and the SDK poller\'s {"id","action":"retrieve"} are accepted.',
        security,
        body: taskRequestSchema,
        response: taskResponses,
      },
      // Polling is free upstream: rate limited, not counted toward the quota.
      config: { auth: true, rateLimit: {}, inflightLimits: true },
    },
    async (request, reply) => {
      const taskId = polledTaskId(request.body);
      const owner = await app.taskOwners.ownerOf(taskId);
      if (owner === undefined || owner !== request.client?.id) {
        throw new GatewayError(
          'not_found',
          'task not found: no task with this id was created by this client',
        );
      }
      const { raw } = releaseBody(request);
      return sendUpstreamBytes(
        request,
        reply,
        await upstreamCall(request, { path: TASKS, kind: 'poll', body: raw, expect: undefined }),
      );
    },
  );

  /**
   * Checks what the schema cannot know, then keeps only what the call needs: the bytes to
   * forward and the cache key (none for an async submission). Synchronous on purpose: nothing of
   * the parsed body survives into the handler's awaits.
   */
  function prepareRecognition(request: FastifyRequest<{ Body: RecognitionRequest }>) {
    const { queries } = request.body;
    const isAsync = request.body.async === true;
    checkImages(queries);
    request.report.images = queries.length;
    const forward = forwardedRecognition(request, queries);
    return {
      bytes: forward.bytes,
      key: isAsync ? undefined : cacheKey(RECOGNITION, forward.json),
      images: queries.length,
    };
  }

  /** The settings-dependent limits on `queries`, which a static schema cannot know. */
  function checkImages(queries: readonly string[]): void {
    if (queries.length > options.images.maxImages) {
      throw new GatewayError(
        'bad_request',
        `body.queries: must hold at most ${options.images.maxImages} images`,
      );
    }
    for (const [index, item] of queries.entries()) {
      const problem = imageLimitProblem(item, options.images);
      if (problem) throw new GatewayError('bad_request', `body.queries[${index}]: ${problem}`);
    }
  }

  function deadlineOf(request: FastifyRequest): number {
    return request.receivedAt + options.upstreamTimeoutMs;
  }

  /** Creates a task and records its owner, so that only this client may poll it. */
  async function submitTask(request: FastifyRequest, path: UpstreamPath, body: Buffer) {
    const answer = await billedCall(request, { path, kind: 'solve', body, expect: 'task_id' });
    const taskId = (answer.json as { task_id?: unknown }).task_id;
    if (answer.status < 300 && typeof taskId === 'string' && request.client) {
      await app.taskOwners.record(taskId, request.client.id);
    }
    return answer;
  }

  /**
   * A call the upstream may bill, made by this request itself (never by a merged one): reserves
   * a unit of the client's daily quota first, and gives it back unless the upstream billed it.
   */
  async function billedCall(request: FastifyRequest, forward: Forward): Promise<UpstreamReply> {
    const client = request.client;
    const perDay = request.routeOptions.config.countsTowardQuota
      ? client?.quota?.upstreamCallsPerDay
      : undefined;
    const reservation = await app.quota.reserve(client?.id ?? 'anonymous', perDay);
    try {
      return await upstreamCall(request, forward);
    } finally {
      if (!request.report.billed) await reservation.release();
    }
  }

  function upstreamCall(request: FastifyRequest, forward: Forward): Promise<UpstreamReply> {
    return app.upstream.call({
      ...forward,
      traceId: request.id,
      clientId: request.client?.id ?? 'anonymous',
      clientKey: request.clientKey,
      deadline: deadlineOf(request),
      abandoned: request.left,
      report: request.report,
      log: request.log,
    });
  }

  /**
   * The upstream's status and exact bytes, unchanged (never re-serialized); an error keeps the
   * upstream's `retry-after`.
   */
  function sendUpstreamBytes(
    request: FastifyRequest,
    reply: FastifyReply,
    answer: Pick<Answer, 'status' | 'body' | 'retryAfter'>,
  ) {
    if (answer.status >= 400) {
      request.report.error_code = upstreamErrorCode(parseJson(answer.body));
      // Only a well-formed one (delay-seconds or an HTTP date): it is upstream text in a header.
      if (retryAfterMs(answer.retryAfter) !== undefined)
        reply.header('retry-after', answer.retryAfter);
    }
    return reply.code(answer.status).type(JSON_TYPE).send(answer.body);
  }
};

/**
 * The bytes to forward and the body they hold: the client's own bytes, with only the `queries`
 * value replaced when an image was rewritten — every other byte stays as the client wrote it.
 * Either way the request keeps nothing else: the parsed body and raw bytes are released.
 */
function forwardedRecognition(
  request: FastifyRequest,
  queries: readonly string[],
): { bytes: Buffer; json: Record<string, unknown> & { queries: readonly string[] } } {
  const { raw, json } = releaseBody(request);
  const original = json.queries as readonly unknown[];
  if (queries.every((item, index) => item === original[index])) {
    return { bytes: raw, json: json as Record<string, unknown> & { queries: readonly string[] } };
  }
  const rewritten = { ...json, queries };
  const span = memberValueSpan(raw, 'queries');
  // Never undefined for a body that parsed with a `queries` member; the fallback is for safety.
  const bytes = span
    ? concatOwned([
        raw.subarray(0, span[0]),
        Buffer.from(JSON.stringify(queries)),
        raw.subarray(span[1]),
      ])
    : owned(Buffer.from(JSON.stringify(rewritten)));
  return { bytes, json: rewritten };
}

export default captchaRoutes;
