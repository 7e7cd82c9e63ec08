// Idle memory of the real entry point, run from the TypeScript sources (`node src/server.ts`, type
// stripping) and compiled (`npm run build`'s tsconfig.build.json → `node dist/server.js`), with
// the same environment: what docs/operations.md measured by hand, taken again in every run.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hashClientKey } from '../src/clients/registry.ts';
import { CLIENT, type Server, UPSTREAM_TOKEN } from './peers.ts';
import { memoryOf, track } from './processes.ts';
import type { Context } from './scenarios.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

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

/**
 * Compiles src/ with tsconfig.build.json into a directory of this run (never the checkout's
 * dist/, which the image build owns), beside a package.json (ES modules) and node_modules.
 */
function build(dir: string): { entry?: string; status: number | null; ms: number; error?: string } {
  const out = join(dir, 'build');
  mkdirSync(out, { recursive: true });
  copyFileSync(join(ROOT, 'package.json'), join(out, 'package.json'));
  symlinkSync(join(ROOT, 'node_modules'), join(out, 'node_modules'), 'dir');
  const started = performance.now();
  const tsc = spawnSync(
    process.execPath,
    [
      join(ROOT, 'node_modules/typescript/bin/tsc'),
      '-p',
      join(ROOT, 'tsconfig.build.json'),
      '--outDir',
      join(out, 'dist'),
    ],
    { cwd: ROOT, encoding: 'utf8', timeout: 120_000 },
  );
  const ms = performance.now() - started;
  const entry = join(out, 'dist/server.js');
  if (!existsSync(entry)) {
    const why = (tsc.stdout + tsc.stderr).trim().split('\n').slice(0, 3).join(' ');
    return { status: tsc.status, ms, error: `the build wrote no server.js: ${why}` };
  }
  return { entry, status: tsc.status, ms };
}

/** Starts the entry point, waits for its listening line and /healthz, settles, reads VmRSS. */
async function idleRss(
  entry: string,
  env: Record<string, string>,
  cwd: string,
  settleMs: number,
): Promise<number> {
  const proc = spawn(process.execPath, [entry], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const child = track(`gateway (${entry.endsWith('.ts') ? 'sources' : 'compiled'})`, proc);
  try {
    const port = await new Promise<number>((resolve, reject) => {
      let text = '';
      let errors = '';
      const timer = setTimeout(
        () => reject(new Error(`${child.name} did not start: ${errors}`)),
        30_000,
      );
      proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
        errors += chunk;
      });
      proc.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
        text += chunk;
        for (const line of text.split('\n')) {
          if (!line.includes('"gateway listening"')) continue;
          clearTimeout(timer);
          resolve((JSON.parse(line) as { port: number }).port);
        }
      });
      proc.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`${child.name} exited (code ${code}): ${errors.trim()}`));
      });
    });
    const health = await fetch(`http://127.0.0.1:${port}/healthz`);
    if (!health.ok) throw new Error(`${child.name}: /healthz answered ${health.status}`);
    await new Promise((resolve) => setTimeout(resolve, settleMs));
    const rss = memoryOf(child.pid)?.rss;
    if (rss === undefined) throw new Error(`${child.name}: no /proc entry`);
    return rss;
  } finally {
    await child.stop();
  }
}

export async function idleMemory(ctx: Context, fake: Server): Promise<IdleResult> {
  const { runs, settleSeconds } = ctx.settings.idle;
  const built = build(ctx.dir);
  const work = join(ctx.dir, 'idle');
  mkdirSync(work, { recursive: true });
  const clientsFile = join(work, 'clients.json');
  writeFileSync(
    clientsFile,
    JSON.stringify({ clients: [{ id: CLIENT.id, keySha256: hashClientKey(CLIENT.key) }] }),
  );
  // As in docs/operations.md: nothing inherited, no .env in the working directory.
  const env = {
    PATH: process.env.PATH ?? '',
    NODE_ENV: 'production',
    ACEDATA_API_TOKEN: UPSTREAM_TOKEN,
    ACEDATA_BASE_URL: fake.url,
    GATEWAY_CLIENTS_FILE: clientsFile,
    HOST: '127.0.0.1',
    PORT: '0',
    ADMIN_HOST: '127.0.0.1',
    ADMIN_PORT: '0',
    LOG_LEVEL: 'info',
  };
  const result: IdleResult = {
    settleSeconds,
    sources: [],
    compiled: [],
    buildStatus: built.status,
    buildMs: built.ms,
    ...(built.error ? { skipped: built.error } : {}),
  };
  const sources = join(ROOT, 'src/server.ts');
  // Both at once: start-up competes for the CPU, idle memory does not.
  for (let i = 0; i < runs; i++) {
    const [ts, js] = await Promise.all([
      idleRss(sources, env, work, settleSeconds * 1000),
      built.entry ? idleRss(built.entry, env, work, settleSeconds * 1000) : undefined,
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
