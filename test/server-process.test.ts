import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  FAKE_UPSTREAM_DEFAULT_TOKEN,
  type FakeUpstream,
  startFakeUpstream,
} from '../dev/fake-upstream.ts';
import { writeClientsFile } from '../src/clients/file.ts';
import { hashClientKey } from '../src/clients/registry.ts';
import { PNG_1X1, RECOGNITION, within } from './helpers.ts';
import {
  killServerProcesses,
  PROCESS_BOUND_MS,
  PROCESS_DEFAULTS,
  ServerProcess,
} from './support/server-process.ts';

const CLIENT_KEY = 'agw_process_test_key_Zx8Qm2Lr7Vt4Nw1Ks6Hj3Bd9';
/** Each test waits on a few process events, each bounded by PROCESS_BOUND_MS. */
const TEST_BOUND = { timeout: PROCESS_BOUND_MS * 3 };

let dir: string;
let fake: FakeUpstream;

beforeAll(async () => {
  fake = await startFakeUpstream();
});
afterAll(async () => {
  await fake.close();
});
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agw-server-'));
  fake.reset();
});
afterEach(async () => {
  await killServerProcesses();
  await rm(dir, { recursive: true, force: true });
});

/** The real server pointed at the fake upstream; `env` adds to or overrides the defaults. */
function serve(env: Record<string, string> = {}): ServerProcess {
  return new ServerProcess(
    {
      ...PROCESS_DEFAULTS,
      ACEDATA_API_TOKEN: FAKE_UPSTREAM_DEFAULT_TOKEN,
      ACEDATA_BASE_URL: fake.url,
      GATEWAY_CLIENTS_FILE: join(dir, 'clients.json'),
      ...env,
    },
    dir,
  );
}

async function writeOneClient(): Promise<void> {
  await writeClientsFile(join(dir, 'clients.json'), {
    clients: [{ id: 'process-test', keySha256: hashClientKey(CLIENT_KEY) }],
  });
}

const recognise = (port: number, question = 'Please click each image containing a bus') =>
  fetch(`http://127.0.0.1:${port}${RECOGNITION}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ question, queries: [PNG_1X1] }),
  });

describe('server process: configuration errors', () => {
  it('exits 1 naming every problem at once, writing nothing to stdout', TEST_BOUND, async () => {
    const server = new ServerProcess({ PORT: 'abc', ADMIN_PORT: '9091' }, dir);
    const exit = await within(server.exited, PROCESS_BOUND_MS, 'exit');
    expect(exit).toEqual({ code: 1, signal: null });
    expect(server.stderr).toContain('acedata-gateway: invalid configuration:');
    expect(server.stderr).toContain('  - ACEDATA_API_TOKEN: is required');
    expect(server.stderr).toContain('  - PORT: must be a whole number');
    expect(server.stdout).toBe('');
  });

  it('exits 1 for settings that clash, without echoing the token', TEST_BOUND, async () => {
    const server = serve({
      ACEDATA_API_TOKEN: 'tok-does-not-matter,tok-does-not-matter',
      PORT: '9000',
      ADMIN_PORT: '9000',
    });
    expect(await within(server.exited, PROCESS_BOUND_MS, 'exit')).toEqual({
      code: 1,
      signal: null,
    });
    expect(server.stderr).toContain('ACEDATA_API_TOKEN: lists the same token twice');
    expect(server.stderr).toContain('ADMIN_PORT: must differ from PORT');
    expect(server.stderr).not.toContain('tok-does-not-matter');
  });
});

describe('server process: a missing clients file', () => {
  it(
    'starts anyway with a warning, refuses every key, and picks the file up when it appears',
    TEST_BOUND,
    async () => {
      const server = serve({ CLIENTS_RELOAD_INTERVAL_MS: '100' });
      const warning = await server.waitFor(
        (l) => typeof l.msg === 'string' && l.msg.startsWith('clients file not found'),
        'the missing-file warning',
      );
      expect(warning).toMatchObject({ level: 40, clients_file: join(dir, 'clients.json') });
      expect(warning.msg).toContain('npm run clients -- add');
      const { port } = await server.listening();

      const refused = await recognise(port);
      expect(refused.status).toBe(401);
      expect(((await refused.json()) as { error: { code: string } }).error.code).toBe(
        'invalid_token',
      );
      expect(fake.callCount()).toBe(0);
      expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);

      const seen = server.lines.length;
      await writeOneClient();
      await server.waitFor((l) => l.msg === 'clients reloaded', 'the reload', seen);
      expect((await recognise(port)).status).toBe(200);
      expect(fake.callCount()).toBe(1);
      expect(await server.stop()).toEqual({ code: 0, signal: null });
    },
  );
});

describe('server process: serving over a real socket', () => {
  it(
    'logs one "gateway listening" line with both ports, answers through the upstream, exits 0 on SIGTERM',
    TEST_BOUND,
    async () => {
      await writeOneClient();
      const server = serve();
      const { port, adminPort } = await server.listening();
      const listening = server.lines.filter((l) => l.msg === 'gateway listening');
      expect(listening).toHaveLength(1);
      expect(listening[0]).toMatchObject({ level: 30, admin_host: '127.0.0.1' });
      expect(port).toBeGreaterThan(0);
      expect(adminPort).toBeGreaterThan(0);
      expect(adminPort).not.toBe(port);

      const response = await recognise(port);
      const body = (await response.json()) as { solution?: Record<string, unknown> };
      expect(response.status).toBe(200);
      expect(body.solution).toMatchObject({ box: ['360', '276'] });
      const traceId = response.headers.get('x-request-id');
      expect(traceId).toBeTruthy();
      // Metrics on the admin port only.
      expect((await fetch(`http://127.0.0.1:${port}/metrics`)).status).toBe(404);
      const metrics = await fetch(`http://127.0.0.1:${adminPort}/metrics`);
      expect(metrics.status).toBe(200);
      expect(await metrics.text()).toContain('gateway_requests_total');

      // Exactly one upstream call, with the gateway's token and never the client key.
      expect(fake.callCount()).toBe(1);
      const call = fake.calls[0];
      expect(call?.token).toBe(FAKE_UPSTREAM_DEFAULT_TOKEN);
      expect(JSON.stringify(call?.headers)).not.toContain(CLIENT_KEY);
      expect(call?.headers['x-request-id']).toBe(traceId);

      expect(await within(server.stop(), PROCESS_BOUND_MS, 'exit after SIGTERM')).toEqual({
        code: 0,
        signal: null,
      });
      const completed = server.lines.filter(
        (l) => l.msg === 'request completed' && l.route === RECOGNITION,
      );
      expect(completed).toHaveLength(1);
      expect(completed[0]).toMatchObject({
        status: 200,
        trace_id: traceId,
        client: 'process-test',
      });
      expect(server.stdout).not.toContain(CLIENT_KEY);
      expect(server.stdout).not.toContain(FAKE_UPSTREAM_DEFAULT_TOKEN);
      expect(server.stdout).not.toContain(PNG_1X1.slice(0, 24));
      expect(server.stderr).toBe('');
    },
  );

  it(
    'drains on SIGTERM: in-flight requests are answered, new connections refused, exit 0',
    TEST_BOUND,
    async () => {
      await writeOneClient();
      const upstream = await heldUpstream();
      try {
        const server = serve({ ACEDATA_BASE_URL: upstream.url });
        const { port } = await server.listening();
        const inFlight = Array.from({ length: 10 }, (_, i) =>
          recognise(port, `question ${i}`).then(async (r) => ({
            status: r.status,
            body: await r.text(),
          })),
        );
        // Handled here too, so a failed assertion below does not add unhandled rejections.
        for (const request of inFlight) request.catch(() => {});
        await within(upstream.held(10), PROCESS_BOUND_MS, 'ten calls held upstream');
        server.child.kill('SIGTERM');
        await server.waitFor(
          (l) => l.msg === 'draining: finishing in-flight requests before exit',
          'the draining line',
        );
        // The listener closes (just after that line): new connections are refused while the ten
        // requests still wait for their answers.
        await expect
          .poll(() => connectOutcome(port), { timeout: PROCESS_BOUND_MS })
          .toBe('ECONNREFUSED');
        expect(server.child.exitCode).toBeNull(); // still finishing its ten requests
        upstream.release();
        const answers = await within(Promise.all(inFlight), PROCESS_BOUND_MS, 'the answers');
        expect(answers.map((a) => a.status)).toEqual(Array(10).fill(200));
        for (const answer of answers) expect(JSON.parse(answer.body)).toHaveProperty('solution');
        expect(await within(server.exited, PROCESS_BOUND_MS, 'exit')).toEqual({
          code: 0,
          signal: null,
        });
        const messages = server.lines.map((l) => l.msg);
        expect(messages).toContain('closed');
        expect(
          server.lines.filter((l) => l.msg === 'request completed' && l.status === 200),
        ).toHaveLength(10);
      } finally {
        await upstream.close();
      }
    },
  );
});

describe('server process: the drain budget', () => {
  it(
    'runs out after SHUTDOWN_TIMEOUT_MS when a request cannot finish: exit 1, not a hang',
    TEST_BOUND,
    async () => {
      await writeOneClient();
      // A client that sends its headers and part of its body, then nothing: only
      // REQUEST_TIMEOUT_MS (30 s) would end it, long after the drain budget (1 s).
      const server = serve({
        UPSTREAM_TIMEOUT_MS: '1000',
        SHUTDOWN_TIMEOUT_MS: '1000',
        REQUEST_TIMEOUT_MS: '30000',
      });
      const { port } = await server.listening();
      const body = JSON.stringify({ queries: [PNG_1X1] });
      const stuck = connect(port, '127.0.0.1');
      stuck.on('error', () => {});
      await new Promise((resolve) => stuck.once('connect', resolve));
      stuck.write(
        `POST ${RECOGNITION} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer ${CLIENT_KEY}\r\n` +
          `content-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body.slice(0, 10)}`,
      );
      await expect
        .poll(async () => Number(await adminMetric(server, 'gateway_inflight_requests')), {
          timeout: PROCESS_BOUND_MS,
        })
        .toBe(1);
      server.child.kill('SIGTERM');
      await server.waitFor(
        (l) => l.msg === 'draining: finishing in-flight requests before exit',
        'draining',
      );
      expect(await within(server.exited, PROCESS_BOUND_MS, 'exit')).toEqual({
        code: 1,
        signal: null,
      });
      expect(server.lines.map((l) => l.msg)).not.toContain('closed');
      stuck.destroy();
    },
  );
});

/** One sample of a metric from the process's admin port. */
async function adminMetric(server: ServerProcess, name: string): Promise<string | undefined> {
  const { adminPort } = await server.listening();
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  return new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1];
}

/** Whether a new TCP connection to `port` is accepted, or the error code it gets. */
function connectOutcome(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? 'error'));
  });
}

/**
 * An upstream that holds every call until `release()`: a test then knows requests are in flight
 * while it drains the gateway, whatever the machine's speed.
 */
async function heldUpstream() {
  const waiting: ServerResponse[] = [];
  const arrivals: Array<() => void> = [];
  let released = false;
  const answer = (res: ServerResponse) =>
    res
      .writeHead(200, { 'content-type': 'application/json' })
      .end('{"solution":{"label":"bus","box":["360","276"]},"elapsed":1.0}');
  const server = createServer((req, res) => {
    req.resume();
    req.once('end', () => {
      if (released) return answer(res);
      waiting.push(res);
      for (const arrived of arrivals) arrived();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    /** Resolves once `count` calls are held. */
    held: (count: number) =>
      new Promise<void>((resolve) => {
        const check = () => {
          if (waiting.length >= count) resolve();
        };
        arrivals.push(check);
        check();
      }),
    release() {
      released = true;
      for (const res of waiting.splice(0)) answer(res);
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
