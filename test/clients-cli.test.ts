import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { runClientsCli } from '../src/clients/cli.ts';
import { lockPathOf, updateClientsFile } from '../src/clients/lock.ts';
import {
  ClientRegistry,
  ClientRegistryError,
  type ClientsFile,
  hashClientKey,
  readClientsFile,
  writeClientsFile,
} from '../src/clients/registry.ts';
import { utcDay } from '../src/days.ts';
import { usageKey } from '../src/usage/store.ts';
import { describeWithRedis, useRedis } from './redis-server.ts';

const execFileAsync = promisify(execFile);
const repoRoot = fileURLToPath(new URL('..', import.meta.url));
const CLI = fileURLToPath(new URL('../src/clients/cli.ts', import.meta.url));
/** A bound for tests that start Node processes (each takes a while on a busy machine). */
const PROCESS_BOUND_MS = 60_000;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function cli(argv: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  let stdout = '';
  let stderr = '';
  const code = await runClientsCli(argv, {
    stdout: (s) => {
      stdout += s;
    },
    stderr: (s) => {
      stderr += s;
    },
    env,
  });
  return { code, stdout, stderr };
}

/** A fresh directory per test; `file` is the clients file in it (not created). */
let dir: string;
let file: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agw-cli-'));
  file = join(dir, 'clients.json');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The bare key is the last line of `add` / `rotate` output. */
function keyFrom(stdout: string): string {
  const lines = stdout.trimEnd().split('\n');
  const key = lines.at(-1) ?? '';
  expect(key).toMatch(/^agw_[A-Za-z0-9_-]{43}$/);
  return key;
}

describe('clients CLI (in-process)', () => {
  it('add writes the hash of the printed key, which the registry then authenticates', async () => {
    const run = await cli(['add', 'checkout-service', '--file', file]);
    expect(run.code).toBe(0);
    expect(run.stderr).toBe('');
    const lines = run.stdout.trimEnd().split('\n');
    expect(lines[0]).toBe(`client "checkout-service" added to ${file}`);
    expect(run.stdout).toContain('key (shown once, store it now');
    const key = keyFrom(run.stdout);

    const text = await readFile(file, 'utf8');
    expect(text).not.toContain(key);
    expect(text).not.toContain(key.slice(4));
    expect(text.endsWith('\n')).toBe(true);
    const stored = await readClientsFile(file);
    expect(stored.clients).toEqual([{ id: 'checkout-service', keySha256: hashClientKey(key) }]);
    if (process.platform !== 'win32') expect((await stat(file)).mode & 0o777).toBe(0o600);

    const registry = await ClientRegistry.fromFile(file);
    expect(registry.authenticate(key)?.id).toBe('checkout-service');
    expect(registry.authenticate(`${key}x`)).toBeUndefined();
  });

  it('add --json prints {id, key, file} only', async () => {
    const run = await cli(['add', 'svc', '--json', '--file', file]);
    expect(run.code).toBe(0);
    expect(run.stdout.endsWith('\n')).toBe(true);
    const out = JSON.parse(run.stdout) as { id: string; key: string; file: string };
    expect(Object.keys(out).sort()).toEqual(['file', 'id', 'key']);
    expect(out.id).toBe('svc');
    expect(out.file).toBe(file);
    const registry = await ClientRegistry.fromFile(file);
    expect(registry.authenticate(out.key)?.id).toBe('svc');
  });

  it('add stores --max/--window/--quota', async () => {
    const run = await cli([
      'add',
      'limited',
      '--max',
      '120',
      '--window',
      '30',
      '--quota',
      '5000',
      '--file',
      file,
    ]);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('rate limit: 120 requests per 30 s');
    expect(run.stdout).toContain('quota: 5000 upstream calls per day');
    const registry = await ClientRegistry.fromFile(file);
    expect(registry.get('limited')).toMatchObject({
      rateLimit: { max: 120, windowSeconds: 30 },
      quota: { upstreamCallsPerDay: 5000 },
    });
  });

  it('add fills the missing half of the rate limit from the environment, else 60/60', async () => {
    const env = { RATE_LIMIT_MAX: '200', RATE_LIMIT_WINDOW_SECONDS: '10' };
    expect((await cli(['add', 'a', '--max', '5', '--file', file], env)).code).toBe(0);
    expect((await cli(['add', 'b', '--window', '7', '--file', file], env)).code).toBe(0);
    expect((await cli(['add', 'c', '--max', '9', '--file', file])).code).toBe(0);
    expect((await cli(['add', 'd', '--file', file], env)).code).toBe(0);
    const registry = await ClientRegistry.fromFile(file);
    expect(registry.get('a')?.rateLimit).toEqual({ max: 5, windowSeconds: 10 });
    expect(registry.get('b')?.rateLimit).toEqual({ max: 200, windowSeconds: 7 });
    expect(registry.get('c')?.rateLimit).toEqual({ max: 9, windowSeconds: 60 });
    expect(registry.get('d')?.rateLimit).toBeUndefined();

    const bad = await cli(['add', 'e', '--max', '5', '--file', file], {
      RATE_LIMIT_WINDOW_SECONDS: 'soon',
    });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('RATE_LIMIT_WINDOW_SECONDS');
  });

  it('uses GATEWAY_CLIENTS_FILE when --file is absent', async () => {
    const run = await cli(['add', 'from-env', '--json'], { GATEWAY_CLIENTS_FILE: file });
    expect(run.code).toBe(0);
    expect(JSON.parse(run.stdout).file).toBe(file);
    expect((await readClientsFile(file)).clients.map((c) => c.id)).toEqual(['from-env']);
  });

  it('add refuses a duplicate id (exit 1) and leaves the file alone', async () => {
    await cli(['add', 'dup', '--file', file]);
    const before = await readFile(file, 'utf8');
    const run = await cli(['add', 'dup', '--file', file]);
    expect(run.code).toBe(1);
    expect(run.stdout).toBe('');
    expect(run.stderr).toContain('"dup" already exists');
    expect(await readFile(file, 'utf8')).toBe(before);
  });

  it('add refuses an invalid id (exit 2)', async () => {
    for (const id of ['has space', 'a/b', 'x'.repeat(65), '']) {
      const run = await cli(['add', id, '--file', file]);
      expect(run.code).toBe(2);
      expect(run.stderr).toContain('invalid client id');
    }
    await expect(stat(file)).rejects.toThrow();
  });

  it('list shows ids and limits but never hashes', async () => {
    expect((await cli(['list', '--file', file])).stdout).toContain('no clients');
    await cli(['add', 'one', '--max', '3', '--window', '4', '--file', file]);
    await cli(['add', 'two', '--quota', '77', '--max-in-flight', '6', '--file', file]);
    const hashes = (await readClientsFile(file)).clients.map((c) => c.keySha256);

    const run = await cli(['list', '--file', file]);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(
      /^one\s+rate limit: 3 requests per 4 s; quota: none; in flight: gateway default$/m,
    );
    expect(run.stdout).toMatch(
      /^two\s+rate limit: gateway default; quota: 77 upstream calls per day; in flight: 6 requests at once$/m,
    );
    const json = await cli(['list', '--json', '--file', file]);
    expect(JSON.parse(json.stdout)).toEqual({
      file,
      clients: [
        { id: 'one', rateLimit: { max: 3, windowSeconds: 4 } },
        { id: 'two', quota: { upstreamCallsPerDay: 77 }, maxInFlight: 6 },
      ],
    });
    for (const hash of hashes) {
      expect(run.stdout).not.toContain(hash);
      expect(json.stdout).not.toContain(hash);
    }
    expect(json.stdout).not.toContain('keySha256');
  });

  it('remove deletes the client; unknown id exits 1', async () => {
    const keyA = keyFrom((await cli(['add', 'a', '--file', file])).stdout);
    const keyB = keyFrom((await cli(['add', 'b', '--file', file])).stdout);
    const run = await cli(['remove', 'a', '--file', file]);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('"a" removed');
    const registry = await ClientRegistry.fromFile(file);
    expect(registry.ids).toEqual(['b']);
    expect(registry.authenticate(keyA)).toBeUndefined();
    expect(registry.authenticate(keyB)?.id).toBe('b');

    const again = await cli(['remove', 'a', '--file', file]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('no client "a"');

    const last = await cli(['remove', 'b', '--file', file]);
    expect(last.code).toBe(0);
    expect(last.stderr).toContain('no clients');
    expect(await readClientsFile(file)).toEqual({ clients: [] });
  });

  it('rotate changes the hash, keeps the limits, and the old key stops working', async () => {
    const oldKey = keyFrom(
      (await cli(['add', 'svc', '--max', '10', '--window', '20', '--quota', '30', '--file', file]))
        .stdout,
    );
    const oldHash = (await readClientsFile(file)).clients[0]?.keySha256;

    const run = await cli(['rotate', 'svc', '--file', file]);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('key rotated');
    const newKey = keyFrom(run.stdout);
    expect(newKey).not.toBe(oldKey);

    const [stored] = (await readClientsFile(file)).clients;
    expect(stored?.keySha256).not.toBe(oldHash);
    expect(stored).toEqual({
      id: 'svc',
      keySha256: hashClientKey(newKey),
      rateLimit: { max: 10, windowSeconds: 20 },
      quota: { upstreamCallsPerDay: 30 },
    });
    const registry = await ClientRegistry.fromFile(file);
    expect(registry.authenticate(oldKey)).toBeUndefined();
    expect(registry.authenticate(newKey)?.id).toBe('svc');

    const json = await cli(['rotate', 'svc', '--json', '--file', file]);
    expect(Object.keys(JSON.parse(json.stdout)).sort()).toEqual(['file', 'id', 'key']);

    const unknown = await cli(['rotate', 'nobody', '--file', file]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('no client "nobody"');
  });

  it('usage errors exit 2 with the usage on stderr', async () => {
    const cases = [
      [],
      ['frobnicate'],
      ['add'],
      ['add', 'a', 'b'],
      ['list', 'extra'],
      ['add', 'a', '--max', '0'],
      ['add', 'a', '--max', 'ten'],
      ['add', 'a', '--quota', '-5'],
      ['add', 'a', '--bogus'],
      ['rotate', 'a', '--max', '5'],
      ['list', '--file'],
    ];
    for (const argv of cases) {
      const run = await cli([...argv, ...(argv.includes('--file') ? [] : ['--file', file])]);
      expect(run.code, argv.join(' ')).toBe(2);
      expect(run.stderr).toContain('Usage: npm run clients');
      expect(run.stdout).toBe('');
    }
    await expect(stat(file)).rejects.toThrow();
  });

  it('--help prints the usage to stdout', async () => {
    const run = await cli(['--help']);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('Usage: npm run clients');
  });

  it('an invalid clients file is reported (exit 1) and not overwritten', async () => {
    const hash = hashClientKey('whatever');
    const content = JSON.stringify({ clients: [{ id: 'a', keySha256: hash, color: 'red' }] });
    await writeFile(file, content);
    const run = await cli(['add', 'b', '--file', file]);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('clients[0].color');
    expect(run.stderr).not.toContain(hash);
    expect(await readFile(file, 'utf8')).toBe(content);
  });
});

describe('clients CLI: when changes take effect, settings, lock', () => {
  it('add, rotate and remove say when running gateways pick the change up', async () => {
    const add = await cli(['add', 'svc', '--file', file]);
    expect(add.stdout).toContain(
      'running gateways accept the key within about 1 s (CLIENTS_RELOAD_INTERVAL_MS=1000), or at once on SIGHUP',
    );
    const env = { CLIENTS_RELOAD_INTERVAL_MS: '4500' };
    const rotate = await cli(['rotate', 'svc', '--file', file], env);
    expect(rotate.stdout).toContain(
      'running gateways switch to the new key within about 5 s (CLIENTS_RELOAD_INTERVAL_MS=4500), or at once on SIGHUP; until then the old key still works',
    );
    const remove = await cli(['remove', 'svc', '--file', file], env);
    expect(remove.stdout).toContain(
      'running gateways stop accepting its key within about 5 s (CLIENTS_RELOAD_INTERVAL_MS=4500), or at once on SIGHUP',
    );
    for (const run of [add, rotate, remove]) expect(run.stdout).not.toContain('no longer works');
  });

  it('validates settings with the server schema before touching the file', async () => {
    const run = await cli(['add', 'svc', '--file', file], { CLIENTS_RELOAD_INTERVAL_MS: '10' });
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('CLIENTS_RELOAD_INTERVAL_MS: must be at least 100');
    await expect(stat(file)).rejects.toThrow();

    const noFile = await cli(['list'], { GATEWAY_CLIENTS_FILE: '' });
    expect(noFile.stdout).toContain('no clients in ./data/clients.json');
  });

  it('add --max-in-flight stores a positive integer', async () => {
    const ok = await cli(['add', 'svc', '--max-in-flight', '3', '--file', file]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain('in flight: 3 requests at once');
    expect((await readClientsFile(file)).clients[0]?.maxInFlight).toBe(3);
    for (const bad of ['0', '-2', 'many', '1.5']) {
      const run = await cli(['add', 'other', '--max-in-flight', bad, '--file', file]);
      expect(run.code, bad).toBe(2);
      expect(run.stderr).toContain('--max-in-flight');
    }
    expect((await cli(['rotate', 'svc', '--max-in-flight', '3', '--file', file])).code).toBe(2);
  });

  it('takes over a stale lock left by a crashed writer', async () => {
    await mkdir(lockPathOf(file));
    const old = new Date(Date.now() - 60_000);
    await utimes(lockPathOf(file), old, old);
    const run = await cli(['add', 'svc', '--file', file]);
    expect(run.code).toBe(0);
    expect((await readClientsFile(file)).clients.map((c) => c.id)).toEqual(['svc']);
    await expect(stat(lockPathOf(file))).rejects.toThrow(); // released
  });

  it('a lock held by a live writer: waits (bounded), then says so and leaves the file alone', async () => {
    await writeClientsFile(file, { clients: [] });
    await mkdir(lockPathOf(file)); // fresh: a writer is at work
    const change = vi.fn((contents: ClientsFile) => ({ file: contents, result: 1 }));
    const err = await updateClientsFile(file, change, { waitRetries: 0 }).catch((e) => e);
    expect(err).toBeInstanceOf(ClientRegistryError);
    expect((err as Error).message).toContain(`${lockPathOf(file)} exists`);
    expect(change).not.toHaveBeenCalled();
  });

  it('a change that throws leaves the file alone and releases the lock', async () => {
    await writeClientsFile(file, { clients: [] });
    const before = await readFile(file, 'utf8');
    await expect(
      updateClientsFile(file, () => {
        throw new Error('no thanks');
      }),
    ).rejects.toThrow('no thanks');
    expect(await readFile(file, 'utf8')).toBe(before);
    await expect(stat(lockPathOf(file))).rejects.toThrow();
  });
});

describe('clients CLI (real process)', { timeout: PROCESS_BOUND_MS }, () => {
  it('node src/clients/cli.ts add x --file <tmp> works end to end', async () => {
    const { stdout, stderr } = await execFileAsync(
      process.execPath,
      ['src/clients/cli.ts', 'add', 'x', '--file', file],
      { cwd: repoRoot, env: { ...process.env, GATEWAY_CLIENTS_FILE: '' } },
    );
    expect(stderr).toBe('');
    expect(stdout).toContain(`client "x" added to ${file}`);
    const key = keyFrom(stdout);
    const registry = await ClientRegistry.fromFile(file);
    expect(registry.authenticate(key)?.id).toBe('x');

    // Exit codes propagate from the real process.
    const err = await execFileAsync(
      process.execPath,
      ['src/clients/cli.ts', 'add', 'x', '--file', file],
      { cwd: repoRoot },
    ).then(
      () => undefined,
      (e: { code?: number; stderr?: string }) => e,
    );
    expect(err?.code).toBe(1);
    expect(err?.stderr).toContain('already exists');
  });

  /** Runs the CLI as a process in `cwd` with exactly `env` (plus PATH): nothing inherited. */
  function runProcess(args: string[], cwd: string, env: Record<string, string> = {}) {
    return execFileAsync(process.execPath, [CLI, ...args], {
      cwd,
      env: { PATH: process.env.PATH ?? '', ...env },
    });
  }

  it('reads .env as the server does: GATEWAY_CLIENTS_FILE, RATE_LIMIT_*, CLIENTS_RELOAD_INTERVAL_MS', async () => {
    await writeFile(
      join(dir, '.env'),
      [
        'GATEWAY_CLIENTS_FILE=./data/clients.json',
        'RATE_LIMIT_MAX=200',
        'RATE_LIMIT_WINDOW_SECONDS=30',
        'CLIENTS_RELOAD_INTERVAL_MS=3000',
        '',
      ].join('\n'),
    );
    const { stdout } = await runProcess(['add', 'from-dotenv', '--window', '7'], dir);
    expect(stdout).toContain('client "from-dotenv" added to ./data/clients.json');
    expect(stdout).toContain('rate limit: 200 requests per 7 s');
    expect(stdout).toContain('within about 3 s (CLIENTS_RELOAD_INTERVAL_MS=3000)');
    const stored = await readClientsFile(join(dir, 'data', 'clients.json'));
    expect(stored.clients[0]?.rateLimit).toEqual({ max: 200, windowSeconds: 7 });

    // A real environment variable wins over .env; --file wins over both.
    const other = join(dir, 'other.json');
    await runProcess(['add', 'from-env', '--json'], dir, { GATEWAY_CLIENTS_FILE: other });
    expect((await readClientsFile(other)).clients.map((c) => c.id)).toEqual(['from-env']);
    const flag = join(dir, 'flag.json');
    await runProcess(['add', 'from-flag', '--file', flag], dir, { GATEWAY_CLIENTS_FILE: other });
    expect((await readClientsFile(flag)).clients.map((c) => c.id)).toEqual(['from-flag']);

    // A bad value in .env is reported by name, as the server would.
    await writeFile(join(dir, '.env'), 'RATE_LIMIT_MAX=lots\n');
    const err = await runProcess(['add', 'bad', '--window', '5'], dir).catch((e) => e);
    expect(err.code).toBe(1);
    expect(err.stderr).toContain('RATE_LIMIT_MAX: must be a whole number');
  });

  it("without .env or settings, writes ./data/clients.json (the server's default)", async () => {
    const { stdout } = await runProcess(['add', 'svc', '--json'], dir);
    expect(JSON.parse(stdout)).toMatchObject({ id: 'svc', file: './data/clients.json' });
    expect((await readClientsFile(join(dir, 'data', 'clients.json'))).clients).toHaveLength(1);
  });

  it('8 parallel add runs: 8 keys printed, 8 clients saved, every key works', async () => {
    const runs = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        runProcess(['add', `svc-${i}`, '--json', '--file', file], dir),
      ),
    );
    const keys = runs.map((r) => JSON.parse(r.stdout) as { id: string; key: string });
    const registry = await ClientRegistry.fromFile(file);
    expect([...registry.ids].sort()).toEqual(
      Array.from({ length: 8 }, (_, i) => `svc-${i}`).sort(),
    );
    for (const { id, key } of keys) expect(registry.authenticate(key)?.id).toBe(id);
    await expect(stat(lockPathOf(file))).rejects.toThrow();
  });
});

describeWithRedis('clients usage (Redis)', () => {
  const db = useRedis();

  it('reads Redis directly (every replica) with limits from the clients file', async () => {
    const today = utcDay(new Date());
    await writeClientsFile(file, {
      clients: [
        { id: 'alice', keySha256: hashClientKey('agw_a'), quota: { upstreamCallsPerDay: 100 } },
        { id: 'bob', keySha256: hashClientKey('agw_b') },
      ],
    });
    await db.redis.del(usageKey(today));
    await db.redis.hset(usageKey(today), {
      'alice|requests': '7',
      'alice|billed_calls': '4',
      'alice|cache_hits': '2',
      'alice|merged': '1',
      'gone|requests': '1',
    });
    // The admin port is closed: proof that Redis alone answered.
    const env = { REDIS_URL: db.server.url, GATEWAY_CLIENTS_FILE: file, ADMIN_PORT: '1' };

    const table = await cli(['usage'], env);
    expect(table.code).toBe(0);
    const lines = table.stdout.trimEnd().split('\n');
    expect(lines[0]).toBe(`usage on ${today} (UTC, so far), all replicas (Redis)`);
    expect(lines[2]).toMatch(/^alice\s+7\s+4\/100\s+2\s+1\s+3\s+0\s+0\s+0$/);
    expect(lines[3]).toMatch(/^bob\s+0\s+0\s/);
    expect(lines[4]).toMatch(/^gone\s+1\s/);

    const report = JSON.parse((await cli(['usage', '--json'], env)).stdout);
    expect(report).toMatchObject({ day: today, source: 'redis' });
    expect(report.clients[0]).toMatchObject({
      id: 'alice',
      requests: 7,
      billed_calls: 4,
      calls_saved: 3,
      quota_per_day: 100,
      quota_remaining: 96,
    });

    const one = JSON.parse((await cli(['usage', 'alice', '--json'], env)).stdout);
    expect(one).toMatchObject({ day: today, source: 'redis', client: { id: 'alice' } });
    const unknown = await cli(['usage', 'nobody'], env);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('no client "nobody"');
  });
});

/** A loopback port nothing listens on (one that was just free). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  return typeof address === 'object' && address ? address.port : 0;
}

describe('clients usage: nothing to read from', () => {
  it('names both sources when neither Redis nor the admin port answers', async () => {
    const port = await closedPort();
    const run = await cli(['usage'], {
      REDIS_URL: `redis://:s3cret-pass@127.0.0.1:${port}`,
      ADMIN_PORT: String(port),
      GATEWAY_CLIENTS_FILE: file,
    });
    expect(run.code).toBe(1);
    expect(run.stderr).toContain(
      `cannot read usage: Redis at redis://127.0.0.1:${port}: ECONNREFUSED; ` +
        `no gateway answered at http://127.0.0.1:${port}/usage: ECONNREFUSED`,
    );
    // The password in REDIS_URL is never printed.
    expect(run.stderr).not.toContain('s3cret-pass');
  });
});
