// Redis loss: two gateway replicas share one Redis under steady traffic; 10 s into a 30 s run
// Redis is killed (SIGKILL, no persistence), and 5 s later started again, empty. Every request
// must still get a 200 within the bound, /readyz must report `redis` during the outage and
// recover by itself, and afterwards the cache and the rate limits must be shared through Redis
// again, in the same processes (no restart).
import { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { type FakeUpstream, startFakeUpstream } from '../../dev/fake-upstream.ts';
import {
  authHeaders,
  CLIENT_KEY,
  OTHER_CLIENT_KEY,
  startGateway,
  type TestGateway,
  UPSTREAM_TOKEN,
} from '../helpers.ts';
import { describeWithRedis, startRedis, type TestRedis } from '../redis-server.ts';
import {
  budget,
  drainLogs,
  IMAGE_KINDS,
  makeImage,
  percentile,
  pick,
  RECOGNITION,
  report,
  SecretScanner,
  scrapeMetrics,
  seededRandom,
  sleep,
} from './support.ts';

const RUN_MS = 30_000;
const STOP_AT_MS = 10_000;
const OUTAGE_MS = 5_000;
const WORKERS = 8;
const UPSTREAM_LATENCY_MS = 50;
/** Every answer, during the outage included, within this bound (upstream latency 50 ms). */
const ANSWER_BOUND_MS = 3_000;
const SEED = 5_150;
/** checkout-service's limit, checked through Redis after the recovery. */
const LIMIT = { max: 5, windowSeconds: 60 };

let redis: TestRedis;
let fake: FakeUpstream;
let replicas: [TestGateway, TestGateway];
let probe: Redis;
const scanner = new SecretScanner();

describeWithRedis('redis loss', () => {
  beforeAll(async () => {
    redis = await startRedis();
    fake = await startFakeUpstream({ latencyMs: UPSTREAM_LATENCY_MS });
    const env = {
      REDIS_URL: redis.url,
      RATE_LIMIT_MAX: '100000000',
      UPSTREAM_RATE_PER_SECOND: '100000',
      UPSTREAM_TIMEOUT_MS: '10000',
    };
    replicas = [
      await startGateway(env, { fake, limits: { rateLimit: LIMIT } }),
      await startGateway(env, { fake, limits: { rateLimit: LIMIT } }),
    ];
    const deadline = Date.now() + 5_000;
    while (!replicas.every((g) => g.app.redis?.isReady()) && Date.now() < deadline) await sleep(20);
    probe = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
    // The probe loses its connection too; its reconnect attempts are expected, not news.
    probe.on('error', () => {});
    await probe.connect();
    await probe.flushall();
    scanner.addSecret(UPSTREAM_TOKEN, 'the upstream token');
    scanner.addSecret(CLIENT_KEY, 'a client key');
    scanner.addSecret(OTHER_CLIENT_KEY, 'a client key');
  });

  afterAll(async () => {
    probe?.disconnect();
    await Promise.all((replicas ?? []).map((g) => g.close()));
    await fake?.close();
    await redis?.close();
  });

  it(
    'keeps answering through a 5 s outage, reports it on /readyz, and resumes sharing after',
    async () => {
      const random = seededRandom(SEED);
      const images = Array.from({ length: 16 }, () => {
        const image = makeImage(random, pick(random, IMAGE_KINDS), 300).toString('base64');
        scanner.addImage(image);
        return image;
      });
      const phases = { before: [] as number[], outage: [] as number[], after: [] as number[] };
      const statuses: Record<string, number> = {};
      const slow: string[] = [];
      const recent: string[] = [];
      let redisDownAt = 0;
      let restartBeganAt = 0;
      let redisUpAt = 0;
      const started = performance.now();
      const phase = (at: number) =>
        redisDownAt === 0 || at < redisDownAt
          ? 'before'
          : redisUpAt === 0 || at < redisUpAt
            ? 'outage'
            : 'after';

      async function send(replica: TestGateway, body: string) {
        const sentAt = performance.now();
        const res = await replica.app.inject({
          method: 'POST',
          url: RECOGNITION,
          headers: authHeaders(OTHER_CLIENT_KEY),
          payload: body,
        });
        const took = performance.now() - sentAt;
        phases[phase(sentAt)].push(took);
        statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1;
        if (res.statusCode !== 200) scanner.scan('error body', res.body);
        if (took > ANSWER_BOUND_MS && slow.length < 10) {
          slow.push(`${Math.round(took)} ms at ${Math.round(sentAt - started)} ms`);
        }
        return res;
      }

      async function worker(w: number, end: number) {
        const rnd = seededRandom(SEED + w);
        for (let n = 0; performance.now() < end; n++) {
          const roll = rnd();
          const body =
            roll < 0.3 && recent.length > 0
              ? pick(rnd, recent)
              : JSON.stringify({ question: `redis loss ${w} ${n}`, queries: [pick(rnd, images)] });
          if (roll > 0.8) {
            // Identical requests on both replicas at once: merged through Redis when it is up.
            await Promise.all([0, 1, 2, 3].map((i) => send(replicas[(i % 2) as 0 | 1], body)));
          } else {
            const res = await send(replicas[(n % 2) as 0 | 1], body);
            if (res.statusCode === 200 && recent.length < 100) recent.push(body);
          }
        }
      }

      const readiness: Array<{ at: number; ready: boolean; redis: boolean }> = [];
      let polling = true;
      const poller = (async () => {
        while (polling) {
          for (const g of replicas) {
            const res = await g.app.inject({ method: 'GET', url: '/readyz' });
            const failed = (res.json() as { failed: Record<string, string> }).failed;
            readiness.push({
              at: performance.now() - started,
              ready: res.statusCode === 200,
              redis: 'redis' in failed,
            });
          }
          await sleep(200);
        }
      })();

      const outage = (async () => {
        await sleep(STOP_AT_MS);
        redisDownAt = performance.now();
        await redis.stop();
        await sleep(OUTAGE_MS);
        restartBeganAt = performance.now();
        await redis.start();
        redisUpAt = performance.now();
      })();

      const end = started + RUN_MS;
      await Promise.all([...Array.from({ length: WORKERS }, (_, w) => worker(w, end)), outage]);
      // Both replicas reconnect by themselves.
      await expect
        .poll(() => replicas.every((g) => g.app.redis?.isReady()), { timeout: 10_000 })
        .toBe(true);
      polling = false;
      await poller;

      // After the recovery: an answer one replica stores is a hit on the other, through Redis.
      await probe.connect().catch(() => {});
      await expect.poll(() => probe.status, { timeout: 5_000 }).toBe('ready');
      const cachedBefore = (await probe.keys('agw:cache:*')).length;
      const fresh = JSON.stringify({ question: 'after the recovery', queries: [images[0]] });
      const stored = await send(replicas[0], fresh);
      const repeat = await send(replicas[1], fresh);
      const cachedAfter = (await probe.keys('agw:cache:*')).length;

      // And checkout-service's limit (5 per minute) is one counter in Redis across both replicas.
      await probe.del('agw:rl:checkout-service');
      const limited = [];
      for (let i = 0; i < LIMIT.max + 1; i++) {
        const res = await replicas[(i % 2) as 0 | 1].app.inject({
          method: 'POST',
          url: RECOGNITION,
          headers: authHeaders(CLIENT_KEY),
          payload: JSON.stringify({ question: `limited ${i}`, queries: [images[1]] }),
        });
        limited.push(res.statusCode);
      }
      const counter = await probe.get('agw:rl:checkout-service');
      const counterTtl = await probe.pttl('agw:rl:checkout-service');

      const connectionLines = { lost: 0, recovered: 0, errorLevel: 0 };
      for (const [i, g] of replicas.entries()) {
        scanner.scan(`replica ${i} /metrics`, (await scrapeMetrics(g.app)).text);
        drainLogs(g, scanner, `replica ${i} log`, (line) => {
          const msg = String(line.msg);
          if (msg.startsWith('redis connection lost')) connectionLines.lost++;
          if (msg === 'redis connection recovered') connectionLines.recovered++;
          if (typeof line.level === 'number' && line.level >= 50) connectionLines.errorLevel++;
        });
      }

      const downAt = redisDownAt - started;
      const upAt = redisUpAt - started;
      const notReadyDuringOutage = readiness.filter((r) => r.at > downAt + 1_500 && r.at < upAt);
      // Recovery: from the restart to the first poll after which every poll is ready.
      const restartAt = restartBeganAt - started;
      const lastNotReady = Math.max(0, ...readiness.filter((r) => !r.ready).map((r) => r.at));
      const readyAgain = readiness.find((r) => r.at > lastNotReady)?.at ?? Number.NaN;
      const stats = (xs: number[]) => {
        const sorted = [...xs].sort((a, b) => a - b);
        return {
          requests: xs.length,
          p50_ms: Math.round(percentile(sorted, 50)),
          p99_ms: Math.round(percentile(sorted, 99)),
          max_ms: Math.round(sorted[sorted.length - 1] ?? 0),
        };
      };
      report('redis-loss', {
        run_s: RUN_MS / 1000,
        redis_killed_at_s: Math.round(downAt / 100) / 10,
        redis_restarted_at_s: Math.round(restartAt / 100) / 10,
        replicas: 2,
        workers: WORKERS,
        upstream_latency_ms: UPSTREAM_LATENCY_MS,
        statuses,
        before: stats(phases.before),
        outage: stats(phases.outage),
        after: stats(phases.after),
        answers_over_bound: slow.length,
        readyz: {
          polls: readiness.length,
          redis_failed_polls: readiness.filter((r) => r.redis).length,
          ready_again_after_restart_ms: Math.round(readyAgain - restartAt),
        },
        after_recovery: {
          cache_keys: [cachedBefore, cachedAfter],
          repeat_on_other_replica: repeat.headers['cache-status'],
          limited_client_statuses: limited,
          redis_window_counter: counter,
          redis_window_ttl_ms: counterTtl,
        },
        log_lines: connectionLines,
      });
      report('secrets', { source: 'redis-loss', ...scanner.summary() });

      expect(slow).toEqual([]);
      expect(Object.keys(statuses)).toEqual(['200']);
      expect(phases.outage.length).toBeGreaterThan(100);
      expect(phases.after.length).toBeGreaterThan(100);
      // /readyz: every poll well inside the outage says redis failed; all ready at the end.
      expect(notReadyDuringOutage.length).toBeGreaterThan(0);
      expect(notReadyDuringOutage.every((r) => !r.ready && r.redis)).toBe(true);
      expect(readiness.slice(-2).every((r) => r.ready)).toBe(true);
      // Cache: stored through Redis by one replica, a hit on the other.
      expect(stored.headers['cache-status']).toBe('acedata-gateway; fwd=uri-miss; stored');
      expect(repeat.headers['cache-status']).toBe('acedata-gateway; hit');
      expect(cachedAfter).toBe(cachedBefore + 1);
      // Limits: one Redis counter across both replicas (per replica, each would admit 5).
      expect(limited).toEqual([...Array(LIMIT.max).fill(200), 429]);
      expect(counter).toBe(String(LIMIT.max + 1));
      expect(counterTtl).toBeGreaterThan(0);
      // Each replica logs the loss and the recovery once (at warn and info), never at error.
      expect(connectionLines.lost).toBe(2);
      expect(connectionLines.recovered).toBe(2);
      expect(connectionLines.errorLevel).toBe(0);
      expect(scanner.hits).toEqual([]);
    },
    budget(RUN_MS + 60_000),
  );
});
