// The real entry point, as the image runs it: `npm run build`'s tsconfig.build.json compiled into
// a directory of the run, and `node <entry>` with a clients file and a clean environment.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hashClientKey } from '../src/clients/registry.ts';
import { CLIENT, UPSTREAM_TOKEN } from './peers.ts';
import { type Child, track } from './processes.ts';
import { shippedNodeFlags } from './shipped.ts';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const SOURCES_ENTRY = join(ROOT, 'src/server.ts');

export interface Build {
  /** dist/server.js, when the build wrote it. */
  entry?: string;
  /** tsc's exit status (it emits even when the sources have type errors). */
  status: number | null;
  ms: number;
  error?: string;
}

const builds = new Map<string, Build>();

/**
 * Compiles src/ with tsconfig.build.json into `<dir>/build/dist` (never the checkout's dist/,
 * which the image build owns), beside a package.json (ES modules) and node_modules. Once per dir.
 */
export function buildCompiled(dir: string): Build {
  const done = builds.get(dir);
  if (done) return done;
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
  const build: Build = existsSync(entry)
    ? { entry, status: tsc.status, ms }
    : {
        status: tsc.status,
        ms,
        error: `the build wrote no server.js: ${(tsc.stdout + tsc.stderr).trim().split('\n').slice(0, 3).join(' ')}`,
      };
  builds.set(dir, build);
  return build;
}

/**
 * A working directory with a clients file holding the bench client (its rate limit raised so
 * that it never binds), and the environment docs/operations.md measured with: nothing inherited,
 * no .env, NODE_ENV=production, loopback, ports 0.
 */
export function entryEnvironment(dir: string, upstreamUrl: string) {
  const cwd = join(dir, 'entry');
  mkdirSync(cwd, { recursive: true });
  const clientsFile = join(cwd, 'clients.json');
  writeFileSync(
    clientsFile,
    JSON.stringify({
      clients: [
        {
          id: CLIENT.id,
          keySha256: hashClientKey(CLIENT.key),
          rateLimit: { max: 1_000_000_000, windowSeconds: 60 },
        },
      ],
    }),
  );
  const env = {
    PATH: process.env.PATH ?? '',
    NODE_ENV: 'production',
    ACEDATA_API_TOKEN: UPSTREAM_TOKEN,
    ACEDATA_BASE_URL: upstreamUrl,
    GATEWAY_CLIENTS_FILE: clientsFile,
    HOST: '127.0.0.1',
    PORT: '0',
    ADMIN_HOST: '127.0.0.1',
    ADMIN_PORT: '0',
    LOG_LEVEL: 'info',
  };
  return { cwd, env };
}

export interface EntryServer {
  name: string;
  child: Child;
  url: string;
  adminUrl: string;
}

/** Starts `node <entry>`, resolves once its "gateway listening" line and /healthz say it serves. */
export async function startEntryPoint(
  entry: string,
  env: Record<string, string>,
  cwd: string,
): Promise<EntryServer> {
  const proc = spawn(process.execPath, [...shippedNodeFlags(), entry], {
    cwd,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const name = `gateway (${entry.endsWith('.ts') ? 'sources' : 'compiled'})`;
  const child = track(name, proc);
  try {
    const ports = await new Promise<{ port: number; admin_port: number }>((resolve, reject) => {
      let partial = '';
      let errors = '';
      let listening = false;
      const timer = setTimeout(() => reject(new Error(`${name} did not start: ${errors}`)), 30_000);
      proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
        errors += chunk;
      });
      // Read (and drop) every log line, so that the pipe never fills and blocks the server.
      proc.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
        if (listening) return;
        const lines = (partial + chunk).split('\n');
        partial = lines.pop() ?? '';
        const line = lines.find((l) => l.includes('"gateway listening"'));
        if (!line) return;
        listening = true;
        clearTimeout(timer);
        resolve(JSON.parse(line) as { port: number; admin_port: number });
      });
      proc.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`${name} exited (code ${code}): ${errors.trim()}`));
      });
    });
    const url = `http://127.0.0.1:${ports.port}`;
    const health = await fetch(`${url}/healthz`);
    if (!health.ok) throw new Error(`${name}: /healthz answered ${health.status}`);
    return { name, child, url, adminUrl: `http://127.0.0.1:${ports.admin_port}` };
  } catch (error) {
    await child.kill();
    throw error;
  }
}
