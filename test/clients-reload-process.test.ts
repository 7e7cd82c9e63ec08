/**
 * Key changes reach running gateways without a restart: the real entry point (`node
 * src/server.ts`) against the fake upstream, the real CLI as a process, and waits on the
 * gateway's own "clients reloaded" log lines, never on sleeps.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  FAKE_UPSTREAM_DEFAULT_TOKEN,
  type FakeUpstream,
  startFakeUpstream,
} from '../dev/fake-upstream.ts';
import { hashClientKey } from '../src/clients/registry.ts';

const SERVER = fileURLToPath(new URL('../src/server.ts', import.meta.url));
const CLI = fileURLToPath(new URL('../src/clients/cli.ts', import.meta.url));
const BOUND_MS = 15_000;
const RECOGNITION = '/captcha/recognition/hcaptcha';
const PNG_1X1 =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==';

const execFileAsync = promisify(execFile);

type LogLine = Record<string, unknown> & { msg?: string };

/** Rejects if `promise` has not settled within `ms`: a bound on waiting, not a timing assertion. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, bound]);
  } finally {
    clearTimeout(timer);
  }
}

class Gateway {
  readonly lines: LogLine[] = [];
  readonly events = new EventEmitter();
  stdout = '';
  stderr = '';
  readonly child: ChildProcess;
  readonly exited: Promise<void>;
  port = 0;
  adminPort = 0;

  constructor(env: Record<string, string>, cwd: string) {
    this.child = spawn(process.execPath, [SERVER], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let partial = '';
    this.child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      this.stdout += chunk;
      partial += chunk;
      const complete = partial.split('\n');
      partial = complete.pop() ?? '';
      for (const text of complete) {
        if (text === '') continue;
        const line = JSON.parse(text) as LogLine;
        this.lines.push(line);
        this.events.emit('line', line);
      }
    });
    this.child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      this.stderr += chunk;
    });
    this.exited = new Promise((resolve) => this.child.once('close', () => resolve()));
  }

  /** The first log line from index `from` on that matches, as soon as it is written. */
  waitFor(match: (line: LogLine) => boolean, what: string, from = 0): Promise<LogLine> {
    const found = this.lines.slice(from).find(match);
    if (found) return Promise.resolve(found);
    return within(
      new Promise<LogLine>((resolve, reject) => {
        const onLine = (line: LogLine) => {
          if (!match(line)) return;
          this.events.off('line', onLine);
          resolve(line);
        };
        this.events.on('line', onLine);
        this.exited.then(() =>
          reject(new Error(`gateway exited before ${what}:\n${this.stderr}${this.stdout}`)),
        );
      }),
      BOUND_MS,
      what,
    );
  }

  /** Resolves with the next "clients reloaded" line written after this call. */
  nextReload(): Promise<LogLine> {
    const from = this.lines.length;
    return this.waitFor((l) => l.msg === 'clients reloaded', 'a "clients reloaded" line', from);
  }

  /**
   * Waits for both listening lines (PORT=0 and ADMIN_PORT=0) and tells them apart by asking:
   * the main port answers an unauthenticated recognition request with 401, the admin port 404.
   */
  async listening(): Promise<void> {
    const ports: number[] = [];
    while (ports.length < 2) {
      const line = await this.waitFor(
        (l) => String(l.msg).startsWith('Server listening at') && !ports.includes(portOf(l)),
        'listening',
      );
      const port = portOf(line);
      ports.push(port);
      const response = await fetch(`http://127.0.0.1:${port}${RECOGNITION}`, { method: 'POST' });
      await response.arrayBuffer();
      if (response.status === 401) this.port = port;
      else this.adminPort = port;
    }
    if (this.port === 0 || this.adminPort === 0) throw new Error(`ports ${ports}: no main port`);
  }

  async status(key: string): Promise<number> {
    const response = await fetch(`http://127.0.0.1:${this.port}${RECOGNITION}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        question: 'Please click each image containing a bus',
        queries: [PNG_1X1],
      }),
    });
    await response.arrayBuffer();
    return response.status;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    await this.exited;
  }
}

function portOf(line: LogLine): number {
  return Number(/:(\d+)$/.exec(String(line.msg))?.[1] ?? 0);
}

/** `npm run clients -- <args> --json --file <file>` as a real process; its JSON output. */
async function clientsCli(file: string, ...args: string[]) {
  return clientsCliWith({}, file, ...args);
}

/** The same with extra environment variables. */
async function clientsCliWith(env: Record<string, string>, file: string, ...args: string[]) {
  const { stdout } = await execFileAsync(
    process.execPath,
    [CLI, ...args, '--json', '--file', file],
    { env: { PATH: process.env.PATH ?? '', ...env } },
  );
  return JSON.parse(stdout) as { key?: string } & Record<string, unknown>;
}

let fake: FakeUpstream;
let dir: string;
let file: string;
const gateways: Gateway[] = [];

function startGateway(extra: Record<string, string> = {}): Gateway {
  const gateway = new Gateway(
    {
      PATH: process.env.PATH ?? '',
      ACEDATA_API_TOKEN: FAKE_UPSTREAM_DEFAULT_TOKEN,
      ACEDATA_BASE_URL: fake.url,
      HOST: '127.0.0.1',
      PORT: '0',
      ADMIN_HOST: '127.0.0.1',
      ADMIN_PORT: '0',
      GATEWAY_CLIENTS_FILE: file,
      CLIENTS_RELOAD_INTERVAL_MS: '100',
      LOG_LEVEL: 'info',
      ...extra,
    },
    dir,
  );
  gateways.push(gateway);
  return gateway;
}

beforeAll(async () => {
  fake = await startFakeUpstream();
});

afterAll(async () => {
  await fake.close();
});

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agw-reload-'));
  file = join(dir, 'clients.json');
});

afterEach(async () => {
  await Promise.all(gateways.splice(0).map((g) => g.stop()));
  await rm(dir, { recursive: true, force: true });
});

function expectNoSecrets(gateway: Gateway, keys: string[]): void {
  for (const key of keys) {
    expect(gateway.stdout).not.toContain(key);
    expect(gateway.stdout).not.toContain(hashClientKey(key));
    expect(gateway.stderr).not.toContain(key);
  }
}

describe('key changes reach a running gateway (real process)', () => {
  it(
    'rotate, add and remove with the CLI take effect without a restart',
    async () => {
      const alice1 = (await clientsCli(file, 'add', 'alice')).key ?? '';
      const gateway = startGateway();
      await gateway.listening();
      expect(await gateway.status(alice1)).toBe(200);

      let reload = gateway.nextReload();
      const alice2 = (await clientsCli(file, 'rotate', 'alice')).key ?? '';
      expect(await reload).toMatchObject({ clients: 1, added: 0, removed: 0, changed: 1 });
      expect(await gateway.status(alice1)).toBe(401);
      expect(await gateway.status(alice2)).toBe(200);

      reload = gateway.nextReload();
      const bob = (await clientsCli(file, 'add', 'bob')).key ?? '';
      expect(await reload).toMatchObject({ clients: 2, added: 1 });
      expect(await gateway.status(bob)).toBe(200);

      reload = gateway.nextReload();
      await clientsCli(file, 'remove', 'alice');
      expect(await reload).toMatchObject({ clients: 1, removed: 1 });
      expect(await gateway.status(alice2)).toBe(401);
      expect(await gateway.status(bob)).toBe(200);

      expectNoSecrets(gateway, [alice1, alice2, bob]);
    },
    BOUND_MS * 2,
  );

  it(
    'two gateways sharing one file both pick up a change',
    async () => {
      const first = (await clientsCli(file, 'add', 'first')).key ?? '';
      const a = startGateway();
      const b = startGateway();
      await Promise.all([a.listening(), b.listening()]);
      const reloads = [a.nextReload(), b.nextReload()];
      const rotated = (await clientsCli(file, 'rotate', 'first')).key ?? '';
      for (const line of await Promise.all(reloads)) expect(line).toMatchObject({ changed: 1 });
      for (const gateway of [a, b]) {
        expect(await gateway.status(first)).toBe(401);
        expect(await gateway.status(rotated)).toBe(200);
      }
    },
    BOUND_MS * 2,
  );

  it(
    'starts before the clients file exists (refusing every key), then accepts the first one added',
    async () => {
      const gateway = startGateway();
      await gateway.listening();
      expect(
        gateway.lines.find((l) => String(l.msg).startsWith('clients file not found')),
      ).toMatchObject({ clients_file: file });
      expect(await gateway.status('agw_nobody_yet')).toBe(401);
      const reload = gateway.nextReload();
      const key = (await clientsCli(file, 'add', 'first-client')).key ?? '';
      expect(await reload).toMatchObject({ clients: 1, added: 1 });
      expect(await gateway.status(key)).toBe(200);
    },
    BOUND_MS * 2,
  );

  it(
    'a broken file keeps the last good clients and logs what is wrong',
    async () => {
      const key = (await clientsCli(file, 'add', 'steady')).key ?? '';
      const gateway = startGateway();
      await gateway.listening();
      const from = gateway.lines.length;
      await writeFile(`${file}.tmp`, '{"clients": [ oops');
      await rename(`${file}.tmp`, file);
      const error = await gateway.waitFor(
        (l) => l.msg === 'clients file not reloaded; keeping the last good clients',
        'the error line',
        from,
      );
      expect(String(error.problem)).toContain('not valid JSON');
      expect(await gateway.status(key)).toBe(200);
      expectNoSecrets(gateway, [key]);
    },
    BOUND_MS * 2,
  );

  it(
    'SIGHUP reloads at once (the interval is a minute here)',
    async () => {
      const key = (await clientsCli(file, 'add', 'hup')).key ?? '';
      const gateway = startGateway({ CLIENTS_RELOAD_INTERVAL_MS: '60000' });
      await gateway.listening();
      const rotated = (await clientsCli(file, 'rotate', 'hup')).key ?? '';
      const reload = gateway.nextReload();
      gateway.child.kill('SIGHUP');
      expect(await reload).toMatchObject({ changed: 1, trigger: 'signal' });
      expect(await gateway.status(key)).toBe(401);
      expect(await gateway.status(rotated)).toBe(200);
    },
    BOUND_MS * 2,
  );
});

describe('usage of a running gateway (real process)', () => {
  it(
    'clients usage reads the admin port; /usage is not on the API port',
    async () => {
      const key = (await clientsCli(file, 'add', 'counted', '--quota', '10')).key ?? '';
      const gateway = startGateway();
      await gateway.listening();
      expect(await gateway.status(key)).toBe(200); // billed upstream call
      expect(await gateway.status(key)).toBe(200); // the same request: a cache hit
      expect(await gateway.status('agw_not_a_client')).toBe(401); // nobody's usage
      // Each request is counted when it completes, which is when its completion line is written.
      await gateway.waitFor(
        () =>
          gateway.lines.filter((l) => l.msg === 'request completed' && l.client === 'counted')
            .length === 2,
        'two completion lines',
      );

      const report = await clientsCliWith(
        { ADMIN_HOST: '127.0.0.1', ADMIN_PORT: String(gateway.adminPort) },
        file,
        'usage',
        'counted',
      );
      expect(report).toMatchObject({
        source: 'replica',
        client: {
          id: 'counted',
          requests: 2,
          billed_calls: 1,
          cache_hits: 1,
          calls_saved: 1,
          quota_per_day: 10,
          quota_remaining: 9,
        },
      });
      const publicUsage = await fetch(`http://127.0.0.1:${gateway.port}/usage`);
      await publicUsage.arrayBuffer();
      expect(publicUsage.status).toBe(404);
    },
    BOUND_MS * 2,
  );
});
