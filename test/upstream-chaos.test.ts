// Chaos: 500 calls, 25 at a time, through the gate and a two-token pool, against an upstream that
// fails 30% of the time (seeded) with transient faults. Retries absorb nearly all of it; nothing
// escapes as an unhandled rejection or as anything but a solution, the upstream's last 5xx passed
// through, or a GatewayError the contract lists. With a retry budget, retries never exceed it.
// Bounded (within) and event-driven: no wall-clock assertions.
import { afterAll, afterEach, beforeAll, expect, it, vi } from 'vitest';
import { type FakeUpstream, type Fault, startFakeUpstream } from '../dev/fake-upstream.ts';
import { GATEWAY_ERRORS, GatewayError } from '../src/errors.ts';
import { type UpstreamCall, UpstreamClient } from '../src/upstream/client.ts';
import { UpstreamGate } from '../src/upstream/gate.ts';
import { RetryBudget } from '../src/upstream/retry-budget.ts';
import { within } from './helpers.ts';

const REQUESTS = 500;
const CONCURRENCY = 25;
/** Deadlines are not under test: generous enough for a machine with two busy processes beside. */
const DEADLINE_MS = 30_000;

// The bound on each run is within() below; vitest's 5 s default would cut a loaded run short.
vi.setConfig({ testTimeout: 120_000 });
const TOKENS = ['chaos-token-a', 'chaos-token-b'];

/** Transient faults only. A 429 asks for no wait: token cool-downs are the client tests' subject. */
const FAULTS: Fault[] = [
  { kind: 'status', status: 503 },
  { kind: 'status', status: 500 },
  { kind: 'status', status: 429, retryAfter: '0' },
  { kind: 'reset' },
  { kind: 'latency', ms: 20 },
];

/** Codes the contract allows the client to produce under transient faults, with their status. */
const ALLOWED_ERRORS = new Set(['upstream_error', 'too_many_requests', 'upstream_unavailable']);

let fake: FakeUpstream;
const clients: UpstreamClient[] = [];
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);

beforeAll(async () => {
  process.on('unhandledRejection', onUnhandled);
  fake = await startFakeUpstream({ tokens: TOKENS });
});
afterEach(async () => {
  fake.reset();
  await Promise.all(clients.splice(0).map((c) => c.close()));
});
afterAll(async () => {
  process.off('unhandledRejection', onUnhandled);
  await fake.close();
});

function chaosClient(options: { retryBudget?: RetryBudget; breakerThreshold?: number }) {
  const retries: string[] = [];
  const client = new UpstreamClient({
    baseUrl: fake.url,
    tokens: TOKENS,
    timeoutMs: DEADLINE_MS,
    maxConnections: CONCURRENCY,
    maxRetries: 2,
    backoff: { initialDelayMs: 2, maxDelayMs: 20 },
    gate: new UpstreamGate({
      ratePerSecond: 100_000,
      maxConcurrency: CONCURRENCY,
      maxQueued: REQUESTS,
      minAttemptMs: 100,
    }),
    events: { onRetry: (reason) => retries.push(reason) },
    ...options,
  });
  clients.push(client);
  return { client, retries };
}

function newCall(i: number): UpstreamCall {
  const ignore = () => {};
  return {
    path: '/captcha/recognition/hcaptcha',
    kind: 'solve',
    body: Buffer.from(JSON.stringify({ question: `chaos ${i}`, queries: ['iVBORw0KGgo='] })),
    expect: 'solution',
    traceId: `chaos-${i}`,
    clientId: `client-${i % 3}`,
    deadline: Date.now() + DEADLINE_MS,
    report: { retries: 0 },
    log: { error: ignore, warn: ignore },
  };
}

type Outcome = 'ok' | 'passed_through' | `error:${string}` | 'other';

/** Runs every call, CONCURRENCY at a time, and classifies each outcome. */
async function runAll(client: UpstreamClient): Promise<Outcome[]> {
  let next = 0;
  const results: Outcome[] = [];
  const worker = async () => {
    for (let i = next++; i < REQUESTS; i = next++) {
      try {
        const reply = await client.call(newCall(i));
        const solution = (reply.json as { solution?: unknown }).solution;
        if (reply.status === 200 && typeof solution === 'object' && solution !== null) {
          results.push('ok');
        } else {
          // The contract passes an upstream 5xx that outlived the retries through as it is.
          results.push(reply.status >= 500 ? 'passed_through' : 'other');
        }
      } catch (error) {
        const known =
          error instanceof GatewayError &&
          ALLOWED_ERRORS.has(error.code) &&
          GATEWAY_ERRORS[error.code as keyof typeof GATEWAY_ERRORS].status === error.statusCode;
        results.push(known ? `error:${error.code}` : 'other');
      }
    }
  };
  await within(
    Promise.all(Array.from({ length: CONCURRENCY }, worker)),
    90_000,
    `${REQUESTS} chaos calls`,
  );
  // Let any stray rejection surface (one turn of the event loop) before checking.
  await new Promise((resolve) => setImmediate(resolve));
  return results;
}

it('absorbs 30% transient faults: ≥ 95% succeed, the rest are outcomes the contract allows', async () => {
  const { client } = chaosClient({});
  fake.setRandomFaults({ rate: 0.3, seed: 42, faults: FAULTS });
  const results = await runAll(client);

  expect(results).toHaveLength(REQUESTS);
  expect(results.filter((r) => r === 'other')).toEqual([]);
  expect(results.filter((r) => r === 'ok').length / REQUESTS).toBeGreaterThanOrEqual(0.95);
  expect(fake.callCount()).toBeGreaterThan(REQUESTS);
  expect(fake.callCount()).toBeLessThanOrEqual(REQUESTS * 3);
  expect(client.circuitState()).toBe('closed');
  expect(client.tokenState()).toEqual({ usable: 2, total: 2 });
  expect(unhandled).toEqual([]);
});

it('keeps retries within the retry budget (20% of calls) under the same faults', async () => {
  const budget = new RetryBudget({ percent: 20, minPerSecond: 0, windowMs: 600_000 });
  // The breaker is not under test here: once the budget is spent, faults reach it unretried.
  const { client, retries } = chaosClient({ retryBudget: budget, breakerThreshold: REQUESTS });
  fake.setRandomFaults({ rate: 0.3, seed: 42, faults: FAULTS });
  const results = await runAll(client);

  expect(results).toHaveLength(REQUESTS);
  expect(results.filter((r) => r === 'other')).toEqual([]);
  expect(retries.length).toBeGreaterThan(0);
  expect(retries.length).toBeLessThanOrEqual(REQUESTS * 0.2);
  expect(fake.callCount()).toBe(REQUESTS + retries.length);
  expect(results.filter((r) => r === 'ok').length).toBeGreaterThan(REQUESTS * 0.7);
  expect(unhandled).toEqual([]);
});
