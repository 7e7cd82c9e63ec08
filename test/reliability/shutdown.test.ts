// Shutdown under load: the real server process (src/server.ts) with 200 requests in flight, held
// by the upstream until the test lets them go, gets SIGTERM. New connections must be refused
// while the 200 are still held (during the drain), all 200 must then be answered 200, and the
// process must exit 0. Every step waits on an event (a call held, a log line, a refused
// connection, an answer, the exit), bounded by `within`, never on a latency.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Pool } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashClientKey, writeClientsFile } from '../../src/clients/registry.ts';
import { RECOGNITION, UPSTREAM_TOKEN, within } from '../helpers.ts';
import {
  killServerProcesses,
  PROCESS_BOUND_MS,
  PROCESS_DEFAULTS,
  ServerProcess,
} from '../support/server-process.ts';
import {
  budget,
  type HeldUpstream,
  makeImage,
  report,
  SecretScanner,
  seededRandom,
  startHeldUpstream,
  tryConnect,
} from './support.ts';

const IN_FLIGHT = 200;
const CLIENT_KEY = 'agw_shutdown_test_key_Qw3Er5Ty7Ui9Op1As3Df5Gh7';
const DRAIN_LINE = 'draining: finishing in-flight requests before exit';

let dir: string;
let upstream: HeldUpstream;
const scanner = new SecretScanner();

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agw-shutdown-'));
  upstream = await startHeldUpstream();
  scanner.addSecret(UPSTREAM_TOKEN, 'the upstream token');
  scanner.addSecret(CLIENT_KEY, 'the client key');
});

afterAll(async () => {
  await killServerProcesses();
  await upstream?.close();
  await rm(dir, { recursive: true, force: true });
});

/**
 * Tries new TCP connections until one is refused (the listener is closed); counts those the
 * kernel still accepted before, and those reset while the listener was closing.
 */
async function untilRefused(port: number) {
  const seen = { accepted: 0, reset: 0 };
  for (;;) {
    const code = await tryConnect(port).then(
      () => undefined,
      (error: NodeJS.ErrnoException) => error.code ?? 'error',
    );
    if (code === 'ECONNREFUSED') return seen;
    if (code === 'ECONNRESET') seen.reset++;
    else if (code === undefined) seen.accepted++;
    else throw new Error(`a new connection during the drain failed with ${code}`);
    // The listener closes a few event-loop turns after the drain line: yield, then try again.
    await new Promise((resolve) => setImmediate(resolve));
  }
}

describe('shutdown under load', () => {
  it(
    `answers all ${IN_FLIGHT} in-flight requests after SIGTERM, refuses new connections, exits 0`,
    async () => {
      const clientsFile = join(dir, 'clients.json');
      await writeClientsFile(clientsFile, {
        clients: [{ id: 'shutdown-test', keySha256: hashClientKey(CLIENT_KEY) }],
      });
      const server = new ServerProcess(
        {
          ...PROCESS_DEFAULTS,
          LOG_LEVEL: 'debug',
          ACEDATA_API_TOKEN: UPSTREAM_TOKEN,
          ACEDATA_BASE_URL: upstream.url,
          GATEWAY_CLIENTS_FILE: clientsFile,
          RATE_LIMIT_MAX: '100000',
          // 200 calls at once: every one starts at the gate at once.
          UPSTREAM_MAX_CONCURRENCY: '256',
          UPSTREAM_RATE_PER_SECOND: '1000',
        },
        dir,
      );
      const { port } = await server.listening();
      const pool = new Pool(`http://127.0.0.1:${port}`, { connections: IN_FLIGHT + 10 });
      const random = seededRandom(42);
      try {
        // Open the connections first, so the burst below costs only request handling.
        await Promise.all(
          Array.from({ length: IN_FLIGHT }, () =>
            pool.request({ method: 'GET', path: '/healthz' }).then((res) => res.body.text()),
          ),
        );
        let answeredBeforeRelease = 0;
        let released = false;
        const inFlight = Array.from({ length: IN_FLIGHT }, async (_, i) => {
          const image = makeImage(random, 'png', 400).toString('base64');
          scanner.addImage(image);
          const res = await pool.request({
            method: 'POST',
            path: RECOGNITION,
            headers: {
              authorization: `Bearer ${CLIENT_KEY}`,
              'content-type': 'application/json',
              'x-request-id': `shutdown-${i}`,
            },
            body: JSON.stringify({ question: `shutdown ${i}`, queries: [image] }),
          });
          const body = await res.body.text();
          if (!released) answeredBeforeRelease++;
          return { status: res.statusCode, body, connection: res.headers.connection };
        });
        // Every request is held by the upstream before the signal.
        await within(upstream.waitForHeld(IN_FLIGHT), PROCESS_BOUND_MS, 'all calls held upstream');
        const linesAtSignal = server.lines.length;
        server.child.kill('SIGTERM');
        await server.waitFor((line) => line.msg === DRAIN_LINE, 'the drain line', linesAtSignal);
        // The listener closes just after the drain line (Fastify closes it after its preClose
        // hooks): the first refused connection comes a few turns later, while all 200 are held.
        const refused = await within(untilRefused(port), PROCESS_BOUND_MS, 'a refused connection');
        const heldWhenRefused = upstream.calls.length - answeredBeforeRelease;
        released = true;
        upstream.release();
        const answers = await within(Promise.all(inFlight), PROCESS_BOUND_MS, 'the answers');
        const exit = await within(server.exited, PROCESS_BOUND_MS, 'exit after SIGTERM');

        for (const line of server.stdout.split('\n')) if (line) scanner.scan('server stdout', line);
        scanner.scan('server stderr', server.stderr);
        const completed = server.lines.filter(
          (l) => l.msg === 'request completed' && l.route === RECOGNITION,
        );
        const statuses: Record<string, number> = {};
        for (const a of answers) statuses[a.status] = (statuses[a.status] ?? 0) + 1;
        report('shutdown', {
          upstream_calls_held_at_sigterm: upstream.calls.length,
          answered_before_release: answeredBeforeRelease,
          connections_after_drain_line: { ...refused, finally: 'ECONNREFUSED' },
          held_when_refused: heldWhenRefused,
          answered: answers.length,
          statuses,
          with_solution: answers.filter((a) => a.body.includes('"solution"')).length,
          connection_close: answers.filter((a) => a.connection === 'close').length,
          exit,
          completion_lines: completed.length,
          completion_lines_own_ids: new Set(completed.map((l) => l.trace_id)).size,
          closed_line: server.lines.some((l) => l.msg === 'closed'),
          stderr_bytes: server.stderr.length,
        });
        report('secrets', { source: 'shutdown', ...scanner.summary() });

        expect(upstream.calls).toHaveLength(IN_FLIGHT);
        expect(answeredBeforeRelease).toBe(0);
        expect(heldWhenRefused).toBe(IN_FLIGHT);
        expect(answers.map((a) => a.status)).toEqual(Array(IN_FLIGHT).fill(200));
        for (const a of answers) expect(JSON.parse(a.body)).toHaveProperty('solution');
        expect(answers.every((a) => a.connection === 'close')).toBe(true);
        expect(exit).toEqual({ code: 0, signal: null });
        expect(server.lines.at(-1)?.msg).toBe('closed');
        expect(completed).toHaveLength(IN_FLIGHT);
        expect(new Set(completed.map((l) => l.trace_id)).size).toBe(IN_FLIGHT);
        expect(upstream.calls.every((c) => c.authorization === `Bearer ${UPSTREAM_TOKEN}`)).toBe(
          true,
        );
        expect(server.stderr).toBe('');
        expect(scanner.hits).toEqual([]);
      } finally {
        await pool.destroy();
      }
    },
    budget(PROCESS_BOUND_MS * 5),
  );
});
