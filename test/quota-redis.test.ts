import { expect, it } from 'vitest';
import { DailyQuota, RedisQuotaCounter } from '../src/limits/quota.ts';
import { describeWithRedis, useRedis } from './redis-server.ts';

describeWithRedis('daily quota counters in Redis', () => {
  const db = useRedis('agw:quota:*');

  it('a reservation counts today without a TTL and deletes two to eight days ago, not yesterday', async () => {
    const quota = new DailyQuota({
      shared: new RedisQuotaCounter(db.redis),
      onStoreError: 'deny',
    });
    for (let day = 11; day <= 19; day++) {
      await db.redis.set(`agw:quota:2031-05-${day}:alice`, '3');
    }
    await db.redis.set('agw:quota:2031-05-15:bob', '3');

    await quota.reserve('alice', 10, new Date('2031-05-20T12:00:00Z'));

    expect(await db.redis.get('agw:quota:2031-05-20:alice')).toBe('1');
    expect(await db.redis.ttl('agw:quota:2031-05-20:alice')).toBe(-1);
    expect((await db.redis.keys('agw:quota:*')).sort()).toEqual([
      'agw:quota:2031-05-11:alice', // nine days ago: beyond the sweep
      'agw:quota:2031-05-15:bob', // another client's keys are its own to sweep
      'agw:quota:2031-05-19:alice', // yesterday: kept (clock skew around midnight)
      'agw:quota:2031-05-20:alice',
    ]);
  });
});
