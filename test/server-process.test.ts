import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  FAKE_UPSTREAM_DEFAULT_TOKEN,
  type FakeUpstream,
  startFakeUpstream,
} from '../dev/fake-upstream.ts';
import { hashClientKey, writeClientsFile } from '../src/clients/registry.ts';
import { PNG_1X1, within } from './helpers.ts';

/** Absolute, so the child can run from an empty temp dir (no stray `.env` or clients.json). */
const SERVER = fileURLToPath(new URL('../src/server.ts', import.meta.url));
const BOUND_MS = 10_000;
const CLIENT_KEY = 'agw_process_test_key_Zx8Qm2Lr7Vt4Nw1Ks6Hj3Bd9';

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

interface ServerProcess {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves once the process has exited and its output streams are drained. */
  exited: Promise<Exit>;
}

const running = new Set<ChildProcess>();

/** Spawns the real entry point with exactly `env` (nothing inherited, so no ACEDATA_* leaks in). */
function startServer(env: Record<string, string>, cwd: string): ServerProcess {
  const child = spawn(process.execPath, [SERVER], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<Exit>((resolve) => {
    child.once('close', (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    });
  });
  return { child, stdout: () => stdout, stderr: () => stderr, exited };
}

/** The port from Fastify's "Server listening at http://127.0.0.1:<port>" line (PORT=0). */
function listeningPort(server: ServerProcess): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const check = () => {
      const match = /"msg":"Server listening at http:\/\/127\.0\.0\.1:(\d+)"/.exec(server.stdout());
      if (!match) return false;
      server.child.stdout?.off('data', check);
      resolve(Number(match[1]));
      return true;
    };
    if (check()) return;
    server.child.stdout?.on('data', check);
    server.exited.then(({ code, signal }) =>
      reject(new Error(`server exited (${code ?? signal}) before listening:\n${server.stderr()}`)),
    );
  });
}

const baseEnv = (overrides: Record<string, string>): Record<string, string> => ({
  HOST: '127.0.0.1',
  PORT: '0',
  LOG_LEVEL: 'info',
  ...overrides,
});

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agw-server-'));
});

afterEach(async () => {
  for (const child of running) child.kill('SIGKILL');
  running.clear();
  await rm(dir, { recursive: true, force: true });
});

describe('server process: configuration errors', () => {
  it(
    'exits 1 and names both ACEDATA_API_TOKEN and PORT when both are wrong',
    async () => {
      const server = startServer({ PORT: 'abc' }, dir);
      const exit = await within(server.exited, BOUND_MS, 'exit');
      expect(exit).toEqual({ code: 1, signal: null });
      expect(server.stderr()).toContain('ACEDATA_API_TOKEN');
      expect(server.stderr()).toContain('PORT');
      expect(server.stderr()).toContain('invalid configuration');
      expect(server.stdout()).toBe('');
    },
    BOUND_MS + 2_000,
  );

  it(
    'exits 1 and explains how to create the clients file when it is missing',
    async () => {
      const server = startServer(
        baseEnv({
          ACEDATA_API_TOKEN: 'tok-does-not-matter',
          GATEWAY_CLIENTS_FILE: join(dir, 'missing', 'clients.json'),
        }),
        dir,
      );
      const exit = await within(server.exited, BOUND_MS, 'exit');
      expect(exit).toEqual({ code: 1, signal: null });
      expect(server.stderr()).toContain('npm run clients -- add');
      expect(server.stderr()).toContain(join(dir, 'missing', 'clients.json'));
      expect(server.stderr()).not.toContain('tok-does-not-matter');
    },
    BOUND_MS + 2_000,
  );
});

describe('server process: serving over a real socket', () => {
  let fake: FakeUpstream;

  beforeAll(async () => {
    fake = await startFakeUpstream();
  });

  afterAll(async () => {
    await fake.close();
  });

  /** The real server with one client, pointed at the fake upstream; resolves once it listens. */
  async function startServing() {
    const clientsFile = join(dir, 'clients.json');
    await writeClientsFile(clientsFile, {
      clients: [{ id: 'process-test', keySha256: hashClientKey(CLIENT_KEY) }],
    });
    const server = startServer(
      baseEnv({
        ACEDATA_API_TOKEN: FAKE_UPSTREAM_DEFAULT_TOKEN,
        ACEDATA_BASE_URL: fake.url,
        GATEWAY_CLIENTS_FILE: clientsFile,
      }),
      dir,
    );
    const port = await within(listeningPort(server), BOUND_MS, 'listening');
    fake.reset();
    return { server, port };
  }

  it(
    'answers a recognition request through the upstream, logs JSON, and exits 0 on SIGTERM',
    async () => {
      const { server, port } = await startServing();

      const response = await fetch(`http://127.0.0.1:${port}/captcha/recognition/hcaptcha`, {
        method: 'POST',
        headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({
          question: 'Please click each image containing a bus',
          queries: [PNG_1X1],
        }),
      });
      const body = (await response.json()) as { solution?: Record<string, unknown> };
      expect(response.status).toBe(200);
      expect(body.solution).toMatchObject({ box: ['360', '276'] });
      const traceId = response.headers.get('x-request-id');
      expect(traceId).toBeTruthy();

      // Exactly one upstream call, with the gateway's token and never the client key.
      expect(fake.callCount()).toBe(1);
      const call = fake.calls[0];
      expect(call?.path).toBe('/captcha/recognition/hcaptcha');
      expect(call?.token).toBe(FAKE_UPSTREAM_DEFAULT_TOKEN);
      expect(JSON.stringify(call?.headers)).not.toContain(CLIENT_KEY);
      expect(call?.rawBody).not.toContain(CLIENT_KEY);
      expect(call?.headers['x-request-id']).toBe(traceId);

      server.child.kill('SIGTERM');
      const exit = await within(server.exited, BOUND_MS, 'exit after SIGTERM');
      expect(exit).toEqual({ code: 0, signal: null });

      // Every stdout line is JSON; one is the completion line of our request.
      const lines = server
        .stdout()
        .split('\n')
        .filter((line) => line.length > 0)
        .map((line) => JSON.parse(line) as Record<string, unknown>);
      const completed = lines.filter((line) => line.msg === 'request completed');
      expect(completed).toHaveLength(1);
      expect(completed[0]).toMatchObject({
        status: 200,
        trace_id: traceId,
        client: 'process-test',
        route: '/captcha/recognition/hcaptcha',
      });
      expect(server.stdout()).not.toContain(CLIENT_KEY);
      expect(server.stdout()).not.toContain(FAKE_UPSTREAM_DEFAULT_TOKEN);
      expect(server.stdout()).not.toContain(PNG_1X1.slice(0, 24));
      expect(server.stderr()).toBe('');
    },
    BOUND_MS * 2,
  );

  it(
    'drains on SIGTERM: every in-flight request is answered, new connections are refused, exit 0',
    async () => {
      const { server, port } = await startServing();
      fake.setLatency(800);
      const url = `http://127.0.0.1:${port}/captcha/recognition/hcaptcha`;
      const inFlight = Array.from({ length: 20 }, (_, i) =>
        fetch(url, {
          method: 'POST',
          headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
          body: JSON.stringify({ question: `question ${i}`, queries: [PNG_1X1] }),
        }).then(async (r) => ({ status: r.status, body: await r.text() })),
      );
      await expect.poll(() => fake.callCount(), { timeout: BOUND_MS }).toBe(20);
      server.child.kill('SIGTERM');
      await expect
        .poll(() => server.stdout().includes('draining: finishing in-flight requests'), {
          timeout: BOUND_MS,
        })
        .toBe(true);
      // The listener is closed: a new connection is refused while the old ones finish.
      await expect(
        new Promise((resolve, reject) => {
          const socket = connect(port, '127.0.0.1');
          socket.once('connect', () => {
            socket.destroy();
            resolve('connected');
          });
          socket.once('error', reject);
        }),
      ).rejects.toMatchObject({ code: 'ECONNREFUSED' });
      const answers = await within(Promise.all(inFlight), BOUND_MS, 'in-flight answers');
      expect(answers.map((a) => a.status)).toEqual(Array(20).fill(200));
      for (const answer of answers) expect(JSON.parse(answer.body)).toHaveProperty('solution');
      const exit = await within(server.exited, BOUND_MS, 'exit after SIGTERM');
      expect(exit).toEqual({ code: 0, signal: null });
      fake.setLatency(0);
    },
    BOUND_MS * 3,
  );
});
