// UpstreamGate on its own, under fake timers (it uses only setTimeout and Date.now): the strict
// sliding-window rate, the concurrency cap, the queue bound, round-robin fairness between
// clients, deadlines (refused at once when the queue shows the call cannot start in time, or when
// a queued call's deadline comes), abort, and setRate.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { GatewayError } from '../src/errors.ts';
import { type GateTicket, UpstreamGate, type UpstreamGateOptions } from '../src/upstream/gate.ts';

const T0 = Date.UTC(2026, 0, 1);

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'], now: T0 });
});
afterEach(() => {
  vi.useRealTimers();
});

const never = new AbortController().signal;

function gate(options: Partial<UpstreamGateOptions> = {}): UpstreamGate {
  return new UpstreamGate({
    ratePerSecond: 1_000,
    maxConcurrency: 1_000,
    maxQueued: 1_000,
    minAttemptMs: 100,
    ...options,
  });
}

function ticket(clientId: string, overrides: Partial<GateTicket> = {}): GateTicket {
  return { clientId, deadline: Date.now() + 60_000, signal: never, ...overrides };
}

/** Records who started when; each started call runs until the test finishes it. */
function recorder() {
  const starts: Array<{ name: string; at: number }> = [];
  const finishers = new Map<string, () => void>();
  const send = (name: string) => () =>
    new Promise<string>((resolve) => {
      starts.push({ name, at: Date.now() - T0 });
      finishers.set(name, () => resolve(name));
    });
  const finish = (name: string) => {
    const done = finishers.get(name);
    if (!done) throw new Error(`${name} has not started`);
    done();
  };
  return { starts, send, finish, names: () => starts.map((s) => s.name) };
}

/** The outcome of a promise so far: pending, or settled with its value or error. */
function track<T>(promise: Promise<T>) {
  const state: { settled: boolean; value?: T; error?: unknown } = { settled: false };
  promise.then(
    (value) => Object.assign(state, { settled: true, value }),
    (error: unknown) => Object.assign(state, { settled: true, error }),
  );
  return state;
}

/** Lets promise callbacks run without moving the clock. */
const flush = () => vi.advanceTimersByTimeAsync(0);
/** One pacing interval at the default rate (1,000/s): the next queued call may start. */
const step = () => vi.advanceTimersByTimeAsync(1);

describe('rate', () => {
  it('starts at most `rate` calls in any second: a strict sliding window, not fixed seconds', async () => {
    const g = gate({ ratePerSecond: 3 });
    const r = recorder();
    void g.run(ticket('a'), r.send('c1'));
    await vi.advanceTimersByTimeAsync(500);
    for (const name of ['c2', 'c3', 'c4', 'c5']) void g.run(ticket('a'), r.send(name));
    await flush();
    // c1 at 0, c2 and c3 at 500; c4 waits for c1 to leave the window, c5 for c2.
    expect(r.starts).toEqual([
      { name: 'c1', at: 0 },
      { name: 'c2', at: 500 },
      { name: 'c3', at: 500 },
    ]);
    await vi.advanceTimersByTimeAsync(499);
    expect(r.starts).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(1);
    expect(r.starts.at(-1)).toEqual({ name: 'c4', at: 1_000 });
    await vi.advanceTimersByTimeAsync(499);
    expect(r.starts).toHaveLength(4);
    await vi.advanceTimersByTimeAsync(1);
    expect(r.starts.at(-1)).toEqual({ name: 'c5', at: 1_500 });
    const at = r.starts.map((s) => s.at);
    for (const t of at) expect(at.filter((u) => u >= t && u < t + 1_000).length).toBeLessThan(4);
  });

  it('setRate applies at once: raising it starts waiting calls, and it never drops below 1', async () => {
    const g = gate({ ratePerSecond: 1 });
    const r = recorder();
    for (const name of ['c1', 'c2', 'c3']) void g.run(ticket('a'), r.send(name));
    await flush();
    expect(r.names()).toEqual(['c1']);
    expect(g.load).toEqual({ running: 1, queued: 2, clients: 1 });
    g.setRate(3);
    // Queued calls start at the new pace: one every 1 s / 3, not one a second.
    await vi.advanceTimersByTimeAsync(667);
    expect(r.starts).toEqual([
      { name: 'c1', at: 0 },
      { name: 'c2', at: 334 },
      { name: 'c3', at: 667 },
    ]);
    g.setRate(0);
    const late = track(g.run(ticket('a'), r.send('c4')));
    await vi.advanceTimersByTimeAsync(999);
    expect(r.starts).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(1);
    // A rate of at least 1: one second after c3.
    expect(r.starts.at(-1)).toEqual({ name: 'c4', at: 1_667 });
    r.finish('c4');
    await flush();
    expect(late.value).toBe('c4');
  });
});

describe('concurrency and queue bound', () => {
  it('runs at most maxConcurrency calls; the next starts when one finishes', async () => {
    const g = gate({ maxConcurrency: 2 });
    const r = recorder();
    const results = ['c1', 'c2', 'c3'].map((name) => g.run(ticket('a'), r.send(name)));
    await flush();
    expect(r.names()).toEqual(['c1', 'c2']);
    expect(g.load).toEqual({ running: 2, queued: 1, clients: 1 });
    r.finish('c2');
    await step();
    expect(r.names()).toEqual(['c1', 'c2', 'c3']);
    expect(g.load).toEqual({ running: 2, queued: 0, clients: 0 });
    r.finish('c1');
    r.finish('c3');
    expect(await Promise.all(results)).toEqual(['c1', 'c2', 'c3']);
    expect(g.load).toEqual({ running: 0, queued: 0, clients: 0 });
  });

  it('refuses with 503 and retry-after at once when the queue is full, never calling', async () => {
    const g = gate({ maxConcurrency: 1, maxQueued: 1 });
    const r = recorder();
    void g.run(ticket('a'), r.send('running'));
    void g.run(ticket('b'), r.send('queued'));
    const refused = track(g.run(ticket('c'), r.send('refused')));
    await flush();
    expect(refused.error).toBeInstanceOf(GatewayError);
    expect(refused.error).toMatchObject({
      code: 'upstream_unavailable',
      statusCode: 503,
      headers: { 'retry-after': '1' },
    });
    r.finish('running');
    await step();
    expect(r.names()).toEqual(['running', 'queued']);
  });
});

describe('fairness', () => {
  it("serves clients in turn: a client's burst queues behind itself, not in front of others", async () => {
    const g = gate({ maxConcurrency: 1 });
    const r = recorder();
    for (const name of ['a1', 'a2', 'a3', 'a4', 'a5']) void g.run(ticket('a'), r.send(name));
    void g.run(ticket('b'), r.send('b1'));
    void g.run(ticket('c'), r.send('c1'));
    void g.run(ticket('b'), r.send('b2'));
    await flush();
    for (let i = 0; i < 8; i++) {
      const last = r.starts.at(-1);
      if (last) r.finish(last.name);
      await step();
    }
    // One start per waiting client per turn: a, b, c, then the rest of a's burst.
    expect(r.names()).toEqual(['a1', 'a2', 'b1', 'c1', 'a3', 'b2', 'a4', 'a5']);
  });

  it('applies the same turns when the rate is what holds calls back', async () => {
    const g = gate({ ratePerSecond: 1 });
    const r = recorder();
    for (const name of ['a1', 'a2', 'a3']) void g.run(ticket('a'), r.send(name));
    void g.run(ticket('b'), r.send('b1'));
    await vi.advanceTimersByTimeAsync(3_000);
    expect(r.starts).toEqual([
      { name: 'a1', at: 0 },
      { name: 'a2', at: 1_000 },
      { name: 'b1', at: 2_000 },
      { name: 'a3', at: 3_000 },
    ]);
  });
});

describe('deadlines', () => {
  it('answers 504 at once, with retry-after, when the rate window shows the call cannot start in time', async () => {
    const g = gate({ ratePerSecond: 60 });
    const r = recorder();
    // A burst fills the window: the next start is 1 s away, not 1/60 s.
    for (let i = 0; i < 60; i++) void g.run(ticket('a'), r.send(`burst${i}`));
    await flush();
    expect(r.starts).toHaveLength(60);
    const late = track(g.run(ticket('b', { deadline: T0 + 800 }), r.send('late')));
    await flush();
    expect(late.error).toMatchObject({
      code: 'timeout',
      statusCode: 504,
      headers: { 'retry-after': '1' },
    });
    expect(Date.now()).toBe(T0);
    const fits = track(g.run(ticket('b', { deadline: T0 + 1_100 }), r.send('fits')));
    await vi.advanceTimersByTimeAsync(1_000);
    expect(r.starts.at(-1)).toEqual({ name: 'fits', at: 1_000 });
    expect(fits.settled).toBe(false);
    expect(g.load.queued).toBe(0);
  });

  it('queues a call that fits because an old start leaves the window soon', async () => {
    const g = gate({ ratePerSecond: 2 });
    const r = recorder();
    void g.run(ticket('a'), r.send('c1'));
    await vi.advanceTimersByTimeAsync(900);
    void g.run(ticket('a'), r.send('c2'));
    await vi.advanceTimersByTimeAsync(50);
    // c1 leaves the window at 1000, and the pace (1 s / 2) after c2 allows 1400: c3 fits a
    // deadline of 1500 and starts then; one of 1200 is refused at once.
    const tooLate = track(g.run(ticket('b', { deadline: T0 + 1_200 }), r.send('too-late')));
    const c3 = track(g.run(ticket('c', { deadline: T0 + 1_600 }), r.send('c3')));
    await flush();
    expect(tooLate.error).toMatchObject({ code: 'timeout', statusCode: 504 });
    expect(c3.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(450);
    expect(r.starts.at(-1)).toEqual({ name: 'c3', at: 1_400 });
  });

  it('paces a saturated gate: queued calls start one interval apart, never in a clump a second', async () => {
    const g = gate({ ratePerSecond: 10 });
    const r = recorder();
    for (let i = 0; i < 40; i++) void g.run(ticket('flood'), r.send(`f${i}`));
    await vi.advanceTimersByTimeAsync(1_500);
    // Another client's call, arriving while the flood is queued, starts within two intervals.
    void g.run(ticket('steady'), r.send('s1'));
    await vi.advanceTimersByTimeAsync(2_000);
    const at = r.starts.map((s) => s.at);
    // The first window at once (it had room); then one start every 100 ms (less a tenth for a
    // late timer), never two at once when the window frees.
    expect(at.slice(0, 10)).toEqual(Array(10).fill(0));
    expect(at[10]).toBe(1_000);
    const gaps = at.slice(11).map((t, i) => t - (at[10 + i] ?? 0));
    for (const gap of gaps) expect(gap).toBeGreaterThanOrEqual(90);
    for (const t of at)
      expect(at.filter((u) => u >= t && u < t + 1_000).length).toBeLessThanOrEqual(10);
    const steady = r.starts.find((s) => s.name === 's1');
    expect(steady && steady.at - 1_500).toBeLessThanOrEqual(200);
  });

  it('counts the turns of other clients ahead when estimating the start', async () => {
    const g = gate({ ratePerSecond: 1 });
    const r = recorder();
    void g.run(ticket('a'), r.send('a1'));
    void g.run(ticket('a'), r.send('a2'));
    void g.run(ticket('b'), r.send('b1'));
    // c's first call comes after a2 (at 1000) and b1 (at 2000): at 3000.
    const tooLate = track(g.run(ticket('c', { deadline: T0 + 3_050 }), r.send('c1')));
    const inTime = track(g.run(ticket('d', { deadline: T0 + 4_100 }), r.send('d1')));
    await flush();
    expect(tooLate.error).toMatchObject({ code: 'timeout', headers: { 'retry-after': '3' } });
    expect(inTime.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(3_000);
    expect(r.starts.map((s) => [s.name, s.at])).toEqual([
      ['a1', 0],
      ['a2', 1_000],
      ['b1', 2_000],
      ['d1', 3_000],
    ]);
  });

  it('gives a queued call 504 once it could no longer start with minAttemptMs left, never calling', async () => {
    const g = gate({ maxConcurrency: 1, minAttemptMs: 100 });
    const r = recorder();
    void g.run(ticket('a'), r.send('running'));
    const queued = track(g.run(ticket('b', { deadline: T0 + 5_000 }), r.send('queued')));
    await vi.advanceTimersByTimeAsync(4_899);
    expect(queued.settled).toBe(false);
    expect(g.load.queued).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(queued.error).toBeInstanceOf(GatewayError);
    expect(queued.error).toMatchObject({ code: 'timeout', statusCode: 504 });
    expect(g.load).toEqual({ running: 1, queued: 0, clients: 0 });
    r.finish('running');
    await flush();
    expect(r.names()).toEqual(['running']);
  });

  it('removes a queued call whose signal aborts, at once', async () => {
    const g = gate({ maxConcurrency: 1 });
    const r = recorder();
    void g.run(ticket('a'), r.send('running'));
    const controller = new AbortController();
    const queued = track(g.run(ticket('b', { signal: controller.signal }), r.send('aborted')));
    const next = track(g.run(ticket('c'), r.send('next')));
    await flush();
    expect(g.load.queued).toBe(2);
    controller.abort(new Error('client went away'));
    await flush();
    expect(queued.error).toMatchObject({ code: 'timeout', statusCode: 504 });
    expect(g.load.queued).toBe(1);
    r.finish('running');
    await step();
    expect(r.names()).toEqual(['running', 'next']);
    expect(next.settled).toBe(false);
  });

  it('refuses a call with less than minAttemptMs of its deadline left, even with a slot free', async () => {
    const g = gate({ minAttemptMs: 1_000 });
    const r = recorder();
    const tooClose = track(g.run(ticket('a', { deadline: T0 + 999 }), r.send('too-close')));
    await flush();
    expect(tooClose.error).toMatchObject({ code: 'timeout', statusCode: 504 });
    const justFits = track(g.run(ticket('a', { deadline: T0 + 1_000 }), r.send('just-fits')));
    await flush();
    expect(justFits.settled).toBe(false);
    expect(r.names()).toEqual(['just-fits']);
  });

  it('refuses an already aborted call without queueing it', async () => {
    const g = gate();
    const controller = new AbortController();
    controller.abort();
    const r = recorder();
    await expect(
      g.run(ticket('a', { signal: controller.signal }), r.send('x')),
    ).rejects.toMatchObject({ code: 'timeout' });
    expect(r.starts).toEqual([]);
    expect(g.load).toEqual({ running: 0, queued: 0, clients: 0 });
  });
});
