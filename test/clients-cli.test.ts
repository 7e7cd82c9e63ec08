import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runClientsCli } from '../src/clients/cli.ts';
import { ClientRegistry, hashClientKey, readClientsFile } from '../src/clients/registry.ts';

const execFileAsync = promisify(execFile);
const repoRoot = fileURLToPath(new URL('..', import.meta.url));

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

/** The bare key is the last line of `add` / `rotate` output. */
function keyFrom(stdout: string): string {
  const lines = stdout.trimEnd().split('\n');
  const key = lines.at(-1) ?? '';
  expect(key).toMatch(/^agw_[A-Za-z0-9_-]{43}$/);
  return key;
}

describe('clients CLI (in-process)', () => {
  let dir: string;
  let file: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'agw-cli-'));
    file = join(dir, 'clients.json');
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

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
    await cli(['add', 'two', '--quota', '77', '--file', file]);
    const hashes = (await readClientsFile(file)).clients.map((c) => c.keySha256);

    const run = await cli(['list', '--file', file]);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^one\s+rate limit: 3 requests per 4 s; quota: none$/m);
    expect(run.stdout).toMatch(/^two\s+rate limit: gateway default; quota: 77 upstream/m);
    const json = await cli(['list', '--json', '--file', file]);
    expect(JSON.parse(json.stdout)).toEqual({
      file,
      clients: [
        { id: 'one', rateLimit: { max: 3, windowSeconds: 4 } },
        { id: 'two', quota: { upstreamCallsPerDay: 77 } },
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

describe('clients CLI (real process)', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'agw-cli-proc-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('node src/clients/cli.ts add x --file <tmp> works end to end', async () => {
    const file = join(dir, 'clients.json');
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
});
