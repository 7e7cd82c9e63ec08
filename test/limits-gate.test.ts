import { afterEach, describe, expect, it, vi } from 'vitest';
import { GatewayError } from '../src/errors.ts';
import { UpstreamGate } from '../src/limits/upstream-gate.ts';

/** A call that finishes only when the test says so. */
function pendingCall() {
  let finish: (value: string) => void = () => {};
  const promise = new Promise<string>((resolve) => {
    finish = resolve;
  });
  return { fn: () => promise, finish };
}

const never = new AbortController().signal;

afterEach(() => {
  vi.useRealTimers();
});

describe('UpstreamGate', () => {
  it('runs at most maxConcurrency calls at once and queues the rest in order', async () => {
    const gate = new UpstreamGate({ maxConcurrency: 2, ratePerSecond: 1000, maxQueued: 10 });
    const calls = [pendingCall(), pendingCall(), pendingCall()];
    const started: number[] = [];
    const results = calls.map((call, i) =>
      gate.run(() => {
        started.push(i);
        return call.fn();
      }, never),
    );
    await Promise.resolve();
    expect(started).toEqual([0, 1]);
    expect(gate.load).toEqual({ running: 2, queued: 1 });
    calls[0]?.finish('a');
    await expect.poll(() => started).toEqual([0, 1, 2]);
    calls[1]?.finish('b');
    calls[2]?.finish('c');
    expect(await Promise.all(results)).toEqual(['a', 'b', 'c']);
  });

  it('refuses with 503 upstream_unavailable when the wait queue is full, without calling', async () => {
    const gate = new UpstreamGate({ maxConcurrency: 1, ratePerSecond: 1000, maxQueued: 1 });
    const running = pendingCall();
    const first = gate.run(running.fn, never);
    const queued = gate.run(async () => 'queued', never);
    const fn = vi.fn(async () => 'refused');
    const refused = gate.run(fn, never);
    await expect(refused).rejects.toMatchObject({ code: 'upstream_unavailable', statusCode: 503 });
    expect(fn).not.toHaveBeenCalled();
    running.finish('done');
    expect(await first).toBe('done');
    expect(await queued).toBe('queued');
  });

  it('gives up with 503 when the deadline passes while waiting, and never runs the call', async () => {
    vi.useFakeTimers();
    const gate = new UpstreamGate({ maxConcurrency: 1, ratePerSecond: 1000, maxQueued: 10 });
    const running = pendingCall();
    void gate.run(running.fn, never);
    const deadline = new AbortController();
    setTimeout(() => deadline.abort(new GatewayError('timeout', 'deadline')), 5_000);
    const fn = vi.fn(async () => 'late');
    const waiting = gate.run(fn, deadline.signal);
    const outcome = expect(waiting).rejects.toMatchObject({ code: 'upstream_unavailable' });
    await vi.advanceTimersByTimeAsync(5_000);
    await outcome;
    expect(fn).not.toHaveBeenCalled();
    expect(gate.load.queued).toBe(0);
    running.finish('done');
  });

  it('starts at most ratePerSecond calls in any one-second window', async () => {
    vi.useFakeTimers();
    const gate = new UpstreamGate({ maxConcurrency: 100, ratePerSecond: 3, maxQueued: 100 });
    const startedAt: number[] = [];
    const t0 = Date.now();
    const runs = Array.from({ length: 7 }, () =>
      gate.run(async () => {
        startedAt.push(Date.now() - t0);
      }, never),
    );
    await vi.advanceTimersByTimeAsync(2_500);
    await Promise.all(runs);
    expect(startedAt).toHaveLength(7);
    for (const at of startedAt) {
      expect(
        startedAt.filter((other) => other >= at && other < at + 1_000).length,
      ).toBeLessThanOrEqual(3);
    }
    expect(startedAt.slice(0, 3)).toEqual([0, 0, 0]);
    expect(startedAt[3]).toBeGreaterThanOrEqual(1_000);
  });
});
