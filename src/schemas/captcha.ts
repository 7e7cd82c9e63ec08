import { z } from 'zod';
import { imageQuerySchema } from './image.ts';

/**
 * The upstream's hCaptcha API (Ace Data Cloud's OpenAPI spec, openapi/hcaptcha.json), as the
 * gateway checks it before forwarding. The spec marks no recognition field required and sets no
 * limits, so only what is certainly malformed is refused; unknown fields pass through unchanged.
 */

/** "is required" for a missing field, "must be …" for one of the wrong type. */
const required = (what: string) => (issue: { input?: unknown }) =>
  issue.input === undefined ? 'is required' : `must be ${what}`;

const asyncField = z
  .boolean({ error: 'must be a boolean' })
  .optional()
  .meta({ description: 'true: answer 201 with a task_id at once; poll POST /captcha/tasks' });

/** `POST /captcha/recognition/hcaptcha`: `queries` come out as the text to forward. */
export const recognitionRequestSchema = z
  .looseObject({
    queries: z
      .array(imageQuerySchema, { error: required('an array of images') })
      .min(1, 'must hold at least 1 image')
      .meta({ description: 'The challenge images, in the order hCaptcha shows them' }),
    question: z.string({ error: 'must be a string' }).optional().meta({
      description: 'The challenge question, English or Chinese',
      example: 'Please click each image containing a bus',
    }),
    async: asyncField,
  })
  .meta({ id: 'RecognitionRequest' });

export type RecognitionRequest = z.output<typeof recognitionRequestSchema>;

/** `POST /captcha/token/hcaptcha`: solves a challenge; every answer is a single-use token. */
export const tokenRequestSchema = z
  .looseObject({
    website_key: z
      .string({ error: required('a string') })
      .min(1, 'must not be empty')
      .meta({
        description: "The site key of the page's hCaptcha widget (data-sitekey)",
        example: 'a5f74b19-9e45-40e0-b45d-47ff91b7a6c2',
      }),
    website_url: z
      .string({ error: required('a string') })
      .min(1, 'must not be empty')
      .meta({
        description: 'The URL of the page that shows the widget',
        example: 'https://accounts.hcaptcha.com/demo',
      }),
    rqdata: z
      .string({ error: 'must be a string' })
      .optional()
      .meta({ description: "The widget's data-rqdata, for hCaptcha Enterprise" }),
    proxy: z.string({ error: 'must be a string' }).optional().meta({
      description:
        'Your own proxy for solving: scheme://[user:pass@]host:port (http, https, socks4, socks5)',
      example: 'http://user:pass@1.2.3.4:8080',
    }),
    async: asyncField,
  })
  .meta({ id: 'TokenRequest' });

const taskIdField = z.string({ error: 'must be a string' }).min(1, 'must not be empty').max(256);

/**
 * `POST /captcha/tasks`: `{"task_id": …}` (the spec, the CLI and the MCP tools) or
 * `{"id": …, "action": "retrieve"}` (the SDK's generic task poller). Forwarded unchanged.
 */
export const taskRequestSchema = z
  .looseObject({
    task_id: taskIdField.optional().meta({
      description: 'The task_id an async submission returned',
      example: '61138bb6-19aa-11ec-a9c8-0242ac110002',
    }),
    id: taskIdField.optional().meta({
      description: "The same task id, as the SDKs' generic task poller (tasks.get/wait) sends it",
    }),
    action: z
      .literal('retrieve', { error: 'must be "retrieve"' })
      .optional()
      .meta({ description: "Sent with id by the SDKs' generic task poller" }),
  })
  .superRefine((body, ctx) => {
    if (body.task_id === undefined && body.id === undefined) {
      ctx.addIssue({ code: 'custom', message: 'is required', path: ['task_id'], input: undefined });
    } else if (body.task_id !== undefined && body.id !== undefined && body.task_id !== body.id) {
      ctx.addIssue({
        code: 'custom',
        message: 'must equal body.id when both are given',
        path: ['task_id'],
        input: undefined,
      });
    }
  })
  .meta({ id: 'TaskRequest' });

export type TaskRequest = z.output<typeof taskRequestSchema>;

/** The task a poll asks about, in either shape. */
export function polledTaskId(body: TaskRequest): string {
  return body.task_id ?? body.id ?? '';
}

// --- Responses: documented for /openapi.json; answers are the upstream's bytes, never re-serialised.

/** Opaque: `box` may hold strings or numbers, the score key varies, grids differ. */
export const solutionSchema = z.record(z.string(), z.unknown()).meta({ id: 'Solution' });

const timing = {
  elapsed: z.number().optional().meta({ description: 'Seconds the upstream took' }),
  started_at: z.number().optional(),
  finished_at: z.number().optional(),
};

export const recognitionResponseSchema = z
  .looseObject({ solution: solutionSchema, ...timing })
  .meta({ id: 'RecognitionResponse' });

export const tokenResponseSchema = z
  .looseObject({ token: z.string().meta({ description: 'Single-use hCaptcha token' }), ...timing })
  .meta({ id: 'TokenResponse' });

export const taskCreatedSchema = z
  .looseObject({ task_id: z.string(), trace_id: z.string().optional() })
  .meta({ id: 'TaskCreated' });

export const taskStatusSchema = z
  .looseObject({
    success: z.boolean().optional(),
    task_id: z.string().optional(),
    status: z.enum(['processing', 'ready']),
    solution: solutionSchema.optional(),
    token: z.string().optional(),
    ...timing,
  })
  .meta({ id: 'TaskStatus' });

export const taskTimedOutSchema = z
  .looseObject({
    detail: z.string(),
    code: z.literal('timeout'),
    success: z.literal(false),
    task_id: z.string().optional(),
    status: z.literal('failed'),
    ...timing,
  })
  .meta({ id: 'TaskTimedOut', description: 'Terminal: the task missed the upstream deadline' });

/** The upstream's error envelope, which the gateway reuses for its own errors. */
export const errorEnvelopeSchema = z
  .looseObject({
    success: z.literal(false).optional(),
    error: z.union([z.object({ code: z.string(), message: z.string() }), z.string()]),
    trace_id: z.string().optional(),
  })
  .meta({ id: 'ErrorEnvelope' });

/** What a 2xx must hold to be passed through; anything else is a malformed reply. */
export type ExpectedField = 'solution' | 'token' | 'task_id' | undefined;

export function holdsExpected(json: unknown, field: ExpectedField): boolean {
  if (field === undefined) return true;
  if (typeof json !== 'object' || json === null) return false;
  const value = (json as Record<string, unknown>)[field];
  return field === 'solution'
    ? typeof value === 'object' && value !== null
    : typeof value === 'string' && value.length > 0;
}
