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
import { canControlRedis, describeWithRedis, startRedis, type TestRedis } from './redis-server.ts';

const silentLog = { info: () => {}, warn: () => {}, error: () => {} };
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

async function until(condition: () => boolean | Promise<boolean>, timeoutMs = 3_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(10);
  }
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
    await until(() => merger.isReady());
    return { shared, merger, events, errors };
  }

  const soon = (ms = 3_000) => ({ deadline: Date.now() + ms });

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
    const fn = vi.fn(async () => {
      await sleep(200);
      return answer();
    });
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? a : b).merger.run(key, fn, soon())),
    );
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
  });

  it("shares the owner's failure with every replica and caches nothing", async () => {
    const [a, b] = [await replica(), await replica()];
    const key = newKey();
    const failing = vi.fn(async () => {
      await sleep(150);
      throw new GatewayError('upstream_unavailable', 'upstream circuit is open', {
        headers: { 'retry-after': '7' },
      });
    });
    const settled = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? a : b).merger.run(key, failing, soon())),
    );
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
    const fn = vi.fn(async () => {
      await sleep(150);
      throw bug;
    });
    const [own, remote] = await Promise.allSettled([
      a.merger.run(key, fn, soon()),
      sleep(30).then(() => b.merger.run(key, fn, soon())),
    ]);
    expect((own as PromiseRejectedResult).reason).toBe(bug); // the owner logs the real error
    const error = (remote as PromiseRejectedResult).reason as GatewayError;
    expect(error).toBeInstanceOf(GatewayError);
    expect(error.code).toBe('api_error');
    expect(error.message).not.toContain('undefined');
    expect(fn).toHaveBeenCalledTimes(1);
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
    const [a, b] = [await replica({ lockTtlMs: 300 }), await replica({ lockTtlMs: 300 })];
    const key = newKey();
    const fn = vi.fn(async () => {
      await sleep(900);
      return answer();
    });
    const first = a.merger.run(key, fn, soon());
    await until(async () => (await direct.exists(`agw:lock:${key}`)) === 1);
    const results = await Promise.all([first, b.merger.run(key, fn, soon())]);
    expect(fn).toHaveBeenCalledTimes(1);
    expect(sources(results)).toEqual(['owner', 'remote']);
    expect(b.events).not.toContain('takeover');
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
    await until(async () => (await direct.exists(`agw:lock:${key}`)) === 1);
    // The owner's replica loses Redis for good: it can neither refresh nor announce.
    a.shared.client.disconnect();

    const started = Date.now();
    const fn = vi.fn(async () => {
      await sleep(50);
      return answer();
    });
    const waiters = await Promise.all([
      ...Array.from({ length: 5 }, () => b.merger.run(key, fn, soon(2_500))),
      ...Array.from({ length: 5 }, () => c.merger.run(key, fn, soon(2_500))),
    ]);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(fn).toHaveBeenCalledTimes(1); // one of b and c took over; the other was told
    for (const result of waiters) expect(result.value.body.equals(BODY)).toBe(true);
    expect([...b.events, ...c.events].filter((e) => e === 'takeover')).toHaveLength(1);
    expect(sources(waiters).filter((s) => s === 'remote')).toHaveLength(1);

    hang.open();
    const late = await owner; // the dead owner's own request still gets its answer
    expect(late.source).toBe('owner');
    expect(a.errors).toContain('publish');
  });

  it('a waiter whose deadline passes gets a timeout GatewayError', async () => {
    const [a, b] = [await replica(), await replica()];
    const key = newKey();
    const hang = gate();
    const slow = vi.fn(async () => {
      await hang.opened;
      return answer();
    });
    const owner = a.merger.run(key, slow, soon());
    await until(async () => (await direct.exists(`agw:lock:${key}`)) === 1);
    const started = Date.now();
    const error = await b.merger.run(key, slow, soon(300)).catch((e: unknown) => e);
    const waited = Date.now() - started;
    expect(error).toBeInstanceOf(GatewayError);
    expect((error as GatewayError).code).toBe('timeout');
    expect(waited).toBeGreaterThanOrEqual(280);
    expect(waited).toBeLessThan(1_000);
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
    await until(async () => (await direct.exists(`agw:lock:${key}`)) === 1);
    const bFn = vi.fn(async () => answer());
    const waiting = b.merger.run(key, bFn, soon(5_000));
    await sleep(80);
    await server.stop();
    try {
      const rescued = await waiting;
      expect(bFn).toHaveBeenCalledTimes(1);
      expect(rescued.source).toBe('owner');
      expect(b.events).toContain('fallback');

      // While down, identical requests on one replica still make one call.
      await until(() => !a.shared.isReady());
      const fn = vi.fn(async () => {
        await sleep(30);
        return answer();
      });
      const other = newKey(); // `key` itself is still held by a's hung call
      const started = Date.now();
      const results = await Promise.all(
        Array.from({ length: 10 }, () => a.merger.run(other, fn, soon())),
      );
      expect(Date.now() - started).toBeLessThan(1_000);
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
