import { expect, it } from 'vitest';
import { RedisTaskOwners } from '../src/tasks/owners.ts';
import { describeWithRedis, useRedis } from './redis-server.ts';

const DAY = 86_400_000;
const at = (iso: string) => Date.parse(iso);

describeWithRedis('task owners in Redis', () => {
  const db = useRedis('agw:tasks:*');

  it('one hash per UTC day, no TTL; an owner is found the next day, not the day after', async () => {
    const owners = new RedisTaskOwners(db.redis);
    const recorded = at('2031-05-06T23:59:00Z');
    await owners.record('task-1', 'alice', recorded);
    expect(await db.redis.hgetall('agw:tasks:2031-05-06')).toEqual({ 'task-1': 'alice' });
    expect(await db.redis.ttl('agw:tasks:2031-05-06')).toBe(-1);

    expect(await owners.ownerOf('task-1', recorded)).toBe('alice');
    expect(await owners.ownerOf('task-1', recorded + DAY)).toBe('alice');
    expect(await owners.ownerOf('task-1', recorded + 2 * DAY)).toBeUndefined();
    expect(await owners.ownerOf('task-2', recorded)).toBeUndefined();
  });

  it('a write deletes the hashes of two to eight days ago and keeps yesterday', async () => {
    const owners = new RedisTaskOwners(db.redis);
    const now = at('2031-05-20T12:00:00Z');
    for (let daysAgo = 1; daysAgo <= 9; daysAgo++) {
      await db.redis.hset(
        `agw:tasks:${new Date(now - daysAgo * DAY).toISOString().slice(0, 10)}`,
        'old',
        'bob',
      );
    }
    await owners.record('task-new', 'alice', now);
    expect((await db.redis.keys('agw:tasks:*')).sort()).toEqual([
      'agw:tasks:2031-05-11', // nine days ago: beyond the sweep
      'agw:tasks:2031-05-19', // yesterday: still read
      'agw:tasks:2031-05-20',
    ]);
  });
});
