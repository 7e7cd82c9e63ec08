// Slow and early-answered clients, all at once against one listening gateway (buildApp, so its
// server timeouts and its lingering close), with REQUEST_TIMEOUT_MS at 3 s so the part runs in
// seconds:
// - slow bodies: complete headers, then the body one byte per second (slow POST);
// - slow headers: the request line, then headers one byte per second (slowloris);
// - firehoses: an unknown key and an endless body, sent as fast as the gateway takes it: answered
//   401 before the body is read, so the gateway must close after a bounded read;
// - oversized: a valid key and a body over BODY_LIMIT_BYTES without `Expect: 100-continue`: the
//   413 must arrive every time (not lost to a reset while the client is still sending).
// Each slow client must be cut off with the 408 envelope and a log line; meanwhile another
// client's requests must succeed. Waits are on events (answers, closes), bounded by `within`.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CLIENT_KEY,
  listenLocally,
  OTHER_CLIENT_KEY,
  type RawResponse,
  RECOGNITION,
  rawConnection,
  startGateway,
  type TestGateway,
  UPSTREAM_TOKEN,
  within,
} from '../helpers.ts';
import {
  adminMetrics,
  asEnvelope,
  budget,
  clientErrorProblem,
  drainLogs,
  makeImage,
  pause,
  percentile,
  report,
  SecretScanner,
  seededRandom,
} from './support.ts';

const SLOW_BODIES = 20;
const SLOW_HEADERS = 10;
const FIREHOSES = 10;
const OVERSIZED = 10;
/** One byte per second; each body is long enough to outlast any timeout we expect. */
const DRIP_MS = 1_000;
const BODY_BYTES = 200;
/**
 * REQUEST_TIMEOUT_MS (default 30 s) sets both Node's requestTimeout and its headersTimeout, and
 * Node checks them every second (connectionsCheckingInterval): a slow client is cut between the
 * timeout and the timeout + 1 s after its request started. CUT_BOUND_MS is a bound, not the
 * expected time: 4 s above that, so a busy machine cannot trip it, far below the 200 s a drip
 * would take.
 */
const REQUEST_TIMEOUT_MS = 3_000;
const CUT_BOUND_MS = REQUEST_TIMEOUT_MS + 5_000;
const BODY_LIMIT = 1024 * 1024;
const OVERSIZED_BYTES = 2 * BODY_LIMIT;
/** The firehoses announce this much and would send it all if the gateway read it all. */
const FIREHOSE_BYTES = 256 * 1024 * 1024;
const NORMAL_EVERY_MS = 200;
const NORMAL_AT_LEAST = 10;
/** How long to wait for one event (an answer, a close): a bound on waiting only. */
const EVENT_BOUND_MS = 20_000;
const UUID_IN_TEXT = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g;

let gw: TestGateway;
let port: number;
const scanner = new SecretScanner();
const random = seededRandom(77);
const image = makeImage(random, 'png', 500).toString('base64');

beforeAll(async () => {
  gw = await startGateway({
    RATE_LIMIT_MAX: '100000',
    UPSTREAM_RATE_PER_SECOND: '1000',
    REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
    BODY_LIMIT_BYTES: String(BODY_LIMIT),
  });
  port = await listenLocally(gw);
  scanner.addSecret(UPSTREAM_TOKEN, 'the upstream token');
  scanner.addSecret(CLIENT_KEY, 'a client key');
  scanner.addSecret(OTHER_CLIENT_KEY, 'a client key');
  scanner.addImage(image);
});

afterAll(async () => {
  await gw?.close();
});

interface SlowResult {
  kind: 'body' | 'headers';
  /** The x-request-id the client sent. */
  traceId: string;
  cutAfterMs: number;
  bytesSent: number;
  response: RawResponse;
}

/** Opens a connection, writes `head` at once, then `drip` one byte per DRIP_MS until cut off. */
async function slowClient(
  kind: SlowResult['kind'],
  traceId: string,
  head: string,
  drip: string,
): Promise<SlowResult> {
  const started = performance.now();
  const conn = rawConnection(port, head);
  let sent = 0;
  const timer = setInterval(() => {
    if (!conn.socket.destroyed && sent < drip.length) conn.socket.write(drip[sent++] ?? ' ');
  }, DRIP_MS);
  try {
    const response = await within(conn.response, EVENT_BOUND_MS, `${traceId}: an answer`);
    await within(conn.closed, EVENT_BOUND_MS, `${traceId}: the connection closed`);
    return { kind, traceId, cutAfterMs: performance.now() - started, bytesSent: sent, response };
  } finally {
    clearInterval(timer);
  }
}

/** A request whose answer comes before its body is read: what the client got and sent. */
interface EarlyResult {
  traceId: string;
  status: number;
  connection: string | undefined;
  code: string | undefined;
  requestId: string | undefined;
  bytesSent: number;
  /** The error the connection ended with, after the answer (EPIPE, ECONNRESET) or none. */
  closedWith: string;
}

/** Sends headers announcing `bytes`, then streams the body until done or cut off. */
async function earlyClient(traceId: string, key: string, bytes: number): Promise<EarlyResult> {
  const conn = rawConnection(
    port,
    `POST ${RECOGNITION} HTTP/1.1\r\nhost: gateway\r\nx-request-id: ${traceId}\r\n` +
      `authorization: Bearer ${key}\r\ncontent-type: application/json\r\n` +
      `content-length: ${bytes}\r\n\r\n`,
  );
  const sending = conn.stream(bytes);
  const response = await within(conn.response, EVENT_BOUND_MS, `${traceId}: an answer`);
  const closed = await within(conn.closed, EVENT_BOUND_MS, `${traceId}: the connection closed`);
  const bytesSent = await sending;
  scanner.scan('early answer', response.body);
  return {
    traceId,
    status: response.status,
    connection: response.headers.connection,
    code: asEnvelope(response.body)?.error.code,
    requestId: response.headers['x-request-id'],
    bytesSent,
    closedWith: closed?.code ?? 'none',
  };
}

describe('slow clients', () => {
  it(
    `cuts off ${SLOW_BODIES} slow bodies and ${SLOW_HEADERS} slow header senders, answers ${FIREHOSES} firehoses and ${OVERSIZED} oversized bodies early, while others are served`,
    async () => {
      const body = JSON.stringify({ question: 'slow', queries: [image] }).padEnd(BODY_BYTES, ' ');
      const slow = [
        ...Array.from({ length: SLOW_BODIES }, (_, i) =>
          slowClient(
            'body',
            `slow-body-${i}`,
            `POST ${RECOGNITION} HTTP/1.1\r\nhost: gateway\r\nx-request-id: slow-body-${i}\r\n` +
              `authorization: Bearer ${CLIENT_KEY}\r\ncontent-type: application/json\r\n` +
              `content-length: ${BODY_BYTES}\r\n\r\n`,
            body,
          ),
        ),
        ...Array.from({ length: SLOW_HEADERS }, (_, i) =>
          slowClient(
            'headers',
            `slow-headers-${i}`,
            `POST ${RECOGNITION} HTTP/1.1\r\n`,
            `host: gateway\r\nx-request-id: slow-headers-${i}\r\nx-padding: ${'a'.repeat(BODY_BYTES)}`,
          ),
        ),
      ];
      let slowDone = false;
      /** Set when the first slow client is cut off: until then all 30 hold their connections. */
      let firstCut = false;
      for (const client of slow)
        void client.then(
          () => (firstCut = true),
          () => (firstCut = true),
        );
      const slowResults = Promise.all(slow).finally(() => {
        slowDone = true;
      });
      // While the slow clients hold their connections: clients answered before their body.
      const early = Promise.all([
        ...Array.from({ length: FIREHOSES }, (_, i) =>
          earlyClient(`firehose-${i}`, 'agw_unknown_key_000000000000000000000000', FIREHOSE_BYTES),
        ),
        ...Array.from({ length: OVERSIZED }, (_, i) =>
          earlyClient(`oversized-${i}`, CLIENT_KEY, OVERSIZED_BYTES),
        ),
      ]);

      // Meanwhile: one request every 200 ms from another client, each a fresh upstream call, for
      // as long as the slow clients last (and at least NORMAL_AT_LEAST of them).
      const normal: Array<{ status: number; ms: number; whileHeld: boolean }> = [];
      for (let n = 0; !slowDone || n < NORMAL_AT_LEAST; n++) {
        const started = performance.now();
        const res = await fetch(`http://127.0.0.1:${port}${RECOGNITION}`, {
          method: 'POST',
          headers: {
            authorization: `Bearer ${OTHER_CLIENT_KEY}`,
            'content-type': 'application/json',
            'x-request-id': `normal-${n}`,
          },
          body: JSON.stringify({ question: `meanwhile ${n}`, queries: [image] }),
        });
        const text = await res.text();
        normal.push({ status: res.status, ms: performance.now() - started, whileHeld: !firstCut });
        if (res.status !== 200) scanner.scan('normal error body', text);
        await pause(NORMAL_EVERY_MS);
      }
      const results = await within(slowResults, EVENT_BOUND_MS, 'the slow clients cut off');
      const earlyResults = await within(early, EVENT_BOUND_MS, 'the early answers');
      const upstreamFromOthers = gw.fake.calls.filter(
        (c) => !String(c.headers['x-request-id']).startsWith('normal-'),
      ).length;
      for (const r of results) scanner.scan('slow client answer', r.response.raw);
      const lines = { total: 0, errorLevel: 0 };
      /** Every completion line under a client's own x-request-id, by its kind and status. */
      const ownIdLines: Record<string, number> = {};
      /** The completion lines of requests cut off by the request timeout, by trace id. */
      const timeoutLines = new Map<string, Record<string, unknown>>();
      drainLogs(gw, scanner, 'gateway log', (line) => {
        lines.total++;
        if (typeof line.level === 'number' && line.level >= 50) lines.errorLevel++;
        if (line.msg !== 'request completed') return;
        const id = String(line.trace_id);
        if (/^(slow|firehose|oversized)-/.test(id)) {
          const key = `${id.replace(/-\d+$/, '')} ${line.status}`;
          ownIdLines[key] = (ownIdLines[key] ?? 0) + 1;
        }
        if (line.client_error === 'ERR_HTTP_REQUEST_TIMEOUT') timeoutLines.set(id, line);
      });

      const cut = (kind: SlowResult['kind']) => {
        const mine = results.filter((r) => r.kind === kind);
        return {
          clients: mine.length,
          statuses: [...new Set(mine.map((r) => r.response.statusLine))],
          // The body with its per-client trace id masked, so identical answers fold.
          body: [
            ...new Set(
              mine.map((r) =>
                r.response.body.replace(UUID_IN_TEXT, '<uuid>').replace(/slow-body-\d+/, '<id>'),
              ),
            ),
          ],
          cut_after_ms: [
            Math.round(Math.min(...mine.map((r) => r.cutAfterMs))),
            Math.round(Math.max(...mine.map((r) => r.cutAfterMs))),
          ],
          bytes_sent: [
            Math.min(...mine.map((r) => r.bytesSent)),
            Math.max(...mine.map((r) => r.bytesSent)),
          ],
        };
      };
      const earlyFigures = (prefix: string) => {
        const mine = earlyResults.filter((r) => r.traceId.startsWith(prefix));
        const mib = (b: number) => Math.round((b / 1024 / 1024) * 10) / 10;
        return {
          clients: mine.length,
          answers: [...new Set(mine.map((r) => `${r.status} ${r.code}`))],
          connection: [...new Set(mine.map((r) => r.connection))],
          closed_with: [...new Set(mine.map((r) => r.closedWith))],
          sent_mib: [
            mib(Math.min(...mine.map((r) => r.bytesSent))),
            mib(Math.max(...mine.map((r) => r.bytesSent))),
          ],
        };
      };
      const normalMs = normal.map((n) => n.ms).sort((a, b) => a - b);
      const requestsTotal: Record<string, number> = {};
      for (const row of (await adminMetrics(gw)).series('gateway_requests_total')) {
        const key = `${row.labels.route} ${row.labels.status}`;
        requestsTotal[key] = (requestsTotal[key] ?? 0) + row.value;
      }
      report('slow-clients', {
        slow_body: cut('body'),
        slow_headers: cut('headers'),
        firehose: { announced_mib: FIREHOSE_BYTES / 1024 / 1024, ...earlyFigures('firehose-') },
        oversized: { body_mib: OVERSIZED_BYTES / 1024 / 1024, ...earlyFigures('oversized-') },
        request_timeout_ms: gw.app.server.requestTimeout,
        headers_timeout_ms: gw.app.server.headersTimeout,
        meanwhile: {
          requests: normal.length,
          answered_while_all_slow_clients_held: normal.filter((n) => n.whileHeld).length,
          statuses: [...new Set(normal.map((n) => n.status))],
          p50_ms: Math.round(percentile(normalMs, 50)),
          max_ms: Math.round(normalMs[normalMs.length - 1] ?? 0),
        },
        upstream_calls_from_others: upstreamFromOthers,
        timeout_log_lines: timeoutLines.size,
        lines_under_own_trace_id: ownIdLines,
        requests_total: requestsTotal,
      });
      report('secrets', { source: 'slow-clients', ...scanner.summary() });

      for (const r of results) {
        const what = `${r.kind}: ${r.response.raw.slice(0, 300)}`;
        // A slow body's headers were read: its request was routed, so the 408 answers and logs it
        // under its own trace id and route. Slow headers never made a request: a fresh trace id.
        const routed = r.kind === 'body';
        expect(r.response.status, what).toBe(408);
        expect(
          clientErrorProblem(r.response, routed ? r.traceId : undefined),
          what,
        ).toBeUndefined();
        // Not before the timeout (timers never fire early; a few ms of rounding), and cut by
        // the gateway long before the client would have finished.
        expect(r.cutAfterMs, what).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS - 50);
        expect(r.cutAfterMs, what).toBeLessThan(CUT_BOUND_MS);
        expect(r.bytesSent).toBeLessThan(BODY_BYTES);
        expect(timeoutLines.get(r.response.headers['x-request-id'] ?? ''), what).toMatchObject({
          route: routed ? RECOGNITION : 'unmatched',
          status: 408,
          error_code: 'request_timeout',
        });
      }
      expect(timeoutLines.size).toBe(SLOW_BODIES + SLOW_HEADERS);
      // Answered before the body, with connection: close, and the connection then closed by the
      // gateway: a firehose never gets the gateway to read its 256 MiB.
      for (const r of earlyResults) {
        const firehose = r.traceId.startsWith('firehose-');
        expect(r, r.traceId).toMatchObject({
          status: firehose ? 401 : 413,
          code: firehose ? 'invalid_token' : 'request_too_large',
          connection: 'close',
          requestId: r.traceId,
        });
        if (firehose) expect(r.bytesSent).toBeLessThan(FIREHOSE_BYTES);
      }
      expect(normal.length).toBeGreaterThanOrEqual(NORMAL_AT_LEAST);
      expect(normal.every((n) => n.status === 200)).toBe(true);
      // Not held up behind the slow clients: answered while every one of them still held its
      // connection (an order of events, not a latency).
      expect(normal.filter((n) => n.whileHeld).length).toBeGreaterThan(0);
      expect(upstreamFromOthers).toBe(0);
      expect(lines.errorLevel).toBe(0);
      expect(scanner.hits).toEqual([]);
      // "Every request gets exactly one such line": each slow body has its 408 line under its
      // own id and nothing else (no 499 when the gateway itself closed the connection); each
      // early answer its own line.
      expect(ownIdLines, "completion lines under the clients' own ids").toEqual({
        'slow-body 408': SLOW_BODIES,
        'firehose 401': FIREHOSES,
        'oversized 413': OVERSIZED,
      });
    },
    budget(CUT_BOUND_MS + 60_000),
  );
});
