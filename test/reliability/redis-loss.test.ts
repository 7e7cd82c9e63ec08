// Redis loss: two gateway replicas share one Redis under steady traffic. After 800 answers Redis
// is killed (SIGKILL, no persistence); once both replicas have seen the connection drop and 300
// more answers were given, it is started again, empty; once both have reconnected, 800 more.
// Every request must still get a 200 (RATE_LIMIT_ON_STORE_ERROR=allow), /readyz must report the
// outage as degraded with 200 and recover by itself, and afterwards the cache, the rate limit and
// task ownership must be shared through Redis again, in the same processes (no restart), with
// every counter key free of a TTL. Phases end on events and answer counts, not on a clock.
import type { EventEmitter } from 'node:events';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { type FakeUpstream, startFakeUpstream } from '../../dev/fake-upstream.ts';
import {
  CLIENT_KEY,
  OTHER_CLIENT_KEY,
  postJson,
  startGateway,
  TASKS,
  type TestGateway,
  UPSTREAM_TOKEN,
  within,
} from '../helpers.ts';
import { describeWithRedis, startRedis, type TestRedis } from '../redis-server.ts';
import {
  adminMetrics,
  budget,
  drainLogs,
  IMAGE_KINDS,
  Milestones,
  makeImage,
  percentile,
  pick,
  report,
  SecretScanner,
  seededRandom,
} from './support.ts';

/** Answers before the kill, during the outage (after both replicas saw it), after recovery. */
const ANSWERS = { before: 800, outage: 300, after: 800 };
const WORKERS = 8;
const UPSTREAM_LATENCY_MS = 50;
/**
 * Every answer, during the outage included, within this. Redis commands fail fast while it is
 * down (no offline queue, 500 ms command timeout, 1 s bound on a cache read), so an outage costs
 * a request milliseconds; the bound is far above that, so a busy machine does not trip it.
 */
const ANSWER_BOUND_MS = 5_000;
/** How long the run may wait for one event (a connection dropping, a reconnect): a bound only. */
const EVENT_BOUND_MS = 30_000;
const SEED = 5_150;
/** Every this many answers, both replicas' /readyz are read. */
const READYZ_EVERY = 25;
/** checkout-service's limit, checked through Redis after the recovery. */
const LIMIT = { max: 5, windowSeconds: 60 };

let redis: TestRedis;
let fake: FakeUpstream;
let replicas: [TestGateway, TestGateway];
let probe: Redis;
const scanner = new SecretScanner();

/** The next `name` event; unlike events.once, an 'error' event (a refused reconnect) is no reason to give up. */
const next = (emitter: EventEmitter, name: string) =>
  new Promise<void>((resolve) => emitter.once(name, () => resolve()));

/** Resolves when the replica's Redis connection is ready (at once if it is). */
function connected(g: TestGateway): Promise<void> {
  const shared = g.app.redis;
  if (!shared) throw new Error('the replica has no Redis');
  return shared.isReady() ? Promise.resolve() : next(shared.client, 'ready');
}

describeWithRedis('redis loss', () => {
  beforeAll(async () => {
    redis = await startRedis();
    fake = await startFakeUpstream({ latencyMs: UPSTREAM_LATENCY_MS });
    const env = {
      REDIS_URL: redis.url,
      RATE_LIMIT_MAX: '100000000',
      RATE_LIMIT_ON_STORE_ERROR: 'allow',
      UPSTREAM_RATE_PER_SECOND: '100000',
      UPSTREAM_TIMEOUT_MS: '10000',
    };
    replicas = [
      await startGateway(env, { fake, limits: { rateLimit: LIMIT } }),
      await startGateway(env, { fake, limits: { rateLimit: LIMIT } }),
    ];
    await within(Promise.all(replicas.map(connected)), EVENT_BOUND_MS, 'replicas on Redis');
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
    'keeps answering through an outage, reports it as degraded on /readyz, and shares again after',
    async () => {
      const random = seededRandom(SEED);
      const images = Array.from({ length: 16 }, () => {
        const image = makeImage(random, pick(random, IMAGE_KINDS), 300).toString('base64');
        scanner.addImage(image);
        return image;
      });
      type Phase = 'before' | 'outage' | 'recovering' | 'after';
      let phase: Phase = 'before';
      let done = false;
      const latencies: Record<Phase, number[]> = {
        before: [],
        outage: [],
        recovering: [],
        after: [],
      };
      const statuses: Record<string, number> = {};
      const slow: string[] = [];
      const recent: Array<Record<string, unknown>> = [];
      const answers = new Milestones();
      const started = performance.now();
      const startedEpoch = Date.now();
      const at = () => Math.round(performance.now() - started);

      const readiness: Array<{ phase: Phase; status: number; body: string; checks: string[] }> = [];
      async function pollReadiness() {
        for (const g of replicas) {
          const pollPhase = phase;
          const res = await g.app.inject({ method: 'GET', url: '/readyz' });
          const body = res.json() as { status: string; checks: Record<string, unknown> };
          readiness.push({
            phase: pollPhase,
            status: res.statusCode,
            body: body.status,
            checks: Object.keys(body.checks).sort(),
          });
        }
      }

      async function send(replica: TestGateway, body: Record<string, unknown>) {
        const sentIn = phase;
        const sentAt = performance.now();
        const res = await postJson(replica, { key: OTHER_CLIENT_KEY, body });
        const took = performance.now() - sentAt;
        latencies[sentIn].push(took);
        statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1;
        if (res.statusCode !== 200) scanner.scan('error body', res.body);
        if (took > ANSWER_BOUND_MS && slow.length < 10) {
          slow.push(`${Math.round(took)} ms in ${sentIn}`);
        }
        answers.tick();
        if (answers.count % READYZ_EVERY === 0) await pollReadiness();
        return res;
      }

      async function worker(w: number) {
        const rnd = seededRandom(SEED + w);
        for (let n = 0; !done; n++) {
          const roll = rnd();
          const body =
            roll < 0.3 && recent.length > 0
              ? pick(rnd, recent)
              : { question: `redis loss ${w} ${n}`, queries: [pick(rnd, images)] };
          if (roll > 0.8) {
            // Identical requests on both replicas at once: merged through Redis when it is up.
            await Promise.all([0, 1, 2, 3].map((i) => send(replicas[(i % 2) as 0 | 1], body)));
          } else {
            const res = await send(replicas[(n % 2) as 0 | 1], body);
            if (res.statusCode === 200 && recent.length < 100) recent.push(body);
          }
        }
      }

      /** Merge events of both replicas (merged, remote, fallback, …) so far. */
      const mergeEventsNow = async () => {
        const events: Record<string, number> = {};
        for (const g of replicas) {
          for (const { labels, value } of (await adminMetrics(g)).series(
            'gateway_merge_events_total',
          )) {
            events[labels.event ?? '?'] = (events[labels.event ?? '?'] ?? 0) + value;
          }
        }
        return events;
      };
      const mergeAt: Record<'kill' | 'restart' | 'ready', Record<string, number>> = {
        kill: {},
        restart: {},
        ready: {},
      };
      const timeline = { killed_at_ms: 0, lost_seen_at_ms: 0, restarted_at_ms: 0, ready_at_ms: 0 };
      const scenario = (async () => {
        try {
          await within(answers.reach(ANSWERS.before), EVENT_BOUND_MS, 'the answers before');
          // Both replicas must see the connection go before the outage counts as begun.
          const lost = Promise.all(
            replicas.map((g) => next(g.app.redis?.client ?? probe, 'close')),
          );
          mergeAt.kill = await mergeEventsNow();
          timeline.killed_at_ms = at();
          await redis.stop();
          await within(lost, EVENT_BOUND_MS, 'both replicas losing Redis');
          timeline.lost_seen_at_ms = at();
          phase = 'outage';
          const outageStart = answers.count;
          await within(answers.reach(outageStart + ANSWERS.outage), EVENT_BOUND_MS, 'outage');
          phase = 'recovering';
          mergeAt.restart = await mergeEventsNow();
          timeline.restarted_at_ms = at();
          await redis.start();
          await within(Promise.all(replicas.map(connected)), EVENT_BOUND_MS, 'reconnecting');
          timeline.ready_at_ms = at();
          mergeAt.ready = await mergeEventsNow();
          phase = 'after';
          const afterStart = answers.count;
          await within(answers.reach(afterStart + ANSWERS.after), EVENT_BOUND_MS, 'after');
        } finally {
          done = true;
        }
      })();
      await Promise.all([...Array.from({ length: WORKERS }, (_, w) => worker(w)), scenario]);

      // Readiness settles: both replicas report ready once the merger's subscriber is back too.
      const readyzNow = async () =>
        Promise.all(
          replicas.map(async (g) => {
            const res = await g.app.inject({ method: 'GET', url: '/readyz' });
            return (res.json() as { status: string }).status;
          }),
        );
      await expect
        .poll(readyzNow, { timeout: EVENT_BOUND_MS, interval: 50 })
        .toEqual(['ready', 'ready']);
      const readyAtEnd = await readyzNow();

      // After the recovery: an answer one replica stores is a hit on the other, through Redis.
      await probe.connect().catch(() => {});
      await within(
        probe.status === 'ready' ? Promise.resolve() : next(probe, 'ready'),
        EVENT_BOUND_MS,
        'the probe reconnecting',
      );
      const cachedBefore = (await probe.keys('agw:cache:*')).length;
      const fresh = { question: 'after the recovery', queries: [images[0]] };
      const stored = await postJson(replicas[0], { key: OTHER_CLIENT_KEY, body: fresh });
      const repeat = await postJson(replicas[1], { key: OTHER_CLIENT_KEY, body: fresh });
      const cachedAfter = (await probe.keys('agw:cache:*')).length;

      // A task created on one replica is its client's on the other too, and nobody else's.
      const created = await postJson(replicas[0], {
        key: OTHER_CLIENT_KEY,
        body: { ...fresh, async: true },
      });
      const taskId = (created.json() as { task_id?: string }).task_id;
      const ownPoll = await postJson(replicas[1], {
        key: OTHER_CLIENT_KEY,
        url: TASKS,
        body: { id: taskId, action: 'retrieve' },
      });
      const foreignPoll = await postJson(replicas[1], {
        key: CLIENT_KEY,
        url: TASKS,
        body: { task_id: taskId },
      });

      // checkout-service's limit (5 per minute) is one counter in Redis across both replicas.
      await probe.del('agw:rl:checkout-service');
      const limited: number[] = [];
      for (let i = 0; i < LIMIT.max + 1; i++) {
        const res = await postJson(replicas[(i % 2) as 0 | 1], {
          body: { question: `limited ${i}`, queries: [images[1]] },
        });
        limited.push(res.statusCode);
      }
      const counter = await probe.hget('agw:rl:checkout-service', 'c');
      // Counters carry no TTL (the compose Valkey evicts only keys with one); answers do.
      const ttls: Record<string, number[]> = {};
      for (const key of await probe.keys('agw:*')) {
        const family = key.split(':')[1] ?? key;
        const ttl = await probe.pttl(key);
        const [min = ttl, max = ttl] = ttls[family] ?? [];
        ttls[family] = [Math.min(min, ttl), Math.max(max, ttl)];
      }

      /** The loss and recovery lines, when (ms from the start) and why, for the figures. */
      const connectionEvents: Array<Record<string, unknown>> = [];
      /** Per replica: connection-loss and recovery log lines, and lines at error level. */
      const connectionLines = replicas.map(() => ({ lost: 0, recovered: 0, errorLevel: 0 }));
      const mergeAtEnd = await mergeEventsNow();
      /** Merge events between two snapshots. */
      const between = (from: Record<string, number>, to: Record<string, number>) =>
        Object.fromEntries(
          Object.entries(to)
            .map(([event, n]) => [event, n - (from[event] ?? 0)])
            .filter(([, n]) => n !== 0),
        );
      const mergeEvents = {
        before: mergeAt.kill,
        outage: between(mergeAt.kill, mergeAt.restart),
        recovering: between(mergeAt.restart, mergeAt.ready),
        after: between(mergeAt.ready, mergeAtEnd),
      };
      for (const [i, g] of replicas.entries()) {
        const metrics = await adminMetrics(g);
        scanner.scan(`replica ${i} /metrics`, metrics.text);
        const lines = connectionLines[i] ?? { lost: 0, recovered: 0, errorLevel: 0 };
        drainLogs(g, scanner, `replica ${i} log`, (line) => {
          const msg = String(line.msg);
          const event = {
            replica: i,
            at_ms: Number(line.time) - startedEpoch,
            reason: line.reason,
          };
          if (msg.startsWith('redis connection lost')) {
            lines.lost++;
            connectionEvents.push({ ...event, event: 'lost' });
          }
          if (msg === 'redis connection recovered') {
            lines.recovered++;
            connectionEvents.push({ ...event, event: 'recovered' });
          }
          if (typeof line.level === 'number' && line.level >= 50) lines.errorLevel++;
        });
      }

      const byPhase = (p: Phase) => readiness.filter((r) => r.phase === p);
      const firstReadyAfter = byPhase('after').findIndex((r) => r.body === 'ready');
      const stats = (xs: number[]) => {
        const sorted = [...xs].sort((a, b) => a - b);
        return {
          requests: xs.length,
          p50_ms: Math.round(percentile(sorted, 50)),
          p99_ms: Math.round(percentile(sorted, 99)),
          max_ms: Math.round(sorted[sorted.length - 1] ?? 0),
        };
      };
      const summary = (p: Phase) => {
        const polls = byPhase(p);
        const seen: Record<string, number> = {};
        for (const r of polls) {
          const key = `${r.status} ${r.body}${r.checks.length ? ` (${r.checks.join(',')})` : ''}`;
          seen[key] = (seen[key] ?? 0) + 1;
        }
        return seen;
      };
      report('redis-loss', {
        replicas: 2,
        workers: WORKERS,
        upstream_latency_ms: UPSTREAM_LATENCY_MS,
        answers: answers.count,
        timeline,
        statuses,
        before: stats(latencies.before),
        outage: stats(latencies.outage),
        recovering: stats(latencies.recovering),
        after: stats(latencies.after),
        answers_over_bound: slow.length,
        merge_events: mergeEvents,
        readyz: {
          polls: readiness.length,
          before: summary('before'),
          outage: summary('outage'),
          recovering: summary('recovering'),
          after: summary('after'),
          after_polls_until_ready: firstReadyAfter,
          at_end: readyAtEnd,
        },
        after_recovery: {
          cache_keys: [cachedBefore, cachedAfter],
          repeat_on_other_replica: repeat.headers['cache-status'],
          task_polls: {
            own_on_other_replica: ownPoll.statusCode,
            other_client: foreignPoll.statusCode,
          },
          limited_client_statuses: limited,
          redis_window_count: counter,
          pttl_ms_by_key_family: ttls,
        },
        log_lines: connectionLines,
        connection_events: connectionEvents,
      });
      report('secrets', { source: 'redis-loss', ...scanner.summary() });

      expect(slow).toEqual([]);
      expect(Object.keys(statuses)).toEqual(['200']);
      // /readyz: never 503 under `allow`; Redis named as degraded for as long as it was gone.
      expect(readiness.every((r) => r.status === 200)).toBe(true);
      expect(byPhase('before').every((r) => r.body === 'ready')).toBe(true);
      expect(byPhase('outage').length).toBeGreaterThan(0);
      expect(
        byPhase('outage').every((r) => r.body === 'degraded' && r.checks.includes('redis')),
      ).toBe(true);
      // Ready again by itself (no restart), and ready at the end. In between, the merger's own
      // subscriber connection may still be coming back (`degraded (redis_merge)`, printed).
      expect(firstReadyAfter).toBeGreaterThanOrEqual(0);
      expect(readyAtEnd).toEqual(['ready', 'ready']);
      // Merging across replicas: through Redis before the outage and again after it; per replica
      // while Redis is gone. (With Redis up, a command that outlasts the 500 ms command timeout on
      // a starved machine also falls back, by design: those are printed, not asserted.)
      expect(mergeEvents.before.remote ?? 0).toBeGreaterThan(0);
      expect(mergeEvents.outage.fallback ?? 0).toBeGreaterThan(0);
      expect(mergeEvents.after.remote ?? 0).toBeGreaterThan(0);
      // Cache: stored through Redis by one replica, a hit on the other.
      expect(stored.headers['cache-status']).toBe('acedata-gateway; fwd=uri-miss; stored');
      expect(repeat.headers['cache-status']).toBe('acedata-gateway; hit');
      expect(cachedAfter).toBe(cachedBefore + 1);
      // Task owners: shared across replicas, and a task is its creator's only.
      expect(created.statusCode).toBe(201);
      expect(ownPoll.statusCode).toBe(200);
      expect(foreignPoll.statusCode).toBe(404);
      expect(foreignPoll.json()).toMatchObject({ error: { code: 'not_found' } });
      // Limits: one Redis counter across both replicas (per replica, each would admit 5).
      expect(limited).toEqual([...Array(LIMIT.max).fill(200), 429]);
      expect(counter).toBe(String(LIMIT.max + 1));
      // No TTL on counters (rate limit, task owners, usage, quotas); cached answers expire.
      for (const family of ['rl', 'tasks', 'usage', 'quota']) {
        if (ttls[family]) expect(ttls[family], family).toEqual([-1, -1]);
      }
      expect(ttls.rl).toBeDefined();
      expect(ttls.tasks).toBeDefined();
      expect(ttls.cache?.[0]).toBeGreaterThan(0);
      // Each replica logs each loss (warn) and its recovery (info), never at error: once each on a
      // quiet machine. On a starved one a replica once logged a second loss and recovery (its
      // connection dropped again, timed out by its own 1 s connect or 500 ms command timeouts;
      // connection_events says when): every loss must be followed by its recovery.
      for (const lines of connectionLines) {
        expect(lines.lost).toBeGreaterThanOrEqual(1);
        expect(lines.recovered).toBe(lines.lost);
        expect(lines.errorLevel).toBe(0);
      }
      expect(scanner.hits).toEqual([]);
    },
    budget(240_000),
  );
});
