import { afterAll, afterEach, beforeAll, expect } from 'vitest';
import { type FakeUpstream, startFakeUpstream } from '../dev/fake-upstream.ts';
import { EVENT_BOUND, type GatewayOptions, startGateway, type TestGateway } from './helpers.ts';
import { canControlRedis, startRedis, type TestRedis } from './redis-server.ts';

/** What /readyz says about a replica: ready, degraded or not_ready. */
export async function readiness(g: TestGateway): Promise<string> {
  return (await g.app.inject({ method: 'GET', url: '/readyz' })).json().status;
}

/**
 * Gateway replicas for one suite: each its own app, all sharing one Redis and one fake upstream.
 * Registers the suite's hooks; call it inside `describeWithRedis`.
 */
export function replicasSharingRedis() {
  let redis: TestRedis;
  let fake: FakeUpstream;
  let replicas: TestGateway[] = [];

  beforeAll(async () => {
    redis = await startRedis();
    fake = await startFakeUpstream();
  });
  afterAll(async () => {
    await fake.close();
    await redis.close();
  });
  afterEach(async () => {
    await Promise.all(replicas.map((g) => g.close()));
    replicas = [];
    fake.reset();
    if (canControlRedis) await redis.start();
  });

  return {
    get redis() {
      return redis;
    },
    get fake() {
      return fake;
    },
    /**
     * Starts a replica and waits until it is ready: its Redis connection and the merger's
     * subscriber both up (a merge tried before would fall back to this replica alone).
     */
    async replica(env: Record<string, string> = {}, limits?: GatewayOptions['limits']) {
      const g = await startGateway({ REDIS_URL: redis.url, ...env }, { fake, limits });
      replicas.push(g);
      await expect.poll(() => readiness(g), EVENT_BOUND).toBe('ready');
      return g;
    },
    /** Empties Redis, so a test starts with no cached answers, windows or quotas. */
    async flush() {
      const direct = replicas[0]?.app.redis?.client;
      if (!direct) throw new Error('start a replica before flushing');
      await direct.flushall();
    },
  };
}
