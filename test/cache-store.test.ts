import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { MemoryCacheStore } from '../src/cache/memory-store.ts';
import {
  decodeAnswer,
  encodeAnswer,
  REDIS_CACHE_DEFAULTS,
  RedisCacheStore,
} from '../src/cache/redis-store.ts';
import { type CachedAnswer, type CacheStore, isCacheable } from '../src/cache/store.ts';
import { connectRedis, type SharedRedis } from '../src/redis.ts';
import { EVENT_BOUND, within } from './helpers.ts';
import { canControlRedis, describeWithRedis, startRedis, type TestRedis } from './redis-server.ts';

const silentLog = { info: () => {}, warn: () => {}, error: () => {} };

const answer = (text = '{"solution":{"label":"bus","box":["1","2"]},"elapsed":31.6}') => ({
  status: 200,
  body: Buffer.from(text),
});
/** Bytes that are not valid UTF-8 (and a NUL): a lossy string round trip would mangle them. */
const BINARY = Buffer.from([0x00, 0xff, 0xfe, 0x80, 0xc3, 0x28, 0x7b, 0x0a, 0xe2, 0x82]);

let counter = 0;
const freshKey = () => `k${++counter}-${Date.now()}`;

/** The behaviour every store shares. */
function storeContract(make: () => CacheStore) {
  it('misses on an unknown key', async () => {
    expect(await make().get(freshKey())).toBeUndefined();
  });

  it('returns the exact bytes and status it stored', async () => {
    const store = make();
    const key = freshKey();
    await store.set(key, answer(), 60);
    const got = await store.get(key);
    expect(got?.status).toBe(200);
    expect(got?.body.equals(answer().body)).toBe(true);
  });

  it('is binary-safe (non-UTF-8 bytes, other statuses)', async () => {
    const store = make();
    const key = freshKey();
    await store.set(key, { status: 201, body: BINARY }, 60);
    const got = await store.get(key);
    expect(got?.status).toBe(201);
    expect(Buffer.compare(got?.body ?? Buffer.alloc(0), BINARY)).toBe(0);
  });

  it('keeps keys apart and overwrites on set', async () => {
    const store = make();
    const [a, b] = [freshKey(), freshKey()];
    await store.set(a, answer('"a1"'), 60);
    await store.set(b, answer('"b"'), 60);
    await store.set(a, answer('"a2"'), 60);
    expect((await store.get(a))?.body.toString()).toBe('"a2"');
    expect((await store.get(b))?.body.toString()).toBe('"b"');
  });

  it('stores nothing with a TTL of 0', async () => {
    const store = make();
    const key = freshKey();
    await store.set(key, answer(), 0);
    expect(await store.get(key)).toBeUndefined();
  });
}

describe('MemoryCacheStore', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  const memory = (maxEntries = 100, maxBytes = 1024 * 1024) =>
    new MemoryCacheStore({ maxEntries, maxBytes });

  storeContract(() => memory());

  it('expires an entry after its TTL (fake Date: the store reads Date.now)', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const store = memory(10);
    await store.set('a', answer(), 60);
    await store.set('b', answer(), 120);
    vi.advanceTimersByTime(59_000);
    expect(await store.get('a')).toBeDefined();
    vi.advanceTimersByTime(1_001);
    expect(await store.get('a')).toBeUndefined();
    expect(await store.get('b')).toBeDefined();
    vi.advanceTimersByTime(60_000);
    expect(await store.get('b')).toBeUndefined();
  });

  it('evicts the least recently used entry beyond CACHE_MAX_ENTRIES', async () => {
    const store = memory(3);
    for (const key of ['a', 'b', 'c']) await store.set(key, answer(key), 60);
    await store.get('a'); // now b is the oldest
    await store.set('d', answer('d'), 60);
    expect(store.size).toBe(3);
    expect(await store.get('b')).toBeUndefined();
    for (const key of ['a', 'c', 'd']) expect((await store.get(key))?.body.toString()).toBe(key);
  });

  it('evicts the least recently used answers beyond CACHE_MAX_BYTES (bodies plus keys)', async () => {
    // Each entry: a 1-byte key and a 400-byte body = 401 bytes; 1,024 bytes hold two of them.
    const store = memory(100, 1024);
    const body = (c: string) => ({ status: 200, body: Buffer.alloc(400, c) });
    for (const key of ['a', 'b']) await store.set(key, body(key), 60);
    await store.get('a'); // now b is the oldest
    await store.set('c', body('c'), 60);
    expect(store.size).toBe(2);
    expect(await store.get('b')).toBeUndefined();
    expect((await store.get('a'))?.body.equals(body('a').body)).toBe(true);
    expect((await store.get('c'))?.body.equals(body('c').body)).toBe(true);
    // An answer bigger than the whole budget is not kept at all (and evicts nothing).
    await store.set('huge', { status: 200, body: Buffer.alloc(2_000) }, 60);
    expect(await store.get('huge')).toBeUndefined();
    expect(store.size).toBe(2);
  });
});

describe('isCacheable', () => {
  const solution = { solution: { label: 'bus', box: [1, 2] }, elapsed: 1 };
  it.each([
    [200, solution, true],
    [200, { solution: { confidences: 0.6 } }, true],
    [201, solution, false],
    [201, { task_id: 't', trace_id: 'x' }, false],
    [200, { task_id: 't' }, false],
    [200, { token: 'P1_x' }, false],
    [200, { solution: null }, false],
    [200, { solution: 'x' }, false],
    [400, { success: false, error: { code: 'bad_request', message: 'x' } }, false],
    [504, { code: 'timeout' }, false],
    [200, null, false],
  ])('status %i %j → %s', (status, json, expected) => {
    expect(isCacheable(status, json)).toBe(expected);
  });
});

describe('Redis value format', () => {
  it('round-trips status and bytes; foreign values read as a miss', () => {
    const encoded = encodeAnswer({ status: 200, body: BINARY });
    const decoded = decodeAnswer(encoded);
    expect(decoded?.status).toBe(200);
    expect(decoded?.body.equals(BINARY)).toBe(true);
    expect(decodeAnswer(Buffer.from('{"solution":{}}'))).toBeUndefined();
    expect(decodeAnswer(Buffer.alloc(2))).toBeUndefined();
  });
});

describeWithRedis('RedisCacheStore', () => {
  let server: TestRedis;
  let shared: SharedRedis;
  let direct: Redis;
  const errors: Array<{ op: string; error: unknown }> = [];
  const make = () =>
    new RedisCacheStore(shared.client, { onError: (error, op) => errors.push({ op, error }) });

  beforeAll(async () => {
    server = await startRedis();
    shared = connectRedis(server.url, silentLog);
    direct = new Redis(server.url);
    direct.on('error', () => {}); // outage tests stop the server under it
    if (!shared.isReady()) await new Promise((resolve) => shared.client.once('ready', resolve));
  });
  afterAll(async () => {
    await shared?.close();
    direct?.disconnect();
    await server?.close();
  });

  storeContract(make);

  it('writes under the prefix with an expiry (EX), 4-byte header then the body', async () => {
    const key = freshKey();
    await make().set(key, { status: 200, body: BINARY }, 1);
    const raw = await direct.getBuffer(`agw:cache:${key}`);
    expect(raw?.subarray(4).equals(BINARY)).toBe(true);
    const pttl = await direct.pttl(`agw:cache:${key}`);
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(1_000);
  });

  it('reads an expired entry as a miss (Redis expires it; no waiting for a real TTL)', async () => {
    const store = make();
    const key = freshKey();
    await store.set(key, answer(), 60);
    expect(await store.get(key)).toBeDefined();
    await direct.pexpire(`agw:cache:${key}`, 1);
    await expect.poll(() => store.get(key), EVENT_BOUND).toBeUndefined();
  });

  it('honours a custom prefix and reads a foreign value as a miss', async () => {
    const store = new RedisCacheStore(shared.client, { prefix: 'other:' });
    const key = freshKey();
    await store.set(key, answer(), 60);
    expect(await direct.exists(`other:${key}`)).toBe(1);
    const foreign = freshKey();
    await direct.set(`other:${foreign}`, 'not ours');
    expect(await store.get(foreign)).toBeUndefined();
  });

  it.runIf(canControlRedis)('survives an outage: get misses fast, set does not throw', async () => {
    const store = make();
    const key = freshKey();
    await store.set(key, answer(), 60);
    errors.length = 0;
    await server.stop();
    try {
      await expect.poll(() => shared.isReady(), EVENT_BOUND).toBe(false);
      // Bounded by the store's own command bound, never a hang (twice it, as a bound on waiting).
      const bound = REDIS_CACHE_DEFAULTS.timeoutMs * 2;
      const got: CachedAnswer | undefined = await within(store.get(key), bound, 'a miss');
      expect(got).toBeUndefined();
      await expect(
        within(store.set(freshKey(), answer(), 60), bound, 'a dropped write'),
      ).resolves.toBeUndefined();
      expect(errors.map((e) => e.op)).toEqual(['get', 'set']);
    } finally {
      await server.start();
    }
    await expect.poll(() => shared.isReady(), { timeout: 4_000 }).toBe(true);
  });

  it('bounds a command that never answers (timeoutMs), as a miss', async () => {
    const stuck = new Redis(server.url, { enableOfflineQueue: true, lazyConnect: true });
    const store = new RedisCacheStore(stuck, { timeoutMs: 100 }); // never connected: queued forever
    const errorsBefore = errors.length;
    expect(await within(store.get('k'), 5_000, 'the bounded miss')).toBeUndefined();
    expect(errors.length).toBe(errorsBefore); // this store has no onError: nothing reported here
    stuck.disconnect();
  });
});
