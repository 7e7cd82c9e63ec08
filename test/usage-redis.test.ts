import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { dayBefore } from '../src/days.ts';
import type { UsageEvent } from '../src/usage/counts.ts';
import { UsageRecorder } from '../src/usage/recorder.ts';
import { RedisUsageStore, usageKey } from '../src/usage/store.ts';
import {
  canControlRedis,
  describeWithRedis,
  startRedis,
  type TestRedis,
  useRedis,
} from './redis-server.ts';

const event = (clientId: string, overrides: Partial<UsageEvent> = {}): UsageEvent => ({
  clientId,
  billed: false,
  cache: undefined,
  limit: undefined,
  ...overrides,
});

describeWithRedis('usage in Redis', () => {
  const db = useRedis('agw:usage:*');

  it('one hash per day, field <client>|<kind>, HINCRBY, no TTL', async () => {
    const store = new RedisUsageStore(db.redis);
    await store.add('2031-05-06', new Map([['alice|requests', 3]]));
    await store.add(
      '2031-05-06',
      new Map([
        ['alice|requests', 2],
        ['bob|cache_hits', 1],
      ]),
    );
    expect(await db.redis.hgetall('agw:usage:2031-05-06')).toEqual({
      'alice|requests': '5',
      'bob|cache_hits': '1',
    });
    expect(await db.redis.ttl('agw:usage:2031-05-06')).toBe(-1);
    expect(await store.read('2031-05-06')).toEqual(
      new Map([
        ['alice|requests', 5],
        ['bob|cache_hits', 1],
      ]),
    );
    expect(await store.read('2031-05-07')).toEqual(new Map());
  });

  it('the writer deletes days before yesterday, once per day per process', async () => {
    const day = '2031-05-06';
    for (const old of [dayBefore(day, 1), dayBefore(day, 2), dayBefore(day, 9)]) {
      await db.redis.hset(usageKey(old), 'alice|requests', '1');
    }
    const store = new RedisUsageStore(db.redis);
    await store.add(day, new Map([['alice|requests', 1]]));
    expect((await db.redis.keys('agw:usage:*')).sort()).toEqual([
      usageKey(dayBefore(day, 1)),
      usageKey(day),
    ]);
    // Once a day: a key that reappears for an old day is left until tomorrow's first write.
    await db.redis.hset(usageKey(dayBefore(day, 2)), 'x|requests', '1');
    await store.add(day, new Map([['alice|requests', 1]]));
    expect(await db.redis.exists(usageKey(dayBefore(day, 2)))).toBe(1);
    await store.add(dayBefore(day, -1), new Map([['alice|requests', 1]]));
    expect(await db.redis.exists(usageKey(dayBefore(day, 2)))).toBe(0);
  });

  it("replicas sharing Redis: either one reports both replicas' counts", async () => {
    const a = new UsageRecorder({ shared: new RedisUsageStore(db.redis), flushIntervalMs: 60_000 });
    const b = new UsageRecorder({ shared: new RedisUsageStore(db.redis), flushIntervalMs: 60_000 });
    a.record(event('alice', { billed: true }));
    b.record(event('alice', { cache: 'hit' }));
    b.record(event('bob', { limit: 'quota' }));
    await Promise.all([a.flush(), b.flush()]);
    const seen = await a.today();
    expect(seen.source).toBe('redis');
    expect(seen.byClient.get('alice')).toMatchObject({
      requests: 2,
      billed_calls: 1,
      cache_hits: 1,
    });
    expect(seen.byClient.get('bob')).toMatchObject({ requests: 1, quota_refused: 1 });
    await Promise.all([a.close(), b.close()]);
  });
});

describeWithRedis('usage while Redis is down', () => {
  let server: TestRedis;
  let redis: Redis;

  beforeAll(async () => {
    server = await startRedis();
  });

  afterAll(async () => {
    redis?.disconnect();
    await server.start().catch(() => {});
    await server.close();
  });

  afterEach(async () => {
    await server.start();
  });

  // Only a redis-server this test started can be stopped.
  it.skipIf(!canControlRedis)(
    'keeps counting locally, reads this replica, and writes the counts once Redis is back',
    async () => {
      redis = new Redis(server.url, {
        maxRetriesPerRequest: 0,
        enableOfflineQueue: false,
        retryStrategy: () => 50,
      });
      redis.on('error', () => {}); // the outage is the point of this test
      await new Promise((resolve) => redis.once('ready', resolve));
      const errors: unknown[] = [];
      const recorder = new UsageRecorder({
        shared: new RedisUsageStore(redis),
        flushIntervalMs: 60_000,
        onError: (error) => errors.push(error),
      });
      await server.stop();
      expect(recorder.record(event('alice'))).toEqual(['requests']);
      await recorder.flush();
      expect(errors.length).toBeGreaterThan(0);
      const local = await recorder.today();
      expect(local.source).toBe('replica');
      expect(local.byClient.get('alice')?.requests).toBe(1);

      await server.start();
      if (redis.status !== 'ready') await new Promise((resolve) => redis.once('ready', resolve));
      recorder.record(event('alice'));
      await recorder.flush();
      const shared = await recorder.today();
      expect(shared.source).toBe('redis');
      expect(shared.byClient.get('alice')?.requests).toBe(2);
      await recorder.close();
    },
  );
});
