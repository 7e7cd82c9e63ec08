// Shutdown under load: the real server process (src/server.ts) with 200 requests in flight, each
// waiting ~2 s on the upstream, gets SIGTERM. All 200 must be answered 200, new connections must
// be refused within 1 s of the drain starting, and the process must exit 0.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Pool } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FakeUpstream, startFakeUpstream } from '../../dev/fake-upstream.ts';
import { hashClientKey, writeClientsFile } from '../../src/clients/registry.ts';
import { UPSTREAM_TOKEN } from '../helpers.ts';
import {
  budget,
  makeImage,
  RECOGNITION,
  report,
  SecretScanner,
  type ServerProcess,
  seededRandom,
  startServerProcess,
  tryConnect,
  within,
} from './support.ts';

const IN_FLIGHT = 200;
/**
 * Each upstream call takes this long. 1 s was too short on a loaded 2-core machine: the first
 * calls were answered before the 200th had reached the upstream, so fewer than 200 were in flight
 * at SIGTERM. The test checks that precondition rather than assuming it.
 */
const UPSTREAM_LATENCY_MS = 2_000;
const BOUND_MS = 15_000;
/** A new connection must be refused within this of the "draining" log line. */
const REFUSE_BOUND_MS = 1_000;
const CLIENT_KEY = 'agw_shutdown_test_key_Qw3Er5Ty7Ui9Op1As3Df5Gh7';

let dir: string;
let fake: FakeUpstream;
let server: ServerProcess | undefined;
const scanner = new SecretScanner();

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agw-shutdown-'));
  fake = await startFakeUpstream({ latencyMs: UPSTREAM_LATENCY_MS });
  scanner.addSecret(UPSTREAM_TOKEN, 'the upstream token');
  scanner.addSecret(CLIENT_KEY, 'the client key');
});

afterAll(async () => {
  server?.child.kill('SIGKILL');
  await fake?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('shutdown under load', () => {
  it(
    `answers all ${IN_FLIGHT} in-flight requests after SIGTERM, refuses new connections, exits 0`,
    async () => {
      const clientsFile = join(dir, 'clients.json');
      await writeClientsFile(clientsFile, {
        clients: [{ id: 'shutdown-test', keySha256: hashClientKey(CLIENT_KEY) }],
      });
      server = startServerProcess(
        {
          HOST: '127.0.0.1',
          PORT: '0',
          LOG_LEVEL: 'debug',
          ACEDATA_API_TOKEN: UPSTREAM_TOKEN,
          ACEDATA_BASE_URL: fake.url,
          GATEWAY_CLIENTS_FILE: clientsFile,
          RATE_LIMIT_MAX: '100000',
          // 200 calls at once: above the default gate (64 in flight, 50 started per second).
          UPSTREAM_MAX_CONCURRENCY: '256',
          UPSTREAM_RATE_PER_SECOND: '1000',
        },
        dir,
      );
      const port = await within(server.port(), BOUND_MS, 'listening');
      const pool = new Pool(`http://127.0.0.1:${port}`, { connections: IN_FLIGHT + 10 });
      const random = seededRandom(42);
      try {
        // Open the connections first, so the burst below costs only request handling.
        await Promise.all(
          Array.from({ length: IN_FLIGHT }, () =>
            pool.request({ method: 'GET', path: '/healthz' }).then((res) => res.body.text()),
          ),
        );
        let answeredBeforeSignal = 0;
        let signalled = false;
        const sentAt = performance.now();
        const inFlight = Array.from({ length: IN_FLIGHT }, async (_, i) => {
          const image = makeImage(random, 'png', 400).toString('base64');
          scanner.addImage(image);
          const res = await pool.request({
            method: 'POST',
            path: RECOGNITION,
            headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
            body: JSON.stringify({ question: `shutdown ${i}`, queries: [image] }),
          });
          const body = await res.body.text();
          if (!signalled) answeredBeforeSignal++;
          return {
            status: res.statusCode,
            body,
            connection: res.headers.connection,
            ms: performance.now() - sentAt,
          };
        });
        // Every request is with the upstream (each takes ~1 s there) before the signal.
        await within(
          (async () => {
            while (fake.callCount() < IN_FLIGHT) await new Promise((r) => setTimeout(r, 10));
          })(),
          BOUND_MS,
          `${IN_FLIGHT} upstream calls in flight`,
        );
        const signalAt = performance.now();
        signalled = true;
        server.child.kill('SIGTERM');
        await within(
          (async () => {
            while (!server?.stdout().includes('draining: finishing in-flight requests')) {
              await new Promise((r) => setTimeout(r, 5));
            }
          })(),
          BOUND_MS,
          'the drain log line',
        );
        // The drain line is written just before app.close(), and Fastify closes the listener after
        // its preClose hooks, a few event-loop turns later: on a busy machine a connection can
        // still be accepted in between. Try again every 10 ms until one is refused (bounded).
        const drainLineAt = performance.now();
        let refused = 'connected';
        let acceptedAfterDrainLine = 0;
        while (performance.now() - drainLineAt < REFUSE_BOUND_MS) {
          refused = await tryConnect(port).then(
            () => 'connected',
            (error: NodeJS.ErrnoException) => error.code ?? 'error',
          );
          if (refused !== 'connected') break;
          acceptedAfterDrainLine++;
          await new Promise((r) => setTimeout(r, 10));
        }
        const refusedAfterMs = performance.now() - drainLineAt;
        const answers = await within(Promise.all(inFlight), BOUND_MS, 'the in-flight answers');
        const exit = await within(server.exited, BOUND_MS, 'exit after SIGTERM');
        const exitedAfterMs = performance.now() - signalAt;

        for (const [source, text] of [
          ['server stdout', server.stdout()],
          ['server stderr', server.stderr()],
        ] as const) {
          for (const line of text.split('\n')) if (line) scanner.scan(source, line);
        }
        const lines = server
          .stdout()
          .split('\n')
          .filter(Boolean)
          .map((line) => JSON.parse(line) as Record<string, unknown>);
        const completed = lines.filter(
          (l) => l.msg === 'request completed' && l.route === RECOGNITION,
        );
        const statuses: Record<string, number> = {};
        for (const a of answers) statuses[a.status] = (statuses[a.status] ?? 0) + 1;
        report('shutdown', {
          upstream_latency_ms: UPSTREAM_LATENCY_MS,
          upstream_calls_at_sigterm: fake.callCount(),
          answered_before_sigterm: answeredBeforeSignal,
          answered: answers.length,
          statuses,
          with_solution: answers.filter((a) => a.body.includes('"solution"')).length,
          connection_close: answers.filter((a) => a.connection === 'close').length,
          new_connection_after_drain: refused,
          accepted_after_drain_line: acceptedAfterDrainLine,
          refused_after_drain_line_ms: Math.round(refusedAfterMs),
          exit,
          exit_after_sigterm_ms: Math.round(exitedAfterMs),
          slowest_answer_ms: Math.round(Math.max(...answers.map((a) => a.ms))),
          completion_lines: completed.length,
          stderr_bytes: server.stderr().length,
        });
        report('secrets', { source: 'shutdown', ...scanner.summary() });

        expect(fake.callCount()).toBe(IN_FLIGHT);
        expect(answeredBeforeSignal).toBe(0);
        expect(refused).toBe('ECONNREFUSED');
        expect(answers.map((a) => a.status)).toEqual(Array(IN_FLIGHT).fill(200));
        for (const a of answers) expect(JSON.parse(a.body)).toHaveProperty('solution');
        expect(answers.every((a) => a.connection === 'close')).toBe(true);
        expect(exit).toEqual({ code: 0, signal: null });
        expect(completed).toHaveLength(IN_FLIGHT);
        expect(server.stderr()).toBe('');
        expect(scanner.hits).toEqual([]);
      } finally {
        await pool.destroy();
        server.child.kill('SIGKILL');
      }
    },
    budget(BOUND_MS * 4),
  );
});
