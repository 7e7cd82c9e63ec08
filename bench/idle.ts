// Idle memory of the real entry point, run from the TypeScript sources (`node src/server.ts`, type
// stripping) and compiled (`node dist/server.js`, as the image runs it), with the same
// environment: what docs/operations.md measured by hand, taken again in every run.
import { buildCompiled, entryEnvironment, SOURCES_ENTRY, startEntryPoint } from './entry.ts';
import type { Server } from './peers.ts';
import { memoryOf } from './processes.ts';
import type { Context } from './settings.ts';

export interface IdleResult {
  settleSeconds: number;
  /** VmRSS of each run, in bytes. */
  sources: number[];
  compiled: number[];
  /** Why the compiled runs are missing, when they are. */
  skipped?: string;
  /** tsc's exit status (it emits even when the sources have type errors). */
  buildStatus?: number | null;
  buildMs?: number;
}

/** VmRSS `settleMs` after the entry point answered /healthz. */
async function idleRss(
  entry: string,
  env: Record<string, string>,
  cwd: string,
  settleMs: number,
): Promise<number> {
  const server = await startEntryPoint(entry, env, cwd);
  try {
    await new Promise((resolve) => setTimeout(resolve, settleMs));
    const rss = memoryOf(server.child.pid)?.rss;
    if (rss === undefined) throw new Error(`${server.name}: no /proc entry`);
    return rss;
  } finally {
    await server.child.stop();
  }
}

export async function idleMemory(ctx: Context, fake: Server): Promise<IdleResult> {
  const { runs, settleSeconds } = ctx.settings.idle;
  const built = buildCompiled(ctx.dir);
  const { cwd, env } = entryEnvironment(ctx.dir, fake.url);
  const result: IdleResult = {
    settleSeconds,
    sources: [],
    compiled: [],
    buildStatus: built.status,
    buildMs: built.ms,
    ...(built.error ? { skipped: built.error } : {}),
  };
  // Both at once: start-up competes for the CPU, idle memory does not.
  for (let i = 0; i < runs; i++) {
    const [ts, js] = await Promise.all([
      idleRss(SOURCES_ENTRY, env, cwd, settleSeconds * 1000),
      built.entry ? idleRss(built.entry, env, cwd, settleSeconds * 1000) : undefined,
    ]);
    result.sources.push(ts);
    if (js !== undefined) result.compiled.push(js);
  }
  const mb = (values: number[]) => values.map((v) => (v / 1e6).toFixed(1)).join(', ');
  ctx.log(
    `  idle RSS after ${settleSeconds} s: sources ${mb(result.sources)} MB; compiled ${result.compiled.length > 0 ? `${mb(result.compiled)} MB` : `skipped (${result.skipped})`}`,
  );
  return result;
}
