// Runs the fake Ace Data Cloud upstream as a standalone process (demo, benchmarks).
//   FAKE_PORT (8081), FAKE_HOST (127.0.0.1), FAKE_TOKENS (comma list), FAKE_LATENCY_MS (0),
//   FAKE_ASYNC_READY_AFTER_MS (0)

import {
  FAKE_UPSTREAM_DEFAULT_TOKEN,
  type FakeUpstreamOptions,
  startFakeUpstream,
} from './fake-upstream.ts';

/** Reads the options from the environment; returns every problem found, not just the first. */
export function optionsFromEnv(env: NodeJS.ProcessEnv): {
  options: FakeUpstreamOptions;
  problems: string[];
} {
  const problems: string[] = [];
  const int = (name: string, fallback: number, max: number): number => {
    const raw = env[name]?.trim();
    if (raw === undefined || raw === '') return fallback;
    const value = Number(raw);
    if (!Number.isInteger(value) || value < 0 || value > max) {
      problems.push(`${name} must be an integer between 0 and ${max}, got ${JSON.stringify(raw)}`);
      return fallback;
    }
    return value;
  };
  const tokens = (env.FAKE_TOKENS ?? '')
    .split(',')
    .map((t) => t.trim())
    .filter((t) => t !== '');
  const options: FakeUpstreamOptions = {
    port: int('FAKE_PORT', 8081, 65_535),
    host: env.FAKE_HOST?.trim() || '127.0.0.1',
    tokens: tokens.length > 0 ? tokens : [FAKE_UPSTREAM_DEFAULT_TOKEN],
    latencyMs: int('FAKE_LATENCY_MS', 0, 3_600_000),
    asyncReadyAfterMs: int('FAKE_ASYNC_READY_AFTER_MS', 0, 3_600_000),
  };
  return { options, problems };
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
