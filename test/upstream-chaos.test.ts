// Chaos: many concurrent calls against an upstream that fails 30% of the time with transient
// faults only. Retries must absorb nearly all of it, and nothing may escape as an unhandled
// rejection or as anything but a reply with a solution, a GatewayError, or (as the contract
// says) the upstream's last 5xx passed through.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { type FakeUpstream, startFakeUpstream } from '../dev/fake-upstream.ts';
import { GatewayError } from '../src/errors.ts';
import { type UpstreamCall, UpstreamClient } from '../src/upstream/client.ts';

const REQUESTS = 500;
const CONCURRENCY = 25;

let fake: FakeUpstream;
let upstream: UpstreamClient;
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);

beforeAll(async () => {
  process.on('unhandledRejection', onUnhandled);
  fake = await startFakeUpstream();
  upstream = new UpstreamClient({
    baseUrl: fake.url,
    tokens: ['test-upstream-token'],
    timeoutMs: 5_000,
    maxRetries: 2,
    backoff: { initialDelayMs: 2, maxDelayMs: 20 },
  });
});
afterAll(async () => {
  process.off('unhandledRejection', onUnhandled);
  await upstream.close();
  await fake.close();
});

function newCall(i: number): UpstreamCall {
  const ignore = () => {};
  return {
    path: '/captcha/recognition/hcaptcha',
    body: JSON.stringify({ question: `chaos ${i}`, queries: ['iVBORw0KGgo='] }),
    expect: 'solution',
    traceId: `chaos-${i}`,
    report: { retries: 0 },
    log: { error: ignore, warn: ignore },
  };
}

it('absorbs 30% transient faults: ≥ 95% succeed, the rest are errors the contract allows', async () => {
  fake.setRandomFaults({
    rate: 0.3,
    seed: 42,
    faults: [
      { kind: 'status', status: 503 },
      { kind: 'status', status: 500 },
      { kind: 'status', status: 429 },
      { kind: 'reset' },
      { kind: 'latency', ms: 20 },
    ],
  });
  let next = 0;
  const results: Array<'ok' | 'passed_through' | 'gateway_error' | 'other'> = [];
  const worker = async () => {
    for (let i = next++; i < REQUESTS; i = next++) {
      try {
        const reply = await upstream.call(newCall(i));
        const solution = (reply.json as { solution?: unknown }).solution;
        if (typeof solution === 'object' && solution !== null) results.push('ok');
        // The contract passes an upstream 5xx that outlived the retries through as it is.
        else results.push(reply.status >= 500 ? 'passed_through' : 'other');
      } catch (error) {
        results.push(error instanceof GatewayError ? 'gateway_error' : 'other');
      }
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const elapsed = performance.now() - started;

  const ok = results.filter((r) => r === 'ok').length;
  expect(results).toHaveLength(REQUESTS);
  expect(results.filter((r) => r === 'other')).toEqual([]);
  expect(ok / REQUESTS).toBeGreaterThanOrEqual(0.95);
  expect(fake.callCount()).toBeGreaterThan(REQUESTS);
  expect(fake.callCount()).toBeLessThanOrEqual(REQUESTS * 3);
  expect(upstream.circuitState()).toBe('closed');
  expect(elapsed).toBeLessThan(10_000);
  // Let any stray rejection surface before checking.
  await new Promise((resolve) => setTimeout(resolve, 20));
  expect(unhandled).toEqual([]);
});
