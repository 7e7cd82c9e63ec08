import { z } from 'zod';
import { imageQuerySchema } from './image.ts';
import { jsonShapeProblem } from './json-shape.ts';

export const MAX_QUESTION_CHARS = 500;
export const MAX_QUERIES = 18;

/**
 * Rejects a body the gateway could not forward unchanged (see json-shape.ts): too deeply nested,
 * or holding a number beyond the double range. Names the top-level field, never echoes values.
 */
function forwardableBody(body: Record<string, unknown>, ctx: z.RefinementCtx): void {
  const problem = jsonShapeProblem(body);
  if (problem === undefined) return;
  ctx.addIssue({
    code: 'custom',
    message: problem.message,
    path: problem.field === undefined ? [] : [problem.field],
    input: undefined,
  });
}

/**
 * `POST /captcha/recognition/hcaptcha` body. Unknown fields pass through unchanged (the upstream
 * may accept more than it documents); `queries` come out normalised (no data: prefix, no wrapping).
 */
export const recognitionRequestSchema = z
  .looseObject({
    question: z
      .string({ error: 'is required and must be a string' })
      .refine((q) => q.trim().length > 0, 'must not be empty')
      .refine(
        (q) => [...q.trim()].length <= MAX_QUESTION_CHARS,
        `must be at most ${MAX_QUESTION_CHARS} characters`,
      )
      .meta({
        description: 'The challenge question, English or Chinese',
        example: 'Please click each image containing a bus',
      }),
    queries: z
      .array(imageQuerySchema, { error: 'is required and must be an array of Base64 images' })
      .min(1, 'must hold at least 1 image')
      .max(MAX_QUERIES, `must hold at most ${MAX_QUERIES} images`),
    async: z
      .boolean({ error: 'must be a boolean' })
      .optional()
      .meta({ description: 'Submit as a task and poll /captcha/tasks' }),
  })
  .superRefine(forwardableBody)
  .meta({ id: 'RecognitionRequest' });

export type RecognitionRequest = z.output<typeof recognitionRequestSchema>;

/** `POST /captcha/tasks` body: poll an async recognition task. */
export const taskRequestSchema = z
  .looseObject({
    task_id: z
      .string({ error: 'is required and must be a string' })
      .min(1, 'must not be empty')
      .max(256, 'must be at most 256 characters'),
  })
  .superRefine(forwardableBody)
  .meta({ id: 'TaskRequest' });

export type TaskRequest = z.output<typeof taskRequestSchema>;

/** Solution is opaque: `box` may hold strings or numbers, the score key varies, grids differ. */
export const solutionSchema = z.record(z.string(), z.unknown()).meta({ id: 'Solution' });

export const recognitionResponseSchema = z
  .looseObject({ solution: solutionSchema, elapsed: z.number().optional() })
  .meta({ id: 'RecognitionResponse' });

export const asyncSubmissionSchema = z
  .looseObject({ task_id: z.string(), trace_id: z.string().optional() })
  .meta({ id: 'AsyncSubmission' });

export const taskStatusSchema = z
  .looseObject({
    task_id: z.string().optional(),
    status: z.string().optional(),
    solution: solutionSchema.optional(),
    trace_id: z.string().optional(),
  })
  .meta({ id: 'TaskStatus' });

/** The upstream's error envelope, which the gateway reuses for its own errors. */
export const errorEnvelopeSchema = z
  .looseObject({
    success: z.literal(false).optional(),
    error: z.union([z.object({ code: z.string(), message: z.string() }), z.string()]),
    trace_id: z.string().optional(),
  })
  .meta({ id: 'ErrorEnvelope' });

/** What a recognition 200 must hold to be forwarded; anything else is a malformed reply. */
export function isRecognitionSuccess(body: unknown, async: boolean): boolean {
  if (typeof body !== 'object' || body === null) return false;
  if (async) return typeof (body as { task_id?: unknown }).task_id === 'string';
  const solution = (body as { solution?: unknown }).solution;
  return typeof solution === 'object' && solution !== null;
}
