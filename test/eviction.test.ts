import { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  completionOf,
  OTHER_CLIENT_KEY,
  postJson,
  startGateway,
  type TestGateway,
  validBody,
} from './helpers.ts';
import { canControlRedis, describeWithRedis, startRedis, type TestRedis } from './redis-server.ts';

/**
 * The compose Valkey evicts `volatile-lru`: only keys with a TTL (cached answers, merge locks) may
 * go. Quota and rate-limit counters carry none, so a flood of cached answers must never reset them.
 */
const MAXMEMORY = '4mb';
/** A cacheable upstream answer of ~40 KB (the fake's `garbage` fault sends any body as a 200). */
const BIG_ANSWER = JSON.stringify({
  solution: { label: 'bus', box: ['360', '276'], padding: 'p'.repeat(40_000) },
  elapsed: 1.2,
});
/** More than enough 40 KB answers to overflow 4 MB several times; the flood stops at the first eviction. */
const FLOOD_LIMIT = 500;

describeWithRedis('quota and rate-limit counters under cache pressure', () => {
  let redis: TestRedis;
  let direct: Redis;
  let g: TestGateway;

  beforeAll(async () => {
    if (!canControlRedis) return;
    redis = await startRedis({
      args: ['--maxmemory', MAXMEMORY, '--maxmemory-policy', 'volatile-lru'],
    });
    direct = new Redis(redis.url);
    g = await startGateway(
      { REDIS_URL: redis.url, RATE_LIMIT_MAX: '100000', UPSTREAM_MAX_RETRIES: '0' },
      { limits: { quota: { upstreamCallsPerDay: 5 }, rateLimit: { max: 8, windowSeconds: 600 } } },
    );
    if (!g.app.redis?.isReady()) {
      await new Promise((resolve) => g.app.redis?.client.once('ready', resolve));
    }
  });
  afterAll(async () => {
    await g?.close();
    direct?.disconnect();
    await redis?.close();
  });

  const evictedKeys = async () =>
    Number(/evicted_keys:(\d+)/.exec(await direct.info('stats'))?.[1] ?? Number.NaN);

  it.runIf(canControlRedis)(
    'a flood of distinct cached answers evicts answers, never the counters',
    { timeout: 60_000 },
    async () => {
      expect(await direct.config('GET', 'maxmemory-policy')).toEqual([
        'maxmemory-policy',
        'volatile-lru',
      ]);
      const day = new Date().toISOString().slice(0, 10);
      const quotaKey = `agw:quota:${day}:checkout-service`;
      const windowKey = 'agw:rl:checkout-service';

      // checkout-service: three billed calls and a cache hit — four requests in its window.
      for (const question of ['one', 'two', 'three', 'one']) {
        expect((await postJson(g, { body: validBody({ question }) })).statusCode).toBe(200);
      }
      expect(await direct.get(quotaKey)).toBe('3');
      expect(await direct.hget(windowKey, 'c')).toBe('4');
      const windowStart = await direct.hget(windowKey, 's');

      // Another client floods distinct requests whose 40 KB answers are all cached.
      g.fake.setDefaultFault({ kind: 'garbage', status: 200, body: BIG_ANSWER });
      let flooded = 0;
      while ((await evictedKeys()) === 0 && flooded < FLOOD_LIMIT) {
        const batch = Array.from({ length: 10 }, (_, i) =>
          postJson(g, {
            key: OTHER_CLIENT_KEY,
            body: validBody({ question: `flood ${flooded + i}` }),
          }),
        );
        for (const res of await Promise.all(batch)) {
          expect(res.statusCode).toBe(200);
          expect(res.headers['cache-status']).toMatch(/stored$/);
        }
        flooded += batch.length;
      }
      g.fake.setDefaultFault(undefined);
      expect(await evictedKeys()).toBeGreaterThan(0);
      // Some answers are gone (evicted), which is what the budget is for: fewer are left than the
      // three of checkout-service and the flood's stored.
      expect((await direct.keys('agw:cache:*')).length).toBeLessThan(3 + flooded);

      // The counters are intact: same values, same window, no TTL.
      expect(await direct.get(quotaKey)).toBe('3');
      expect(await direct.ttl(quotaKey)).toBe(-1);
      expect(await direct.hget(windowKey, 'c')).toBe('4');
      expect(await direct.hget(windowKey, 's')).toBe(windowStart);
      expect(await direct.ttl(windowKey)).toBe(-1);

      // And the gateway still enforces them: two more billed calls reach the quota of 5; every
      // request counts toward the rate limit of 8, so the ninth is refused by it.
      for (const question of ['four', 'five']) {
        expect((await postJson(g, { body: validBody({ question }) })).statusCode).toBe(200);
      }
      for (const question of ['six', 'seven']) {
        const overQuota = await postJson(g, { body: validBody({ question }) });
        expect(overQuota.statusCode).toBe(429);
        expect(completionOf(g, overQuota)?.limit).toBe('quota');
      }
      const overRate = await postJson(g, { body: validBody({ question: 'eight' }) });
      expect(overRate.statusCode).toBe(429);
      expect(completionOf(g, overRate)?.limit).toBe('rate_limit');
      expect(await direct.hget(windowKey, 'c')).toBe('9');
      expect(await direct.get(quotaKey)).toBe('5');
    },
  );
});
