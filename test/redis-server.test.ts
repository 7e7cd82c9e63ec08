import { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { connectRedis } from '../src/redis.ts';
import { canControlRedis, describeWithRedis, startRedis, type TestRedis } from './redis-server.ts';

describeWithRedis('shared redis connection', () => {
  let redis: TestRedis;
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    await redis.close();
  });

  it('connects and answers commands', async () => {
    const direct = new Redis(redis.url);
    expect(await direct.ping()).toBe('PONG');
    direct.disconnect();
  });

  it.runIf(canControlRedis)(
    'fails fast while Redis is down, logs loss and recovery once each',
    async () => {
      const lines: Array<{ msg: string }> = [];
      const log = {
        info: (o: object, msg: string) => lines.push({ ...o, msg }),
        warn: (o: object, msg: string) => lines.push({ ...o, msg }),
        error: (o: object, msg: string) => lines.push({ ...o, msg }),
      };
      const shared = connectRedis(redis.url, log);
      try {
        await expect.poll(() => shared.isReady()).toBe(true);
        await redis.stop();
        await expect.poll(() => shared.isReady()).toBe(false);
        const started = performance.now();
        await expect(shared.client.get('k')).rejects.toThrow();
        expect(performance.now() - started).toBeLessThan(1_000);
        await redis.start();
        await expect.poll(() => shared.isReady(), { timeout: 5_000 }).toBe(true);
        expect(await shared.client.set('k', 'v')).toBe('OK');
        expect(lines.map((l) => l.msg)).toEqual([
          'redis connection lost; falling back until it recovers',
          'redis connection recovered',
        ]);
      } finally {
        await shared.close();
      }
    },
  );
});
