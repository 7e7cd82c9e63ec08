import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  InflightMerger,
  type MergeEvent,
  type MergePayload,
  type MergeResult,
} from '../src/cache/merge.ts';
import { RedisMerger, type RedisMergerOptions } from '../src/cache/redis-merge.ts';
import { RedisCacheStore } from '../src/cache/redis-store.ts';
import { GatewayError } from '../src/errors.ts';
import { connectRedis, type SharedRedis } from '../src/redis.ts';
import { EVENT_BOUND } from './helpers.ts';
import { canControlRedis, describeWithRedis, startRedis, type TestRedis } from './redis-server.ts';

const silentLog = { info: () => {}, warn: () => {}, error: () => {} };
/** An upstream call's own duration inside `fn` (never a wait for something else to happen). */
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const newKey = () => randomBytes(32).toString('hex');

/** Bytes that are not valid UTF-8, as an upstream body must survive any trip through Redis. */
const BODY = Buffer.concat([
  Buffer.from('{"solution":{"label":"bus","box":["360","276"]},"elapsed":31.6}'),
  Buffer.from([0xff, 0xfe, 0x00]),
]);
const answer = (): MergePayload => ({ status: 200, body: BODY });

/** A promise plus its resolver: lets a test hold an upstream call open. */
function gate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { open, opened };
}

const sources = (results: Array<MergeResult<unknown>>) =>
  results.map((r) => r.source).sort((a, b) => a.localeCompare(b));

describe('InflightMerger', () => {
  it('merges 50 concurrent identical runs into one call', async () => {
    const events: MergeEvent[] = [];
    const merger = new InflightMerger({ onEvent: (e) => events.push(e) });
    const value = answer();
    const fn = vi.fn(async () => {
      await sleep(20);
      return value;
    });
    const results = await Promise.all(Array.from({ length: 50 }, () => merger.run('k', fn)));
    expect(fn).toHaveBeenCalledTimes(1);
    for (const result of results) expect(result.value).toBe(value);
    expect(results.filter((r) => r.shared)).toHaveLength(49);
    expect(results.filter((r) => r.source === 'owner')).toHaveLength(1);
    expect(events.filter((e) => e === 'merged')).toHaveLength(49);
    expect(merger.size).toBe(0);
  });

  it('shares a rejection with every waiter, then forgets it', async () => {
    const merger = new InflightMerger();
    const failure = new GatewayError('upstream_error', 'upstream replied with garbage');
    const failing = vi.fn(async () => {
      await sleep(10);
      throw failure;
    });
    const settled = await Promise.allSettled(
      Array.from({ length: 10 }, () => merger.run('k', failing)),
    );
    expect(failing).toHaveBeenCalledTimes(1);
    for (const outcome of settled) {
      expect(outcome.status).toBe('rejected');
      expect((outcome as PromiseRejectedResult).reason).toBe(failure);
    }
    expect(merger.size).toBe(0);
    const fn = vi.fn(async () => answer());
    const next = await merger.run('k', fn);
    expect(fn).toHaveBeenCalledTimes(1);
    expect(next.shared).toBe(false);
  });

  it('turns a synchronous throw into a shared rejection', async () => {
    const merger = new InflightMerger();
    const fn = vi.fn((): Promise<never> => {
      throw new Error('boom');
    });
    const runs = [merger.run('k', fn), merger.run('k', fn)];
    await expect(runs[0]).rejects.toThrow('boom');
    await expect(runs[1]).rejects.toThrow('boom');
    expect(fn).toHaveBeenCalledTimes(1);
  });

  it("does not share an owner's personal error (its quota): the waiter makes the call itself", async () => {
    const merger = new InflightMerger();
    const hold = gate();
    const refused = vi.fn(async () => {
      await hold.opened;
      throw new GatewayError('too_many_requests', 'daily quota used up', { personal: true });
    });
    const paying = vi.fn(async () => answer());
    const own = merger.run('k', refused).catch((e: unknown) => e);
    const waiter = merger.run('k', paying);
    hold.open();
    expect(((await own) as GatewayError).code).toBe('too_many_requests');
    const result = await waiter;
    expect(paying).toHaveBeenCalledTimes(1);
    expect(result).toMatchObject({ shared: false, source: 'owner' });
  });

  it('does not merge different keys', async () => {
    const merger = new InflightMerger();
    const fn = vi.fn(async () => {
      await sleep(10);
      return answer();
    });
    const results = await Promise.all([merger.run('a', fn), merger.run('b', fn)]);
    expect(fn).toHaveBeenCalledTimes(2);
    expect(results.every((r) => !r.shared)).toBe(true);
  });
});

describeWithRedis('RedisMerger (two replicas)', () => {
  let server: TestRedis;
  let direct: Redis;
  const cleanups: Array<() => Promise<void>> = [];

  interface Replica {
    shared: SharedRedis;
    merger: RedisMerger;
    events: MergeEvent[];
    errors: string[];
  }

  /** One gateway replica: its own fail-fast connections, as connectRedis makes them. */
  async function replica(options: RedisMergerOptions = {}): Promise<Replica> {
    const shared = connectRedis(server.url, silentLog);
    const events: MergeEvent[] = [];
    const errors: string[] = [];
    const merger = new RedisMerger(shared.client, {
      pollIntervalMs: 50,
      ...options,
      onEvent: (e) => events.push(e),
      onError: (_, op) => errors.push(op),
    });
    cleanups.push(async () => {
      await merger.close();
      await shared.close();
    });
    await expect.poll(() => merger.isReady(), EVENT_BOUND).toBe(true);
    return { shared, merger, events, errors };
  }

  const soon = (ms = 5_000) => ({ deadline: Date.now() + ms });
  /** Events, not time: the owner holds its lock now. */
  const locked = (key: string) =>
    expect.poll(() => direct.exists(`agw:lock:${key}`), EVENT_BOUND).toBe(1);
  /** Waiters on `count` replicas are subscribed to the key's done channel. */
  const subscribed = (key: string, count = 1) =>
    expect
      .poll(async () => {
        const reply = (await direct.pubsub('NUMSUB', `agw:done:${key}`)) as [string, number];
        return Number(reply[1]);
      }, EVENT_BOUND)
      .toBeGreaterThanOrEqual(count);

  beforeAll(async () => {
    server = await startRedis();
    direct = new Redis(server.url);
    direct.on('error', () => {}); // outage tests stop the server under it
  });
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0)) await cleanup();
  });
  afterAll(async () => {
    direct?.disconnect();
    await server?.close();
  });

  it('makes one upstream call for 20 identical requests split across replicas', async () => {
    const [a, b] = [await replica(), await replica()];
    const key = newKey();
    const hold = gate();
    const fn = vi.fn(async () => {
      await hold.opened;
      return answer();
    });
    const runs = Array.from({ length: 20 }, (_, i) =>
      (i % 2 === 0 ? a : b).merger.run(key, fn, soon()),
    );
    await locked(key);
    await subscribed(key); // the other replica waits for the owner's announcement
    hold.open();
    const results = await Promise.all(runs);
    expect(fn).toHaveBeenCalledTimes(1);
    for (const result of results) {
      expect(result.value.status).toBe(200);
      expect(result.value.body.equals(BODY)).toBe(true);
    }
    const s = sources(results);
    expect(s.filter((x) => x === 'owner')).toHaveLength(1);
    expect(s.filter((x) => x === 'remote')).toHaveLength(1); // the other replica's participant
    expect(s.filter((x) => x === 'local')).toHaveLength(18);
    expect(results.filter((r) => r.shared)).toHaveLength(19);
    expect(await direct.exists(`agw:lock:${key}`)).toBe(0); // released
    expect([...a.errors, ...b.errors]).toEqual([]);
    expect([...a.events, ...b.events].filter((e) => e === 'remote')).toHaveLength(1);
  });

  it("shares the owner's failure with every replica and caches nothing", async () => {
    const [a, b] = [await replica(), await replica()];
    const key = newKey();
    const hold = gate();
    const failing = vi.fn(async () => {
      await hold.opened;
      throw new GatewayError('upstream_unavailable', 'upstream circuit is open', {
        headers: { 'retry-after': '7' },
      });
    });
    const runs = Array.from({ length: 20 }, (_, i) =>
      (i % 2 === 0 ? a : b).merger.run(key, failing, soon()),
    );
    await locked(key);
    await subscribed(key);
    hold.open();
    const settled = await Promise.allSettled(runs);
    expect(failing).toHaveBeenCalledTimes(1);
    for (const outcome of settled) {
      expect(outcome.status).toBe('rejected');
      const error = (outcome as PromiseRejectedResult).reason as GatewayError;
      expect(error).toBeInstanceOf(GatewayError);
      expect(error.code).toBe('upstream_unavailable');
      expect(error.statusCode).toBe(503);
      expect(error.message).toBe('upstream circuit is open');
      expect(error.headers).toEqual({ 'retry-after': '7' });
    }
    expect(await direct.exists(`agw:lock:${key}`)).toBe(0);

    // Not remembered: the next request calls upstream again.
    const fn = vi.fn(async () => answer());
    const next = await b.merger.run(key, fn, soon());
    expect(fn).toHaveBeenCalledTimes(1);
    expect(next.source).toBe('owner');
  });

  it('hands a non-gateway failure to other replicas as api_error', async () => {
    const [a, b] = [await replica(), await replica()];
    const key = newKey();
    const bug = new TypeError('cannot read properties of undefined');
    const hold = gate();
    const fn = vi.fn(async () => {
      await hold.opened;
      throw bug;
    });
    const own = a.merger.run(key, fn, soon()).catch((e: unknown) => e);
    await locked(key);
    const remote = b.merger.run(key, fn, soon()).catch((e: unknown) => e);
    await subscribed(key);
    hold.open();
    expect(await own).toBe(bug); // the owner logs the real error
    const error = (await remote) as GatewayError;
    expect(error).toBeInstanceOf(GatewayError);
    expect(error.code).toBe('api_error');
    expect(error.message).not.toContain('undefined');
    expect(fn).toHaveBeenCalledTimes(1);
  });

  it("an owner whose error is its own (quota) lets a waiter make the call, from the waiter's quota", async () => {
    const [a, b] = [await replica(), await replica()];
    const key = newKey();
    const hold = gate();
    const refused = vi.fn(async () => {
      await hold.opened;
      throw new GatewayError('too_many_requests', 'daily quota used up', { personal: true });
    });
    const own = a.merger.run(key, refused, soon()).catch((e: unknown) => e);
    await locked(key);
    const paying = vi.fn(async () => answer());
    const waiter = b.merger.run(key, paying, soon());
    await subscribed(key);
    hold.open();
    expect(((await own) as GatewayError).code).toBe('too_many_requests');
    const result = await waiter;
    expect(paying).toHaveBeenCalledTimes(1);
    expect(result.source).toBe('owner');
    expect(result.value.body.equals(BODY)).toBe(true);
  });

  it('a waiter finds an answer stored before it subscribed (getCached)', async () => {
    const b = await replica();
    const key = newKey();
    const store = new RedisCacheStore(b.shared.client);
    // Another replica owns the key and has already stored its answer.
    await direct.set(`agw:lock:${key}`, 'someone-else', 'PX', 5_000);
    await store.set(key, answer(), 60);
    const fn = vi.fn(async () => answer());
    const result = await b.merger.run(key, fn, { ...soon(), getCached: () => store.get(key) });
    expect(fn).not.toHaveBeenCalled();
    expect(result.source).toBe('cache');
    expect(result.value.body.equals(BODY)).toBe(true);
    expect(b.events).toContain('cached');
  });

  it('a live owner keeps its lock past lockTtlMs by refreshing it', async () => {
    // Refreshed ten times a lifetime: only a stall of most of a second could lose it.
    const options = { lockTtlMs: 1_000, refreshIntervalMs: 100 };
    const [a, b] = [await replica(options), await replica(options)];
    const key = newKey();
    const hold = gate();
    const fn = vi.fn(async () => {
      await hold.opened;
      return answer();
    });
    const first = a.merger.run(key, fn, soon());
    await locked(key);
    const second = b.merger.run(key, fn, soon());
    await subscribed(key);
    // Time passing is the subject here: lock lifetimes during which only refreshes keep it.
    await sleep(2.5 * options.lockTtlMs);
    expect(await direct.exists(`agw:lock:${key}`)).toBe(1);
    hold.open();
    const results = await Promise.all([first, second]);
    expect(fn).toHaveBeenCalledTimes(1);
    expect(sources(results)).toEqual(['owner', 'remote']);
    expect(b.events).not.toContain('takeover');
    expect(a.events).not.toContain('lock_lost');
  });

  it('an owner whose lock disappears while its call runs counts lock_lost and still answers', async () => {
    const a = await replica({ lockTtlMs: 300, refreshIntervalMs: 50 });
    const key = newKey();
    const hold = gate();
    const owner = a.merger.run(
      key,
      async () => {
        await hold.opened;
        return answer();
      },
      soon(),
    );
    await locked(key);
    await direct.set(`agw:lock:${key}`, 'a-taker-over', 'PX', 5_000); // taken by someone else
    await expect.poll(() => a.events, EVENT_BOUND).toContain('lock_lost');
    hold.open();
    const result = await owner;
    expect(result.source).toBe('owner');
    expect(result.value.body.equals(BODY)).toBe(true);
    // Not ours any more: the owner's finish leaves the other lock alone.
    expect(await direct.get(`agw:lock:${key}`)).toBe('a-taker-over');
    expect(a.events.filter((e) => e === 'lock_lost')).toHaveLength(1);
  });

  it('takes over from a dead owner once its lock expires', async () => {
    const options = { lockTtlMs: 300 };
    const [a, b, c] = [await replica(options), await replica(options), await replica(options)];
    const key = newKey();
    const hang = gate();
    const dead = vi.fn(async () => {
      await hang.opened;
      return answer();
    });
    const owner = a.merger.run(key, dead, soon());
    await locked(key);
    // The owner's replica loses Redis for good: it can neither refresh nor announce.
    a.shared.client.disconnect();

    const fn = vi.fn(async () => answer());
    // Deadlines far beyond the lock's lifetime: a waiter that failed to take over would time out.
    const waiters = await Promise.all([
      ...Array.from({ length: 5 }, () => b.merger.run(key, fn, soon())),
      ...Array.from({ length: 5 }, () => c.merger.run(key, fn, soon())),
    ]);
    expect(fn).toHaveBeenCalledTimes(1); // one of b and c took over; the other was told
    for (const result of waiters) expect(result.value.body.equals(BODY)).toBe(true);
    expect([...b.events, ...c.events].filter((e) => e === 'takeover')).toHaveLength(1);
    expect([...b.events, ...c.events]).not.toContain('timeout');
    expect(sources(waiters).filter((s) => s === 'remote')).toHaveLength(1);

    hang.open();
    const late = await owner; // the dead owner's own request still gets its answer
    expect(late.source).toBe('owner');
    expect(a.errors).toContain('publish');
  });

  it("a waiter whose deadline comes before a dead owner's lock expires times out at its deadline", async () => {
    const b = await replica();
    const key = newKey();
    // A dead owner's lock that outlives the waiter's deadline.
    await direct.set(`agw:lock:${key}`, 'dead-owner', 'PX', 10_000);
    const fn = vi.fn(async () => answer());
    const { deadline } = soon(300);
    const error = await b.merger.run(key, fn, { deadline }).catch((e: unknown) => e);
    expect(Date.now()).toBeGreaterThanOrEqual(deadline);
    expect(error).toBeInstanceOf(GatewayError);
    expect((error as GatewayError).code).toBe('timeout');
    expect(fn).not.toHaveBeenCalled();
    expect(b.events).toEqual(['timeout']);
    expect(await direct.get(`agw:lock:${key}`)).toBe('dead-owner');
  });

  it('a waiter whose deadline passes gets a timeout GatewayError without waiting for the owner', async () => {
    const [a, b] = [await replica(), await replica()];
    const key = newKey();
    const hang = gate();
    let ownerDone = false;
    const slow = vi.fn(async () => {
      await hang.opened;
      return answer();
    });
    const owner = a.merger.run(key, slow, soon()).finally(() => {
      ownerDone = true;
    });
    await locked(key);
    const { deadline } = soon(300);
    const error = await b.merger.run(key, slow, { deadline }).catch((e: unknown) => e);
    expect(Date.now()).toBeGreaterThanOrEqual(deadline);
    expect(ownerDone).toBe(false); // it did not wait for the owner's (still running) call
    expect(error).toBeInstanceOf(GatewayError);
    expect((error as GatewayError).code).toBe('timeout');
    expect(b.events).toContain('timeout');
    hang.open();
    await owner;
    expect(slow).toHaveBeenCalledTimes(1);
  });

  it.runIf(canControlRedis)('falls back to in-process merging while Redis is down', async () => {
    const [a, b] = [await replica(), await replica()];
    const key = newKey();
    // b waits on a's call when Redis goes away: it stops waiting and calls upstream itself.
    const hang = gate();
    const owner = a.merger.run(
      key,
      async () => {
        await hang.opened;
        return answer();
      },
      soon(),
    );
    await locked(key);
    const bFn = vi.fn(async () => answer());
    const waiting = b.merger.run(key, bFn, soon());
    await subscribed(key);
    await server.stop();
    try {
      const rescued = await waiting;
      expect(bFn).toHaveBeenCalledTimes(1);
      expect(rescued.source).toBe('owner');
      expect(b.events).toContain('fallback');

      // While down, identical requests on one replica still make one call.
      await expect.poll(() => a.shared.isReady(), EVENT_BOUND).toBe(false);
      const held = gate();
      const fn = vi.fn(async () => {
        await held.opened;
        return answer();
      });
      const other = newKey(); // `key` itself is still held by a's hung call
      const runs = Array.from({ length: 10 }, () => a.merger.run(other, fn, soon()));
      await expect.poll(() => a.events.filter((e) => e === 'merged').length, EVENT_BOUND).toBe(9);
      held.open();
      const results = await Promise.all(runs);
      expect(fn).toHaveBeenCalledTimes(1);
      expect(results.filter((r) => r.shared)).toHaveLength(9);
      expect(a.events).toContain('fallback');
    } finally {
      hang.open();
      await owner;
      await server.start();
    }
  });
});
