// Runs the fake Ace Data Cloud upstream as a standalone process (demo, benchmarks, compose checks).
//   FAKE_PORT (8081), FAKE_HOST (127.0.0.1), FAKE_TOKENS (comma list; test-upstream-token),
//   FAKE_LATENCY_MS (0): sync answer time,
//   FAKE_ASYNC_READY_AFTER_MS (0): an async task is processing this long, then ready,
//   FAKE_TASK_DEADLINE_MS (120000): a task not ready by then fails with the terminal 504,
//   FAKE_RATE_LIMIT_PER_SECOND (0: off): calls per second per token, then 429 (the upstream's
//     limit is 60/s), FAKE_SHARED_ACCOUNT (false): all tokens share one account (and its tasks).

import { z } from 'zod';
import {
  FAKE_UPSTREAM_DEFAULT_TOKEN,
  type FakeUpstreamOptions,
  startFakeUpstream,
} from './fake-upstream.ts';

const HOUR_MS = 3_600_000;

const integer = (min: number, max: number) => {
  const problem = `must be an integer between ${min} and ${max}`;
  return z
    .string()
    .regex(/^\d+$/, problem)
    .transform(Number)
    .pipe(z.number().min(min, problem).max(max, problem))
    .optional();
};

const envSchema = z.object({
  FAKE_PORT: integer(0, 65_535),
  FAKE_HOST: z.string().optional(),
  FAKE_TOKENS: z
    .string()
    .transform((list) =>
      list
        .split(',')
        .map((t) => t.trim())
        .filter((t) => t !== ''),
    )
    .optional(),
  FAKE_LATENCY_MS: integer(0, HOUR_MS),
  FAKE_ASYNC_READY_AFTER_MS: integer(0, HOUR_MS),
  FAKE_TASK_DEADLINE_MS: integer(1, HOUR_MS),
  FAKE_RATE_LIMIT_PER_SECOND: integer(0, 1_000_000),
  FAKE_SHARED_ACCOUNT: z
    .enum(['true', 'false', '1', '0'], { error: 'must be true, false, 1 or 0' })
    .transform((flag) => flag === 'true' || flag === '1')
    .optional(),
});

/** Reads the options from the environment; returns every problem found, not just the first. */
export function optionsFromEnv(env: NodeJS.ProcessEnv): {
  options: FakeUpstreamOptions;
  problems: string[];
} {
  // Unset and blank variables take their defaults.
  const given: Record<string, string> = {};
  for (const name of Object.keys(envSchema.shape)) {
    const value = env[name]?.trim();
    if (value) given[name] = value;
  }
  const parsed = envSchema.safeParse(given);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => {
      const name = String(issue.path[0]);
      return `${name} ${issue.message}, got ${JSON.stringify(given[name])}`;
    });
    return { options: {}, problems };
  }
  const vars = parsed.data;
  const options: FakeUpstreamOptions = {
    port: vars.FAKE_PORT ?? 8081,
    host: vars.FAKE_HOST ?? '127.0.0.1',
    tokens: vars.FAKE_TOKENS?.length ? vars.FAKE_TOKENS : [FAKE_UPSTREAM_DEFAULT_TOKEN],
    latencyMs: vars.FAKE_LATENCY_MS ?? 0,
    asyncReadyAfterMs: vars.FAKE_ASYNC_READY_AFTER_MS ?? 0,
    sharedAccount: vars.FAKE_SHARED_ACCOUNT ?? false,
  };
  if (vars.FAKE_TASK_DEADLINE_MS !== undefined) options.taskDeadlineMs = vars.FAKE_TASK_DEADLINE_MS;
  if (vars.FAKE_RATE_LIMIT_PER_SECOND) options.rateLimitPerSecond = vars.FAKE_RATE_LIMIT_PER_SECOND;
  return { options, problems: [] };
}

async function main(): Promise<void> {
  const { options, problems } = optionsFromEnv(process.env);
  if (problems.length > 0) {
    for (const problem of problems) console.error(`fake upstream: ${problem}`);
    process.exitCode = 1;
    return;
  }
  const fake = await startFakeUpstream(options);
  console.log(`fake upstream listening on ${fake.url}`);
  const stop = (): void => {
    fake.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

if (import.meta.main) {
  main().catch((err: unknown) => {
    console.error('fake upstream failed to start:', err);
    process.exitCode = 1;
  });
}
