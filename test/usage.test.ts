import { afterEach, describe, expect, it, vi } from 'vitest';
import { dayBefore, utcDay } from '../src/days.ts';
import {
  countsByClient,
  emptyCounts,
  kindsOf,
  type UsageEvent,
  usageField,
} from '../src/usage/counts.ts';
import { UsageRecorder } from '../src/usage/recorder.ts';
import { formatUsageTable, type KnownClients, usageReport } from '../src/usage/report.ts';
import { MemoryUsageStore, type UsageStore } from '../src/usage/store.ts';

const event = (overrides: Partial<UsageEvent> = {}): UsageEvent => ({
  clientId: 'alice',
  billed: false,
  cache: undefined,
  limit: undefined,
  ...overrides,
});

afterEach(() => {
  vi.useRealTimers();
});

describe('kindsOf', () => {
  it('counts every request with a client, and each outcome once', () => {
    expect(kindsOf(event({ clientId: undefined, billed: true }))).toEqual([]);
    expect(kindsOf(event())).toEqual(['requests']);
    expect(kindsOf(event({ billed: true, cache: 'miss' }))).toEqual(['requests', 'billed_calls']);
    expect(kindsOf(event({ cache: 'hit' }))).toEqual(['requests', 'cache_hits']);
    expect(kindsOf(event({ cache: 'merged' }))).toEqual(['requests', 'merged']);
    expect(kindsOf(event({ cache: 'bypass', billed: true }))).toEqual(['requests', 'billed_calls']);
    expect(kindsOf(event({ limit: 'rate_limit' }))).toEqual(['requests', 'rate_limited']);
    expect(kindsOf(event({ limit: 'quota' }))).toEqual(['requests', 'quota_refused']);
    expect(kindsOf(event({ limit: 'client_in_flight' }))).toEqual(['requests', 'refused']);
    expect(kindsOf(event({ limit: 'bytes_in_flight' }))).toEqual(['requests', 'refused']);
  });
});

describe('days and fields', () => {
  it('uses UTC days', () => {
    expect(utcDay(new Date('2031-03-04T23:59:59.999-05:00'))).toBe('2031-03-05');
    expect(dayBefore('2031-03-01', 1)).toBe('2031-02-28');
    expect(dayBefore('2032-03-01', 2)).toBe('2032-02-28');
  });

  it('splits fields back into clients and kinds, skipping unknown kinds', () => {
    const fields = new Map([
      [usageField('alice', 'requests'), 3],
      [usageField('a.b-c_d', 'cache_hits'), 2],
      ['alice|future_kind', 9],
      ['garbage', 1],
    ]);
    const byClient = countsByClient(fields);
    expect(byClient.get('alice')).toEqual({ ...emptyCounts(), requests: 3 });
    expect(byClient.get('a.b-c_d')).toEqual({ ...emptyCounts(), cache_hits: 2 });
    expect(byClient.size).toBe(2);
  });
});

describe('UsageRecorder (memory)', () => {
  it('counts per client for the current UTC day and starts afresh at midnight', async () => {
    let now = new Date('2031-05-06T23:59:00Z');
    const recorder = new UsageRecorder({ now: () => now });
    recorder.record(event({ billed: true }));
    recorder.record(event({ cache: 'hit' }));
    recorder.record(event({ clientId: 'bob', limit: 'rate_limit' }));
    recorder.record(event({ clientId: undefined }));
    const today = await recorder.today();
    expect(today.day).toBe('2031-05-06');
    expect(today.source).toBe('replica');
    expect(today.byClient.get('alice')).toEqual({
      ...emptyCounts(),
      requests: 2,
      billed_calls: 1,
      cache_hits: 1,
    });
    expect(today.byClient.get('bob')).toEqual({ ...emptyCounts(), requests: 1, rate_limited: 1 });

    now = new Date('2031-05-07T00:00:01Z');
    expect((await recorder.today()).byClient.size).toBe(0);
    recorder.record(event());
    expect((await recorder.today()).byClient.get('alice')?.requests).toBe(1);
    await recorder.close();
  });
});

/** A shared store that records each batch, and can be made to fail. */
class FakeSharedStore implements UsageStore {
  readonly inner = new MemoryUsageStore();
  readonly batches: Array<{ day: string; fields: Record<string, number> }> = [];
  failing = false;
  async add(day: string, counts: Map<string, number>): Promise<void> {
    if (this.failing) throw new Error('store down');
    this.batches.push({ day, fields: Object.fromEntries(counts) });
    await this.inner.add(day, counts);
  }
  async read(day: string): Promise<Map<string, number>> {
    if (this.failing) throw new Error('store down');
    return this.inner.read(day);
  }
}

describe('UsageRecorder (shared store, fake timers)', () => {
  it('writes one batch per flush interval, not one write per request', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const shared = new FakeSharedStore();
    const now = new Date('2031-05-06T12:00:00Z');
    const recorder = new UsageRecorder({ shared, flushIntervalMs: 1_000, now: () => now });
    for (let i = 0; i < 50; i++) recorder.record(event({ billed: i % 2 === 0 }));
    recorder.record(event({ clientId: 'bob', cache: 'merged' }));
    expect(shared.batches).toHaveLength(0);
    // Not yet written, but today() already shows them (pending counts are added).
    expect((await recorder.today()).byClient.get('alice')?.requests).toBe(50);

    await vi.advanceTimersByTimeAsync(999);
    expect(shared.batches).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(shared.batches).toEqual([
      {
        day: '2031-05-06',
        fields: {
          'alice|requests': 50,
          'alice|billed_calls': 25,
          'bob|requests': 1,
          'bob|merged': 1,
        },
      },
    ]);
    const today = await recorder.today();
    expect(today.source).toBe('redis');
    expect(today.byClient.get('alice')).toMatchObject({ requests: 50, billed_calls: 25 });
    // Nothing pending: no timer, no empty batch.
    expect(vi.getTimerCount()).toBe(0);
    await recorder.close();
    expect(shared.batches).toHaveLength(1);
  });

  it('never fails a request when the store fails: counts locally, retries with the next batch', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const shared = new FakeSharedStore();
    const errors: unknown[] = [];
    const now = new Date('2031-05-06T12:00:00Z');
    const recorder = new UsageRecorder({
      shared,
      flushIntervalMs: 1_000,
      now: () => now,
      onError: (error) => errors.push(error),
    });
    shared.failing = true;
    expect(recorder.record(event())).toEqual(['requests']);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(errors).toHaveLength(1);
    // Reading falls back to this replica's own counts.
    const local = await recorder.today();
    expect(local.source).toBe('replica');
    expect(local.byClient.get('alice')?.requests).toBe(1);

    shared.failing = false;
    recorder.record(event());
    await vi.advanceTimersByTimeAsync(1_000);
    expect(shared.batches).toEqual([{ day: '2031-05-06', fields: { 'alice|requests': 2 } }]);
    await recorder.close();
  });

  it('close() writes what is pending', async () => {
    const shared = new FakeSharedStore();
    const recorder = new UsageRecorder({ shared, flushIntervalMs: 60_000 });
    recorder.record(event({ cache: 'hit' }));
    await recorder.close();
    expect(shared.batches).toHaveLength(1);
    expect(shared.batches[0]?.fields).toEqual({ 'alice|requests': 1, 'alice|cache_hits': 1 });
  });
});

describe('usageReport and the table', () => {
  const clients: KnownClients = {
    ids: ['alice', 'bob', 'carol'],
    get: (id) =>
      id === 'alice'
        ? { quota: { upstreamCallsPerDay: 10 } }
        : id === 'bob' || id === 'carol'
          ? {}
          : undefined,
  };
  const usage = {
    day: '2031-05-06',
    source: 'redis' as const,
    byClient: new Map([
      ['alice', { ...emptyCounts(), requests: 20, billed_calls: 12, cache_hits: 5, merged: 2 }],
      ['bob', { ...emptyCounts(), requests: 3, rate_limited: 1, refused: 1 }],
      ['removed-yesterday', { ...emptyCounts(), requests: 1 }],
    ]),
  };

  it('lists known clients (zeros included) in file order, then others counted today', () => {
    const report = usageReport(usage, clients);
    expect(report.day).toBe('2031-05-06');
    expect(report.source).toBe('redis');
    expect(report.clients.map((c) => c.id)).toEqual(['alice', 'bob', 'carol', 'removed-yesterday']);
    expect(report.clients[0]).toEqual({
      id: 'alice',
      requests: 20,
      billed_calls: 12,
      cache_hits: 5,
      merged: 2,
      rate_limited: 0,
      quota_refused: 0,
      refused: 0,
      calls_saved: 7,
      quota_per_day: 10,
      quota_remaining: 0,
    });
    expect(report.clients[2]).toMatchObject({ requests: 0, quota_per_day: null });
    expect(usageReport(usage, clients, 'bob').clients.map((c) => c.id)).toEqual(['bob']);
    expect(usageReport(usage, clients, 'nobody').clients).toEqual([]);
  });

  it('formats a table with one row per client', () => {
    const table = formatUsageTable(usageReport(usage, clients));
    const lines = table.trimEnd().split('\n');
    expect(lines[0]).toBe('usage on 2031-05-06 (UTC, so far), all replicas (Redis)');
    expect(lines[1]).toMatch(
      /^client\s+requests\s+billed\/quota\s+cache hits\s+merged\s+saved\s+rate limited\s+quota refused\s+refused$/,
    );
    expect(lines[2]).toMatch(/^alice\s+20\s+12\/10\s+5\s+2\s+7\s+0\s+0\s+0$/);
    expect(lines[3]).toMatch(/^bob\s+3\s+0\s+0\s+0\s+0\s+1\s+0\s+1$/);
    expect(lines).toHaveLength(6);
    const single = formatUsageTable({ ...usageReport(usage, clients), source: 'replica' });
    expect(single).toContain('one gateway replica only');
  });
});
