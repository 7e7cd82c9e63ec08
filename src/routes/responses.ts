import type { z } from 'zod';
import {
  errorEnvelopeSchema,
  recognitionResponseSchema,
  taskCreatedSchema,
  taskStatusSchema,
  taskTimedOutSchema,
  tokenResponseSchema,
} from '../schemas/captcha.ts';

/**
 * The documented answers of each forwarded route, for /openapi.json: the upstream's own (from
 * its OpenAPI spec and guides) and the gateway's, each with a description of when it happens.
 * Error bodies share one schema, ErrorEnvelope.
 */
const json = (description: string, schema: z.ZodType) => ({
  description,
  content: { 'application/json': { schema } },
});
const error = (description: string) => json(description, errorEnvelopeSchema);

const COMMON_ERRORS = {
  400: error(
    'bad_request: the body is not a JSON object, a field has the wrong type, or a limit is broken (the gateway names the field); the upstream\'s own 400s (no_token, token_mismatched, disabled, …) about its token never reach clients',
  ),
  401: error('invalid_token: missing or unknown gateway client key'),
  403: error(
    "used_up / disabled: the gateway's Ace Data Cloud account (no usable token left); forbidden: the upstream refused this request (content moderation), passed through",
  ),
  408: error('request_timeout: the request was not received in full within REQUEST_TIMEOUT_MS'),
  413: error('request_too_large: the body is over BODY_LIMIT_BYTES'),
  415: error('unsupported_media_type: content-type is not application/json'),
  429: error(
    'too_many_requests: the client is over its rate limit, daily quota or in-flight limits, or the upstream is saturated; retry-after says when to come back',
  ),
  500: error("api_error: a bug in the gateway (details in its log), or the upstream's own 500"),
  502: error(
    "upstream_error: the upstream could not be reached, sent a malformed reply, or rejected the gateway's token",
  ),
  503: error(
    'upstream_unavailable: the circuit breaker is open, the gateway is at capacity or draining; retry-after says when to come back',
  ),
  504: error(
    'timeout: no answer within the request deadline (UPSTREAM_TIMEOUT_MS), or the upstream queue is too long for it',
  ),
};

const TASK_CREATED = json(
  'Async submission ("async": true): poll POST /captcha/tasks with the task_id',
  taskCreatedSchema,
);

export const recognitionResponses = {
  200: json('The solution (sync)', recognitionResponseSchema),
  201: TASK_CREATED,
  ...COMMON_ERRORS,
};

export const tokenResponses = {
  200: json('A single-use hCaptcha token (sync)', tokenResponseSchema),
  201: TASK_CREATED,
  ...COMMON_ERRORS,
};

export const taskResponses = {
  200: json('The task: processing, or ready with its solution or token', taskStatusSchema),
  ...COMMON_ERRORS,
  404: error('not_found: no task with this id was created by this client (or the upstream does not know it)'),
  504: json(
    "The task missed the upstream's deadline (terminal; flat body with code \"timeout\"), or the gateway's own timeout (error envelope)",
    taskTimedOutSchema.or(errorEnvelopeSchema),
  ),
};
