// Soak: 60 s of mixed traffic over real sockets from several concurrent workers (unique and
// repeated valid requests, bursts of identical ones, no-store, invalid requests, and a client
// over its tiny rate limit) against a fake upstream that fails 20% of calls (seeded: 500, 502,
// 503, 429, connection reset, latency). Every request must get a well-formed answer, the
// gateway's counters must reconcile exactly with the fake's, and memory must stay flat.
import { Pool } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FakeUpstream, type Fault, startFakeUpstream } from '../../dev/fake-upstream.ts';
import {
  CLIENT_KEY,
  OTHER_CLIENT_KEY,
  startGateway,
  type TestGateway,
  UPSTREAM_TOKEN,
} from '../helpers.ts';
import {
  asEnvelope,
  budget,
  CONTRACT_STATUS,
  drainLogs,
  gcExposed,
  IMAGE_KINDS,
  type MemorySample,
  makeImage,
  mb,
  percentile,
  pick,
  RECOGNITION,
  report,
  SecretScanner,
  sampleMemory,
  scrapeMetrics,
  seededRandom,
} from './support.ts';

const DURATION_MS = Number(process.env.SOAK_SECONDS ?? 60) * 1_000;
const WORKERS = 32;
const MAX_REQUESTS = 400_000;
const SEED = 8_2025;
const FAULT_RATE = 0.2;
const FAULTS: Fault[] = [
  { kind: 'status', status: 500 },
  { kind: 'status', status: 502 },
  { kind: 'status', status: 503 },
  { kind: 'status', status: 429 },
  { kind: 'reset' },
  { kind: 'latency', ms: 150 },
  { kind: 'latency', ms: 400 },
];
const UPSTREAM_LATENCY_MS = 10;
const BODY_LIMIT = 64 * 1024;
/** The over-limit client: checkout-service may make 5 requests per second. */
const LIMIT = { max: 5, windowSeconds: 1 };
/** Bounds on growth over the last 30 s (live heap after a full GC; resident set size). */
const HEAP_GROWTH_LIMIT_MB = 20;
const RSS_GROWTH_LIMIT_MB = 50;

type Kind = 'unique' | 'duplicate' | 'burst' | 'no-store' | 'invalid' | 'limited';
const MIX: ReadonlyArray<[Kind, number]> = [
  ['unique', 45],
  ['duplicate', 20],
  ['burst', 5],
  ['no-store', 5],
  ['invalid', 15],
  ['limited', 10],
];

/** The kind whose share of MIX (weights adding up to 100) `roll` falls in. */
function pickKind(roll: number): Kind {
  let rest = roll;
  for (const [kind, weight] of MIX) {
    rest -= weight;
    if (rest < 0) return kind;
  }
  return 'unique';
}

/** Requests the gateway must refuse itself, each with the one answer the contract gives. */
const INVALID: ReadonlyArray<{
  name: string;
  status: number;
  key?: string;
  contentType?: string;
  path?: string;
  body: (image: string) => string;
}> = [
  {
    name: 'broken Base64',
    status: 400,
    body: (image) => JSON.stringify({ question: 'q', queries: [`${image}!`] }),
  },
  {
    name: 'wrong magic bytes',
    status: 400,
    body: () =>
      JSON.stringify({ question: 'q', queries: [Buffer.from('not an image').toString('base64')] }),
  },
  { name: 'no question', status: 400, body: (image) => JSON.stringify({ queries: [image] }) },
  { name: 'broken JSON', status: 400, body: () => '{"question":' },
  { name: 'text/plain', status: 415, contentType: 'text/plain', body: () => 'hello' },
  {
    name: 'unknown key',
    status: 401,
    key: 'agw_not_a_key_000000000000000000000000000000000',
    body: (image) => JSON.stringify({ question: 'q', queries: [image] }),
  },
  { name: 'unknown route', status: 404, path: '/captcha/nope', body: () => '{}' },
  {
    name: 'over the body limit',
    status: 413,
    body: (image) => JSON.stringify({ question: 'x'.repeat(BODY_LIMIT), queries: [image] }),
  },
];

/** What one response turned out to be. */
type Outcome =
  | 'solution'
  | 'gateway-error'
  | 'upstream-error'
  | 'rate-limited'
  | 'refused'
  | 'malformed';

let fake: FakeUpstream;
let gw: TestGateway;
let pool: Pool;
const scanner = new SecretScanner();
const images: string[] = [];

beforeAll(async () => {
  fake = await startFakeUpstream({ latencyMs: UPSTREAM_LATENCY_MS });
  gw = await startGateway(
    {
      RATE_LIMIT_MAX: '100000000',
      // The gate's default 50 calls/s and its queue would turn the soak into an overload test.
      UPSTREAM_RATE_PER_SECOND: '100000',
      UPSTREAM_MAX_CONCURRENCY: '256',
      UPSTREAM_TIMEOUT_MS: '10000',
      BODY_LIMIT_BYTES: String(BODY_LIMIT),
      // Small enough that the cache is full (steady state) well before the last 30 s.
      CACHE_MAX_ENTRIES: '5000',
    },
    { fake, limits: { rateLimit: LIMIT } },
  );
  await gw.app.listen({ host: '127.0.0.1', port: 0 });
  const address = gw.app.server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  pool = new Pool(`http://127.0.0.1:${port}`, { connections: WORKERS * 3 + 4 });
  scanner.addSecret(UPSTREAM_TOKEN, 'the upstream token');
  scanner.addSecret(CLIENT_KEY, 'a client key');
  scanner.addSecret(OTHER_CLIENT_KEY, 'a client key');
  const random = seededRandom(SEED);
  for (let i = 0; i < 64; i++) {
    const image = makeImage(random, pick(random, IMAGE_KINDS), 200 + Math.floor(random() * 2_000));
    images.push(image.toString('base64'));
    scanner.addImage(image.toString('base64'));
  }
});

afterAll(async () => {
  await pool?.close();
  await gw?.close();
  await fake?.close();
});

describe('soak', () => {
  it(
    `${DURATION_MS / 1000} s of mixed traffic with ${FAULT_RATE * 100}% upstream faults`,
    async () => {
      const latencies = new Float64Array(MAX_REQUESTS);
      const counts = {
        sent: 0,
        received: 0,
        transportErrors: 0,
        byKind: Object.fromEntries(MIX.map(([kind]) => [kind, 0])) as Record<Kind, number>,
        byOutcome: {} as Record<Outcome, number>,
        byStatus: {} as Record<string, number>,
        cacheHits: 0,
        limitedAdmitted: 0,
        limitedRefused: 0,
        burstsDivergent: 0,
      };
      const problems: string[] = [];
      const problem = (what: string) => {
        if (problems.length < 20) problems.push(what);
      };
      const recentBodies: string[] = [];
      let fakeCalls = 0;
      let callsForInvalid = 0;
      let upstreamProblems = 0;
      const log = {
        lines: 0,
        completion: 0,
        errorLevel: 0,
        byCache: {} as Record<string, number>,
        ownersWithAttempts: 0,
        failedOwners: 0,
        retries: 0,
        hitsWithUpstream: 0,
      };
      const onLine = (line: Record<string, unknown>) => {
        log.lines++;
        if (typeof line.level === 'number' && line.level >= 50) log.errorLevel++;
        if (line.msg !== 'request completed' || line.route === '/metrics') return;
        log.completion++;
        const cache = typeof line.cache === 'string' ? line.cache : 'none';
        log.byCache[cache] = (log.byCache[cache] ?? 0) + 1;
        const attempted = line.upstream_ms !== undefined;
        if (attempted) log.ownersWithAttempts++;
        if (attempted && cache === 'none' && line.route === RECOGNITION) log.failedOwners++;
        if ((cache === 'hit' || cache === 'merged') && attempted) log.hitsWithUpstream++;
        log.retries += typeof line.retries === 'number' ? line.retries : 0;
      };
      /** Moves the fake's records and the gateway's log lines out of memory, checking each. */
      const collect = () => {
        for (const call of fake.calls.splice(0)) {
          fakeCalls++;
          const requestId = String(call.headers['x-request-id'] ?? '');
          if (requestId.startsWith('invalid-')) callsForInvalid++;
          const headers = JSON.stringify(call.headers);
          if (call.token !== UPSTREAM_TOKEN) upstreamProblems++;
          if (headers.includes(CLIENT_KEY) || headers.includes(OTHER_CLIENT_KEY))
            upstreamProblems++;
        }
        drainLogs(gw, scanner, 'gateway log', onLine);
      };

      async function send(
        kind: Kind,
        id: string,
        body: string,
        options: { key?: string; contentType?: string; path?: string; noStore?: boolean } = {},
      ): Promise<{ status: number; text: string; outcome: Outcome }> {
        const index = counts.sent++;
        const started = performance.now();
        const headers: Record<string, string> = {
          authorization: `Bearer ${options.key ?? OTHER_CLIENT_KEY}`,
          'content-type': options.contentType ?? 'application/json',
          'x-request-id': id,
        };
        if (options.noStore) headers['cache-control'] = 'no-store';
        let status = 0;
        let text = '';
        let responseHeaders: Record<string, string | string[] | undefined> = {};
        try {
          const res = await pool.request({
            method: 'POST',
            path: options.path ?? RECOGNITION,
            headers,
            body,
            headersTimeout: 30_000,
            bodyTimeout: 30_000,
          });
          status = res.statusCode;
          responseHeaders = res.headers;
          text = await res.body.text();
        } catch (error) {
          counts.transportErrors++;
          problem(`${kind} ${id}: transport error ${(error as Error).message}`);
          return { status: 0, text: '', outcome: 'malformed' };
        }
        counts.received++;
        if (index < latencies.length) latencies[index] = performance.now() - started;
        counts.byStatus[status] = (counts.byStatus[status] ?? 0) + 1;
        if (status >= 400) scanner.scan('error body', text);
        const outcome = classify(status, text, responseHeaders, id);
        counts.byOutcome[outcome] = (counts.byOutcome[outcome] ?? 0) + 1;
        if (outcome === 'malformed') problem(`${kind} ${id}: ${status} ${text.slice(0, 120)}`);
        if (responseHeaders['cache-status'] === 'acedata-gateway; hit') counts.cacheHits++;
        return { status, text, outcome };
      }

      function classify(
        status: number,
        text: string,
        headers: Record<string, string | string[] | undefined>,
        id: string,
      ): Outcome {
        if (headers['x-request-id'] !== id) return 'malformed';
        if (status === 200) {
          try {
            const solution = (JSON.parse(text) as { solution?: unknown }).solution;
            return typeof solution === 'object' && solution !== null ? 'solution' : 'malformed';
          } catch {
            return 'malformed';
          }
        }
        const envelope = asEnvelope(text);
        if (!envelope) return 'malformed';
        if (envelope.trace_id !== id) {
          // The upstream's own error, passed through after the retries: only its transient 5xx
          // (a lasting 429 must become 503 upstream_unavailable).
          return [500, 502, 503].includes(status) ? 'upstream-error' : 'malformed';
        }
        if (CONTRACT_STATUS[envelope.error.code] !== status) return 'malformed';
        if (status === 429) return headers['retry-after'] ? 'rate-limited' : 'malformed';
        if ([502, 503, 504].includes(status)) return 'gateway-error';
        return status === 500 ? 'malformed' : 'refused';
      }

      const upstreamFailure = (o: Outcome) => o === 'gateway-error' || o === 'upstream-error';

      async function worker(w: number, end: number): Promise<void> {
        const random = seededRandom(SEED + w);
        for (let n = 0; performance.now() < end && counts.sent < MAX_REQUESTS; n++) {
          const kind = pickKind(random() * 100);
          counts.byKind[kind]++;
          const id = `${kind}-${w}-${n}`;
          const image = pick(random, images);
          const fresh = () => JSON.stringify({ question: `soak ${w} ${n}`, queries: [image] });
          if (kind === 'unique' || kind === 'no-store') {
            const body = fresh();
            const res = await send(kind, id, body, { noStore: kind === 'no-store' });
            if (res.outcome === 'solution') {
              if (recentBodies.length >= 200) recentBodies.splice(0, 1);
              recentBodies.push(body);
            } else if (!upstreamFailure(res.outcome)) problem(`${id}: ${res.status}`);
          } else if (kind === 'duplicate') {
            const body = recentBodies.length > 0 ? pick(random, recentBodies) : fresh();
            const res = await send(kind, id, body);
            if (res.outcome !== 'solution' && !upstreamFailure(res.outcome)) {
              problem(`${id}: ${res.status}`);
            }
          } else if (kind === 'burst') {
            const body = fresh();
            const answers = await Promise.all([0, 1, 2].map((i) => send(kind, `${id}-${i}`, body)));
            if (new Set(answers.map((a) => a.status)).size > 1) counts.burstsDivergent++;
            for (const a of answers) {
              if (a.outcome !== 'solution' && !upstreamFailure(a.outcome)) {
                problem(`${id}: ${a.status}`);
              }
            }
          } else if (kind === 'invalid') {
            const invalid = pick(random, INVALID);
            const res = await send(kind, `invalid-${w}-${n}`, invalid.body(image), invalid);
            if (res.status !== invalid.status || res.outcome !== 'refused') {
              problem(`${invalid.name}: ${res.status} ${res.text.slice(0, 120)}`);
            }
          } else {
            const res = await send(kind, id, fresh(), { key: CLIENT_KEY });
            if (res.outcome === 'rate-limited') counts.limitedRefused++;
            else if (res.outcome === 'solution' || upstreamFailure(res.outcome)) {
              counts.limitedAdmitted++;
            } else problem(`${id}: ${res.status}`);
          }
        }
      }

      fake.setRandomFaults({ rate: FAULT_RATE, seed: SEED, faults: FAULTS });
      const memory: MemorySample[] = [sampleMemory(0)];
      const started = performance.now();
      const sampler = setInterval(() => {
        collect();
        memory.push(sampleMemory(Math.round((performance.now() - started) / 1000)));
      }, 1_000);
      try {
        const end = started + DURATION_MS;
        await Promise.all(Array.from({ length: WORKERS }, (_, w) => worker(w, end)));
      } finally {
        clearInterval(sampler);
      }
      const elapsedMs = performance.now() - started;
      memory.push(sampleMemory(Math.round(elapsedMs / 1000)));
      fake.setRandomFaults(undefined);

      const metrics = await scrapeMetrics(gw.app);
      scanner.scan('/metrics', metrics.text);
      await new Promise((resolve) => setImmediate(resolve));
      collect();

      // Counters. Every attempt the gateway sends is one request the fake records, and every
      // attempt is either the first of a call made for one request, or a retry:
      //   fake calls = Σ gateway_upstream_requests_total
      //              = cache{miss} + cache{bypass} + failed owners + gateway_upstream_retries_total
      // where a failed owner is a recognition request whose own call ended in a gateway error
      // after at least one attempt (it records no cache event); hits and merged requests make
      // no attempt. The log lines (one per request) give the same figures independently.
      const attempts = metrics.sum('gateway_upstream_requests_total');
      const retries = metrics.sum('gateway_upstream_retries_total');
      const cache = (event: string) => metrics.sum('gateway_cache_events_total', { event });
      const answered =
        metrics.sum('gateway_requests_total') -
        metrics.sum('gateway_requests_total', { route: '/metrics' });
      // The last 30 s: from the sample 30 s before the final one to the final one.
      const last = memory[memory.length - 1] ?? sampleMemory(0);
      const first = memory.find((s) => s.at >= last.at - 30) ?? last;
      const sorted = Array.from(
        latencies.subarray(0, Math.min(counts.received, latencies.length)),
      ).sort((a, b) => a - b);
      const figures = {
        seconds: Math.round(elapsedMs / 100) / 10,
        workers: WORKERS,
        fault_rate: FAULT_RATE,
        sent: counts.sent,
        received: counts.received,
        transport_errors: counts.transportErrors,
        requests_per_second: Math.round(counts.received / (elapsedMs / 1000)),
        by_kind: counts.byKind,
        by_outcome: counts.byOutcome,
        by_status: counts.byStatus,
        cache_hits: counts.cacheHits,
        bursts_with_divergent_answers: counts.burstsDivergent,
        limited_client: { admitted: counts.limitedAdmitted, refused: counts.limitedRefused },
        latency_ms: {
          p50: Math.round(percentile(sorted, 50)),
          p95: Math.round(percentile(sorted, 95)),
          p99: Math.round(percentile(sorted, 99)),
          max: Math.round(sorted[sorted.length - 1] ?? 0),
        },
        reconciliation: {
          fake_calls: fakeCalls,
          upstream_requests_total: attempts,
          cache_miss: cache('miss'),
          cache_bypass: cache('bypass'),
          cache_hit: cache('hit'),
          cache_merged: cache('merged'),
          failed_owners_from_logs: log.failedOwners,
          retries_total: retries,
          retries_from_logs: log.retries,
          requests_total: answered,
          completion_lines: log.completion,
          calls_for_invalid_requests: callsForInvalid,
        },
        memory: {
          gc_exposed: gcExposed,
          window_s: [first.at, last.at],
          heap_mb: [mb(first.heapUsed), mb(last.heapUsed)],
          heap_growth_mb: mb(last.heapUsed - first.heapUsed),
          rss_mb: [mb(first.rss), mb(last.rss)],
          rss_growth_mb: mb(last.rss - first.rss),
          heap_peak_mb: mb(Math.max(...memory.map((s) => s.heapUsed))),
        },
        log_lines: log.lines,
        error_level_lines: log.errorLevel,
      };
      report('soak', figures);
      report('secrets', { source: 'soak', ...scanner.summary() });

      expect(problems).toEqual([]);
      expect(counts.transportErrors).toBe(0);
      expect(counts.received).toBe(counts.sent);
      expect(counts.byOutcome.malformed ?? 0).toBe(0);
      expect(answered).toBe(counts.sent);
      expect(log.completion).toBe(counts.sent);
      expect(attempts).toBe(fakeCalls);
      expect(attempts).toBe(cache('miss') + cache('bypass') + log.failedOwners + retries);
      expect(log.ownersWithAttempts + retries).toBe(attempts);
      expect(log.retries).toBe(retries);
      expect(log.hitsWithUpstream).toBe(0);
      for (const event of ['hit', 'miss', 'bypass', 'merged']) {
        expect(cache(event), event).toBe(log.byCache[event] ?? 0);
      }
      expect(metrics.sum('gateway_upstream_calls_saved_total')).toBe(
        cache('hit') + cache('merged'),
      );
      expect(metrics.sum('gateway_rate_limited_total', { client: 'checkout-service' })).toBe(
        counts.limitedRefused,
      );
      // A fixed window of 1 s admits at most 5 per window.
      expect(counts.limitedAdmitted).toBeLessThanOrEqual(
        LIMIT.max * (Math.ceil(elapsedMs / 1000) + 1),
      );
      expect(callsForInvalid).toBe(0);
      expect(upstreamProblems).toBe(0);
      expect(log.errorLevel).toBe(0);
      expect(cache('hit')).toBeGreaterThan(0);
      expect(cache('merged')).toBeGreaterThan(0);
      expect(retries).toBeGreaterThan(0);
      expect(scanner.hits).toEqual([]);
      expect(mb(last.heapUsed - first.heapUsed)).toBeLessThan(HEAP_GROWTH_LIMIT_MB);
      expect(mb(last.rss - first.rss)).toBeLessThan(RSS_GROWTH_LIMIT_MB);
    },
    budget(DURATION_MS + 60_000),
  );
});
