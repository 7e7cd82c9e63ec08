// Slow clients: raw TCP clients that send their headers and then their body one byte per second
// (slow POST), or their headers one byte per second (slowloris), against a listening gateway
// built by buildApp (so with its server timeouts from serverTimeouts()), with REQUEST_TIMEOUT_MS
// at 3 s so the part runs in seconds. Each must be cut off at about that timeout with the 408
// envelope and a log line; meanwhile another client's requests must succeed promptly.
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CLIENT_KEY,
  OTHER_CLIENT_KEY,
  startGateway,
  type TestGateway,
  UPSTREAM_TOKEN,
} from '../helpers.ts';
import {
  budget,
  clientErrorProblem,
  drainLogs,
  makeImage,
  parseRawResponse,
  percentile,
  type RawResponse,
  RECOGNITION,
  report,
  SecretScanner,
  scrapeMetrics,
  seededRandom,
  sleep,
} from './support.ts';

const SLOW_BODIES = 20;
const SLOW_HEADERS = 10;
/** One byte per second; each body is long enough to outlast any timeout we expect. */
const DRIP_MS = 1_000;
const BODY_BYTES = 200;
/**
 * REQUEST_TIMEOUT_MS (default 30 s) sets both Node's requestTimeout and its headersTimeout, and
 * Node checks them every second (connectionsCheckingInterval): a slow client is cut between the
 * timeout and the timeout + 1 s after its request started. The bound allows 1 s more for a busy
 * machine (the other worker runs the fuzz or the soak meanwhile): 3 s + 2 s from connecting.
 */
const REQUEST_TIMEOUT_MS = 3_000;
const CUT_BOUND_MS = REQUEST_TIMEOUT_MS + 2_000;
const NORMAL_EVERY_MS = 200;
const NORMAL_BOUND_MS = 1_000;
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
  });
  await gw.app.listen({ host: '127.0.0.1', port: 0 });
  const address = gw.app.server.address();
  port = typeof address === 'object' && address ? address.port : 0;
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
function slowClient(
  kind: SlowResult['kind'],
  traceId: string,
  head: string,
  drip: string,
): Promise<SlowResult> {
  return new Promise((resolve) => {
    const started = performance.now();
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let sent = 0;
    const timer = setInterval(() => {
      if (socket.destroyed || sent >= drip.length) return;
      socket.write(drip[sent++] ?? ' ');
    }, DRIP_MS);
    const giveUp = setTimeout(() => socket.destroy(), CUT_BOUND_MS + 5_000);
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearInterval(timer);
      clearTimeout(giveUp);
      resolve({
        kind,
        traceId,
        cutAfterMs: performance.now() - started,
        bytesSent: sent,
        response: parseRawResponse(Buffer.concat(chunks).toString('latin1')),
      });
    });
    socket.write(head);
  });
}

describe('slow clients', () => {
  it(
    `cuts off ${SLOW_BODIES} slow bodies and ${SLOW_HEADERS} slow header senders while others are served`,
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
      const slowResults = Promise.all(slow).finally(() => {
        slowDone = true;
      });

      // Meanwhile: one request every 200 ms from another client, each a fresh upstream call.
      const normal: Array<{ status: number; ms: number }> = [];
      for (let n = 0; !slowDone && n < Math.ceil(CUT_BOUND_MS / NORMAL_EVERY_MS) + 20; n++) {
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
        normal.push({ status: res.status, ms: performance.now() - started });
        if (res.status !== 200) scanner.scan('normal error body', text);
        await sleep(NORMAL_EVERY_MS);
      }
      const results = await slowResults;
      const upstreamFromSlow = gw.fake.calls.filter((c) =>
        String(c.headers['x-request-id']).startsWith('slow-'),
      ).length;
      for (const r of results) scanner.scan('slow client answer', r.response.raw);
      const lines = { total: 0, errorLevel: 0 };
      /** Every completion line under a slow client's own x-request-id (`slow-…`), by kind and status. */
      const ownIdLines: Record<string, number> = {};
      /** The completion lines of requests cut off by the request timeout, by trace id. */
      const timeoutLines = new Map<string, Record<string, unknown>>();
      drainLogs(gw, scanner, 'gateway log', (line) => {
        lines.total++;
        if (line.msg === 'request completed' && String(line.trace_id).startsWith('slow-')) {
          const key = `${String(line.trace_id).replace(/-\d+$/, '')} ${line.status}`;
          ownIdLines[key] = (ownIdLines[key] ?? 0) + 1;
        }
        if (typeof line.level === 'number' && line.level >= 50) lines.errorLevel++;
        if (line.msg === 'request completed' && line.client_error === 'ERR_HTTP_REQUEST_TIMEOUT') {
          timeoutLines.set(String(line.trace_id), line);
        }
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
      const normalMs = normal.map((n) => n.ms).sort((a, b) => a - b);
      const requestsTotal: Record<string, number> = {};
      for (const row of (await scrapeMetrics(gw.app)).series('gateway_requests_total')) {
        const key = `${row.labels.route} ${row.labels.status}`;
        requestsTotal[key] = (requestsTotal[key] ?? 0) + row.value;
      }
      report('slow-clients', {
        slow_body: cut('body'),
        slow_headers: cut('headers'),
        request_timeout_ms: gw.app.server.requestTimeout,
        headers_timeout_ms: gw.app.server.headersTimeout,
        meanwhile: {
          requests: normal.length,
          statuses: [...new Set(normal.map((n) => n.status))],
          p50_ms: Math.round(percentile(normalMs, 50)),
          max_ms: Math.round(normalMs[normalMs.length - 1] ?? 0),
        },
        upstream_calls_from_slow_clients: upstreamFromSlow,
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
        // Not before the timeout (a few ms of timer slack), and at most 2 s after it.
        expect(r.cutAfterMs, what).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS - 50);
        expect(r.cutAfterMs, what).toBeLessThan(CUT_BOUND_MS);
        expect(r.bytesSent).toBeLessThan(BODY_BYTES);
        expect(timeoutLines.get(r.response.headers['x-request-id'] ?? ''), what).toMatchObject({
          route: routed ? RECOGNITION : 'unmatched',
          status: 408,
        });
      }
      expect(timeoutLines.size).toBe(SLOW_BODIES + SLOW_HEADERS);
      expect(normal.length).toBeGreaterThanOrEqual(10);
      expect(normal.every((n) => n.status === 200)).toBe(true);
      expect(Math.max(...normalMs)).toBeLessThan(NORMAL_BOUND_MS);
      expect(upstreamFromSlow).toBe(0);
      expect(lines.errorLevel).toBe(0);
      expect(scanner.hits).toEqual([]);
      // "Every request gets exactly one such line" (README): each slow body has its 408 line under
      // its own id and nothing else (no 499 when the gateway itself closed the connection).
      expect(ownIdLines, "completion lines under the clients' own ids").toEqual({
        'slow-body 408': SLOW_BODIES,
      });
    },
    budget(CUT_BOUND_MS + 30_000),
  );
});
