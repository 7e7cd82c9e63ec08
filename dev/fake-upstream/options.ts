// The fake's start options, checked once here (the CLI maps its environment onto them).

import { z } from 'zod';

export const FAKE_UPSTREAM_DEFAULT_TOKEN = 'test-upstream-token';

/** The upstream's deadline for an async task (guides, captcha_tasks: "a 120-second deadline"). */
export const UPSTREAM_TASK_DEADLINE_MS = 120_000;

const milliseconds = z.number().min(0);

export const fakeUpstreamOptionsSchema = z.strictObject({
  /** Valid upstream tokens; default [FAKE_UPSTREAM_DEFAULT_TOKEN]. */
  tokens: z.array(z.string().min(1)).optional(),
  /** Answer time of a sync call; default 0. */
  latencyMs: milliseconds.optional(),
  /** An async task is `processing` for this long, then `ready`; default 0. */
  asyncReadyAfterMs: milliseconds.optional(),
  /** A task not ready by then is `failed` (terminal 504); default 120000. */
  taskDeadlineMs: z.number().positive().optional(),
  /** Calls per second per token, then 429 too_many_requests; default: no limit. */
  rateLimitPerSecond: z.number().positive().optional(),
  /**
   * Tasks belong to an account: by default every token is its own account, so a task created
   * with one token is not found with another. true: all tokens share one account.
   */
  sharedAccount: z.boolean().optional(),
  host: z.string().min(1).optional(),
  /** 0 (default): an ephemeral port. */
  port: z.number().int().min(0).max(65_535).optional(),
  /** The clock (epoch ms) for tasks, timing fields and the rate limit; default Date.now. */
  now: z
    .custom<() => number>((value) => typeof value === 'function', 'must be a function')
    .optional(),
});

export type FakeUpstreamOptions = z.infer<typeof fakeUpstreamOptionsSchema>;

/** Parses with a schema; bad input throws a RangeError naming every problem. */
export function parseOrThrow<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const result = schema.safeParse(value);
  if (!result.success) throw new RangeError(`${what}: ${z.prettifyError(result.error)}`);
  return result.data;
}
