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
 * The documented answers of each forwarded route, for /openapi.json: the statuses of the
 * upstream's own spec (Ace Data Cloud's openapi/hcaptcha.json and its guides) and the gateway's,
 * each with when it happens and which exception Ace Data Cloud's SDKs raise for it (they pick the
 * class by `error.code`, then by status). Error bodies share one schema, ErrorEnvelope.
 */
const json = (description: string, schema: z.ZodType) => ({
  description,
  content: { 'application/json': { schema } },
});
const error = (description: string) => json(description, errorEnvelopeSchema);

/** Answers every forwarded route can give. */
const COMMON_ERRORS = {
  401: error(
    "invalid_token: the gateway client key is missing or unknown (SDKs: AuthenticationError). The upstream's own 401s are about the gateway's token and never reach clients.",
  ),
  403: error(
    "used_up / disabled: the gateway's Ace Data Cloud account has no usable token left (SDKs: InsufficientBalanceError / ResourceDisabledError); forbidden: the upstream refused this request (content moderation), passed through (SDKs: ModerationError)",
  ),
  408: error('request_timeout: the request was not received in full within REQUEST_TIMEOUT_MS'),
  413: error('request_too_large: the body is over BODY_LIMIT_BYTES'),
  415: error('unsupported_media_type: content-type is not application/json'),
  429: error(
    'too_many_requests: the client is over its rate limit, daily quota or in-flight limits, or the upstream is saturated; retry-after says when to come back (SDKs: RateLimitError)',
  ),
  431: error('request_too_large: the request headers exceed the size limit'),
  500: error(
    "api_error: the upstream's own 500, passed through, or a bug in the gateway (details in its log for the trace_id)",
  ),
  502: error(
    "upstream_error: the upstream could not be reached or sent a malformed reply, or it rejected the gateway's token (invalid_token, token_expired, no_token, token_mismatched: the gateway's configuration, not the client key)",
  ),
  503: error(
    'upstream_unavailable: the circuit breaker is open, the gateway is at capacity or draining; retry-after says when to come back',
  ),
};

/** 400 on the two solving routes: the gateway's checks, or the upstream's own. */
const SOLVE_400 = error(
  "bad_request: the body is not a JSON object, a field has the wrong type, or a limit is broken (the message names the field); or the upstream's own 400 about the request (bad_request, api_not_implemented), passed through (SDKs: ValidationError)",
);

/** 404 on the two solving routes: only the upstream's (its spec lists it on every path). */
const SOLVE_404 = error(
  "no_api: the upstream's own 404, passed through (the gateway answers no_api itself only for paths it does not serve)",
);

const SOLVE_504 = error(
  'timeout: no answer within the request deadline (UPSTREAM_TIMEOUT_MS from arrival), or the upstream queue is too long for it',
);

const TASK_CREATED = json(
  'Async submission ("async": true): the task was created; poll POST /captcha/tasks with its task_id',
  taskCreatedSchema,
);

export const recognitionResponses = {
  200: json(
    'The solution (sync); a repeat of the same request is answered from the cache (cache-status header)',
    recognitionResponseSchema,
  ),
  201: TASK_CREATED,
  400: SOLVE_400,
  ...COMMON_ERRORS,
  404: SOLVE_404,
  504: SOLVE_504,
};

export const tokenResponses = {
  200: json('A single-use hCaptcha token (sync); never cached', tokenResponseSchema),
  201: TASK_CREATED,
  400: SOLVE_400,
  ...COMMON_ERRORS,
  404: SOLVE_404,
  504: SOLVE_504,
};

export const taskResponses = {
  200: json(
    'The task: processing (poll again in 3–5 s), or ready with its solution or token',
    taskStatusSchema,
  ),
  400: error(
    "bad_request: neither task_id nor id is given, or one has the wrong type; or the upstream's own 400 (invalid_query), passed through (SDKs: ValidationError)",
  ),
  ...COMMON_ERRORS,
  404: error(
    'not_found: no task with this id was created by this client, or the upstream no longer knows it (SDKs: APIError)',
  ),
  504: json(
    "The task missed the upstream's 120 s deadline: terminal, on every read (the upstream's flat body, code \"timeout\"); or the gateway's own deadline passed (error envelope, code timeout)",
    taskTimedOutSchema.or(errorEnvelopeSchema),
  ),
};

// --- The document as a whole --------------------------------------------------------------------

const SCHEMA_REF = '#/components/schemas/';
const INPUT_SUFFIX = 'Input';

interface WithSchemas {
  components?: { schemas?: Record<string, unknown> };
}

/** Every `$ref` to a component schema under `node`, by name. */
function referencedSchemas(node: unknown, into = new Set<string>()): Set<string> {
  if (Array.isArray(node)) for (const item of node) referencedSchemas(item, into);
  else if (typeof node === 'object' && node !== null) {
    for (const [key, value] of Object.entries(node)) {
      if (key === '$ref' && typeof value === 'string' && value.startsWith(SCHEMA_REF)) {
        into.add(value.slice(SCHEMA_REF.length));
      } else referencedSchemas(value, into);
    }
  }
  return into;
}

/** A deep copy of `node` with every schema `$ref` renamed by `rename` (other names stay). */
function renameRefs<T>(node: T, rename: ReadonlyMap<string, string>): T {
  return JSON.parse(JSON.stringify(node), (key, value) => {
    if (key !== '$ref' || typeof value !== 'string' || !value.startsWith(SCHEMA_REF)) return value;
    const name = value.slice(SCHEMA_REF.length);
    return SCHEMA_REF + (rename.get(name) ?? name);
  });
}

/** The schemas the document uses: referenced from outside `components.schemas`, transitively. */
function usedSchemas(document: WithSchemas): Set<string> {
  const schemas = document.components?.schemas ?? {};
  const used = referencedSchemas({
    ...document,
    components: { ...document.components, schemas: {} },
  });
  const pending = [...used];
  for (let name = pending.pop(); name !== undefined; name = pending.pop()) {
    for (const next of referencedSchemas(schemas[name])) {
      if (!used.has(next)) {
        used.add(next);
        pending.push(next);
      }
    }
  }
  return used;
}

/**
 * fastify-type-provider-zod writes every registered schema twice, `X` (as a response sees it) and
 * `XInput` (as a request body sees it), used or not. This keeps one component per schema: a used
 * `XInput` is renamed `X` when `X` is unused or says the same, and the two stay apart only where
 * they truly differ; components nothing uses are dropped. A transformObject step for
 * @fastify/swagger (after the type provider's own).
 */
export function tidyOpenApiDocument<T extends WithSchemas>(document: T): T {
  const schemas = document.components?.schemas ?? {};
  const twins = new Map<string, string>();
  for (const name of Object.keys(schemas)) {
    const base = name.slice(0, -INPUT_SUFFIX.length);
    if (name.endsWith(INPUT_SUFFIX) && Object.hasOwn(schemas, base)) twins.set(name, base);
  }
  const sameAsTwin = (name: string, base: string) =>
    JSON.stringify(renameRefs(schemas[name], twins)) ===
    JSON.stringify(renameRefs(schemas[base], twins));

  const used = usedSchemas(document);
  const rename = new Map<string, string>();
  for (const name of used) {
    const base = twins.get(name);
    if (base !== undefined && (!used.has(base) || sameAsTwin(name, base))) rename.set(name, base);
  }
  const tidied = renameRefs(document, rename);
  const kept: Record<string, unknown> = {};
  for (const [name, schema] of Object.entries(tidied.components?.schemas ?? {})) {
    if (!used.has(name)) continue;
    const target = rename.get(name) ?? name;
    // A twin renamed onto a base that is used itself leaves the base's own definition.
    if (target !== name && used.has(target)) continue;
    kept[target] = schema;
  }
  if (tidied.components) tidied.components.schemas = kept;
  return tidied;
}
