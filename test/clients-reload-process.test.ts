/**
 * Key changes reach running gateways without a restart: the real entry point (`node
 * src/server.ts`) against the fake upstream, the real CLI as a process, and waits on the
 * gateway's own "clients reloaded" log lines, never on sleeps.
 */
import { execFile } from 'node:child_process';
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
import {
  killServerProcesses,
  type LogLine,
  PROCESS_BOUND_MS,
  PROCESS_DEFAULTS,
  ServerProcess,
} from './support/server-process.ts';

const CLI = fileURLToPath(new URL('../src/clients/cli.ts', import.meta.url));
const RECOGNITION = '/captcha/recognition/hcaptcha';
const PNG_1X1 =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==';

const execFileAsync = promisify(execFile);

/** A gateway process, with what these tests ask of it (the spawner is shared). */
class Gateway extends ServerProcess {
  port = 0;
  adminPort = 0;

  /** Resolves once both servers listen (PORT=0, ADMIN_PORT=0), with their ports noted. */
  async ready(): Promise<void> {
    ({ port: this.port, adminPort: this.adminPort } = await this.listening());
  }

  /** Resolves with the next "clients reloaded" line written after this call. */
  nextReload(): Promise<LogLine> {
    const from = this.lines.length;
    return this.waitFor(
      (l) => l.msg === 'clients reloaded',
      'a "clients reloaded" line',
      from,
    ).catch((error: Error) => {
      // What the gateway said instead (messages and fields carry no keys or hashes).
      const since = this.lines.slice(from).map((l) => JSON.stringify(l));
      throw new Error(`${error.message}\nlog lines since:\n${since.join('\n')}`);
    });
  }

  /** The status of a recognition request made with `key`. */
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

function startGateway(extra: Record<string, string> = {}): Gateway {
  return new Gateway(
    {
      ...PROCESS_DEFAULTS,
      PATH: process.env.PATH ?? '',
      ACEDATA_API_TOKEN: FAKE_UPSTREAM_DEFAULT_TOKEN,
      ACEDATA_BASE_URL: fake.url,
      GATEWAY_CLIENTS_FILE: file,
      CLIENTS_RELOAD_INTERVAL_MS: '100',
      ...extra,
    },
    dir,
  );
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
  await killServerProcesses();
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
      await gateway.ready();
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
    PROCESS_BOUND_MS * 2,
  );

  it(
    'two gateways sharing one file both pick up a change',
    async () => {
      const first = (await clientsCli(file, 'add', 'first')).key ?? '';
      const a = startGateway();
      const b = startGateway();
      await Promise.all([a.ready(), b.ready()]);
      const reloads = [a.nextReload(), b.nextReload()];
      const rotated = (await clientsCli(file, 'rotate', 'first')).key ?? '';
      for (const line of await Promise.all(reloads)) expect(line).toMatchObject({ changed: 1 });
      for (const gateway of [a, b]) {
        expect(await gateway.status(first)).toBe(401);
        expect(await gateway.status(rotated)).toBe(200);
      }
    },
    PROCESS_BOUND_MS * 2,
  );

  it(
    'starts before the clients file exists (refusing every key), then accepts the first one added',
    async () => {
      const gateway = startGateway();
      await gateway.ready();
      expect(
        gateway.lines.find((l) => String(l.msg).startsWith('clients file not found')),
      ).toMatchObject({ clients_file: file });
      expect(await gateway.status('agw_nobody_yet')).toBe(401);
      const reload = gateway.nextReload();
      const key = (await clientsCli(file, 'add', 'first-client')).key ?? '';
      expect(await reload).toMatchObject({ clients: 1, added: 1 });
      expect(await gateway.status(key)).toBe(200);
    },
    PROCESS_BOUND_MS * 2,
  );

  it(
    'a broken file keeps the last good clients and logs what is wrong',
    async () => {
      const key = (await clientsCli(file, 'add', 'steady')).key ?? '';
      const gateway = startGateway();
      await gateway.ready();
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
    PROCESS_BOUND_MS * 2,
  );

  it(
    'SIGHUP reloads at once (the interval is a minute here)',
    async () => {
      const key = (await clientsCli(file, 'add', 'hup')).key ?? '';
      const gateway = startGateway({ CLIENTS_RELOAD_INTERVAL_MS: '60000' });
      await gateway.ready();
      const rotated = (await clientsCli(file, 'rotate', 'hup')).key ?? '';
      const reload = gateway.nextReload();
      gateway.child.kill('SIGHUP');
      expect(await reload).toMatchObject({ changed: 1, trigger: 'signal' });
      expect(await gateway.status(key)).toBe(401);
      expect(await gateway.status(rotated)).toBe(200);
    },
    PROCESS_BOUND_MS * 2,
  );
});

describe('usage of a running gateway (real process)', () => {
  it(
    'clients usage reads the admin port; /usage is not on the API port',
    async () => {
      const key = (await clientsCli(file, 'add', 'counted', '--quota', '10')).key ?? '';
      const gateway = startGateway();
      await gateway.ready();
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
    PROCESS_BOUND_MS * 2,
  );
});
