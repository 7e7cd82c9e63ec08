// The benchmark scenarios. Each is handed its servers (one process each, started by run.ts), checks
// that they answer as expected, measures, and stops them.
import { createReadStream, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { makePng, QUESTION, recognitionBody, UNIQUE_MARK } from './bodies.ts';
import { type BurstResponse, burst, cannon, type LoadRun, post } from './load.ts';
import {
  CLIENT_KEY,
  type GatewayServer,
  type Server,
  startGateway,
  UPSTREAM_TOKEN,
} from './peers.ts';
import { memoryOf, memoryUsageOf, pollMemory } from './processes.ts';
import { type ProfileSummary, summarise } from './profile.ts';

export interface Settings {
  smoke: boolean;
  /** Seconds per measured autocannon run. */
  duration: number;
  /** Seconds of unmeasured load per target before the rounds. */
  warmup: number;
  /** Rounds of A B A B …; medians are reported. */
  rounds: number;
  connections: number;
  concurrency: { requests: number; latencyMs: number; bodyBytes: number };
  merge: { requests: number; latencyMs: number };
  /** Seconds of load while profiling. */
  profileSeconds: number;
}

export interface Context {
  settings: Settings;
  /** Temporary directory of this run. */
  dir: string;
  /** Seconds still allowed for taking disturbed runs again. */
  retryBudgetSeconds: number;
  log(line: string): void;
}

export interface TargetResult {
  name: string;
  runs: LoadRun[];
  /** Requests sent to it, warm-up included. */
  sent: number;
  median: { rps: number; p50: number; p99: number };
}

export interface LoadResult {
  connections: number;
  bodyBytes: number;
  targets: TargetResult[];
  /** Why a peer is missing, when one is. */
  skipped: string[];
  /** Completion log lines the gateway wrote, and the requests sent to it (checks excluded). */
  gatewayLog?: { lines: number; sent: number };
}

export interface ConcurrencyResult {
  requests: number;
  latencyMs: number;
  bodyBytes: number;
  ok: number;
  statuses: Record<string, number>;
  /** Upstream calls the fake had received before the first answer came back. */
  inFlightAtUpstream: number;
  /** When the last upstream call reached the fake, from the start of the burst. */
  lastUpstreamArrivalMs: number;
  firstAnswerMs: number;
  lastAnswerMs: number;
  rssBeforeBytes: number;
  /** Highest VmRSS sampled every 100 ms, and the kernel's VmHWM. */
  peakRssBytes: number;
  hwmBytes: number;
  /** process.memoryUsage() of the gateway when its sampled RSS was highest. */
  memoryAtPeak?: NodeJS.MemoryUsage;
}

export interface MergeResult {
  requests: number;
  latencyMs: number;
  upstreamCalls: number;
  statuses: Record<string, number>;
  cacheStatuses: Record<string, number>;
}

/** Above this share of the CPU used by other processes, a run is reported as disturbed. */
export const NOISY = 0.05;
/** How often a disturbed run is taken again. */
const RETRIES = 2;

const gatewayHeaders = { authorization: `Bearer ${CLIENT_KEY}` };
/** Passthrough proxies forward the caller's authorization, so the caller holds the upstream token. */
const upstreamHeaders = { authorization: `Bearer ${UPSTREAM_TOKEN}` };

interface Target {
  name: string;
  url: string;
  headers: Record<string, string>;
}

/** Warm-up, then `rounds` rounds in which every target takes its turn; medians per target. */
async function alternate(
  ctx: Context,
  label: string,
  targets: Target[],
  load: { body: string; connections: number; unique: boolean },
  beforeEach: () => Promise<void> = async () => {},
): Promise<TargetResult[]> {
  const { settings } = ctx;
  const sent = new Map<Target, number>();
  const run = async (target: Target, duration: number) => {
    await beforeEach();
    const result = await cannon({ ...load, url: target.url, headers: target.headers, duration });
    sent.set(target, (sent.get(target) ?? 0) + result.sent);
    return result;
  };
  if (settings.warmup > 0) for (const target of targets) await run(target, settings.warmup);
  const runs = targets.map(() => [] as LoadRun[]);
  for (let round = 1; round <= settings.rounds; round++) {
    for (const [i, target] of targets.entries()) {
      let result = await run(target, settings.duration);
      // Other work on the machine (a test suite, a build) skews a run: take it again, while the
      // run's retry budget lasts (so a machine that stays busy costs minutes, not hours).
      for (let retry = 1; retry <= RETRIES && (result.otherCpu ?? 0) > NOISY; retry++) {
        if (ctx.retryBudgetSeconds < settings.duration) break;
        ctx.retryBudgetSeconds -= settings.duration;
        ctx.log(
          `  ${label} round ${round} ${target.name}: other processes used ${((result.otherCpu ?? 0) * 100).toFixed(0)}% of the CPU; running it again`,
        );
        result = await run(target, settings.duration);
      }
      runs[i]?.push(result);
      const problems = result.non2xx + result.errors + result.timeouts;
      const other = result.otherCpu ?? 0;
      ctx.log(
        `  ${label} round ${round} ${target.name}: ${result.rps.toFixed(0)} req/s, p50 ${result.p50.toFixed(3)} ms, p99 ${result.p99.toFixed(3)} ms${problems > 0 ? ` (non-2xx ${result.non2xx}, errors ${result.errors}, timeouts ${result.timeouts})` : ''}${other > NOISY ? ` (other processes used ${(other * 100).toFixed(0)}% of the CPU)` : ''}`,
      );
    }
  }
  return targets.map((target, i) => ({
    name: target.name,
    runs: runs[i] ?? [],
    sent: sent.get(target) ?? 0,
    median: {
      rps: median((runs[i] ?? []).map((r) => r.rps)),
      p50: median((runs[i] ?? []).map((r) => r.p50)),
      p99: median((runs[i] ?? []).map((r) => r.p99)),
    },
  }));
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

async function expectOk(target: Target, body: string, cacheStatus?: string): Promise<void> {
  const res = await post(target.url, target.headers, body);
  if (res.status !== 200 || typeof (res.json as { solution?: unknown }).solution !== 'object') {
    throw new Error(`${target.name} answered ${res.status}: ${JSON.stringify(res.json)}`);
  }
  if (cacheStatus !== undefined && !res.cacheStatus?.includes(cacheStatus)) {
    throw new Error(`${target.name}: cache-status ${res.cacheStatus}, expected ${cacheStatus}`);
  }
}

async function fakeControl(fake: Server, path: string, body?: unknown): Promise<unknown> {
  const res = await fetch(`${fake.url}/__fake/${path}`, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`fake upstream /__fake/${path} answered ${res.status}`);
  return res.json();
}

const upstreamCalls = async (fake: Server) =>
  ((await fakeControl(fake, 'calls')) as { count: number }).count;

/** Counts "request completed" lines in the gateway's stdout. */
async function completionLines(file: string): Promise<number> {
  let count = 0;
  let tail = '';
  for await (const chunk of createReadStream(file, { encoding: 'utf8' })) {
    const text = tail + chunk;
    const lines = text.split('\n');
    tail = lines.pop() ?? '';
    for (const line of lines) if (line.includes('"request completed"')) count++;
  }
  return count;
}

const sentTo = (targets: TargetResult[], name: string) =>
  targets.find((t) => t.name === name)?.sent ?? 0;

/** Cache hits: a ~100 KB PNG answered from a warm cache, against bare Fastify parsing the body. */
export async function hit(
  ctx: Context,
  servers: { gateway: GatewayServer; floor: Server },
): Promise<LoadResult> {
  const body = recognitionBody(QUESTION, makePng(100_000));
  const targets: Target[] = [
    { name: 'gateway', url: servers.gateway.url, headers: gatewayHeaders },
    { name: 'bare Fastify', url: servers.floor.url, headers: {} },
  ];
  await expectOk(targets[0] as Target, body); // warms the cache
  await expectOk(targets[0] as Target, body, '; hit');
  await expectOk(targets[1] as Target, body);
  const load = { body, connections: ctx.settings.connections, unique: false };
  const results = await alternate(ctx, 'hit', targets, load);
  await servers.gateway.child.stop();
  await servers.floor.child.stop();
  return {
    connections: load.connections,
    bodyBytes: Buffer.byteLength(body),
    targets: results,
    skipped: [],
    gatewayLog: {
      lines: await completionLines(servers.gateway.logFile),
      sent: sentTo(results, 'gateway'),
    },
  };
}

export interface MissResult {
  throughput: LoadResult;
  latency: LoadResult;
}

/**
 * Cache misses: caching off, upstream latency 0, a unique ~2 KB body per request (so neither the
 * cache nor merging spares a call). Throughput at `connections` against the passthrough proxies,
 * then latency at 1 connection against calling the fake upstream directly.
 */
export async function miss(
  ctx: Context,
  servers: {
    fake: Server;
    gateway: GatewayServer;
    proxy: Server;
    /** nginx, or why it is skipped. */
    nginx: Server | string;
  },
): Promise<MissResult> {
  const { fake, gateway, proxy } = servers;
  const nginx = typeof servers.nginx === 'string' ? undefined : servers.nginx;
  const body = recognitionBody(`${QUESTION} ${UNIQUE_MARK}`, makePng(1_400));
  const check = body.replace(UNIQUE_MARK, `check-${Date.now()}`);
  const peers: Target[] = [
    { name: '@fastify/http-proxy', url: proxy.url, headers: upstreamHeaders },
    ...(nginx ? [{ name: 'nginx', url: nginx.url, headers: upstreamHeaders }] : []),
  ];
  const viaGateway: Target = { name: 'gateway', url: gateway.url, headers: gatewayHeaders };
  const direct: Target = {
    name: 'fake upstream (direct)',
    url: fake.url,
    headers: upstreamHeaders,
  };
  await expectOk(viaGateway, check, 'fwd=bypass');
  for (const target of [...peers, direct]) await expectOk(target, check);
  const skipped = typeof servers.nginx === 'string' ? [`nginx: ${servers.nginx}`] : [];
  // Keeps the fake's record of calls (and its memory) small between runs.
  const reset = async () => void (await fakeControl(fake, 'reset', {}));
  const bodyBytes = Buffer.byteLength(body.replace(UNIQUE_MARK, 'x'.repeat(33)));

  const throughputLoad = { body, connections: ctx.settings.connections, unique: true };
  const throughput = await alternate(ctx, 'miss', [viaGateway, ...peers], throughputLoad, reset);
  const latencyLoad = { body, connections: 1, unique: true };
  const latency = await alternate(
    ctx,
    'latency',
    [direct, viaGateway, ...peers],
    latencyLoad,
    reset,
  );
  await Promise.all([gateway.child.stop(), proxy.child.stop(), nginx?.child.stop()]);
  const lines = await completionLines(gateway.logFile);
  return {
    throughput: {
      connections: throughputLoad.connections,
      bodyBytes,
      targets: throughput,
      skipped,
    },
    latency: {
      connections: 1,
      bodyBytes,
      targets: latency,
      skipped,
      gatewayLog: {
        lines,
        sent: sentTo(throughput, 'gateway') + sentTo(latency, 'gateway'),
      },
    },
  };
}

const tally = (values: Array<string | number | undefined>) => {
  const counts: Record<string, number> = {};
  for (const value of values) counts[String(value)] = (counts[String(value)] ?? 0) + 1;
  return counts;
};

/**
 * Many requests in flight at once (unique ~20 KB bodies, slow upstream) through a fresh gateway
 * whose peak RSS is watched; then, on the same servers, identical concurrent requests that must
 * merge into one upstream call.
 */
export async function concurrencyAndMerge(
  ctx: Context,
  servers: { fake: Server; gateway: GatewayServer },
): Promise<{ concurrency: ConcurrencyResult; merge: MergeResult }> {
  const { fake, gateway } = servers;
  const { requests, latencyMs, bodyBytes } = ctx.settings.concurrency;
  await fakeControl(fake, 'reset', {});
  await fakeControl(fake, 'faults', { latencyMs });
  const run = Date.now().toString(36);
  const png = makePng(Math.round(bodyBytes * 0.75) - 100);
  const bodies = Array.from({ length: requests }, (_, i) =>
    recognitionBody(`${QUESTION} #${i} ${run}`, png),
  );
  const before = memoryOf(gateway.child.pid);
  const memory = pollMemory(gateway.child.pid, 100);
  // The heap breakdown at the highest RSS seen (sampled less often: it asks the busy process).
  let atPeak: { rss: number; usage: NodeJS.MemoryUsage } | undefined;
  let sampling = true;
  const breakdown = (async () => {
    while (sampling) {
      const usage = await memoryUsageOf(gateway.child);
      if (usage && usage.rss > (atPeak?.rss ?? 0)) atPeak = { rss: usage.rss, usage };
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  })();
  // No answer can come back before the upstream latency has passed, so every call the fake has
  // received before the first answer is in flight at once.
  let answered = false;
  let inFlight = 0;
  const watch = (async () => {
    while (!answered) {
      const calls = await upstreamCalls(fake).catch(() => inFlight);
      if (!answered) inFlight = Math.max(inFlight, calls);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  const burstStartedAt = Date.now();
  const answers = await burst(gateway.url, gatewayHeaders, bodies, () => {
    answered = true;
  });
  await watch;
  const peak = memory.stop();
  sampling = false;
  await breakdown;
  const arrivals = (
    (await fakeControl(fake, 'calls')) as { calls: Array<{ at: number }> }
  ).calls.map((c) => c.at - burstStartedAt);
  const ok = answers.filter((a) => a.status === 200).length;
  ctx.log(`  concurrency: ${ok}/${requests} ok, peak RSS ${(peak.hwm / 1e6).toFixed(0)} MB`);
  const concurrency: ConcurrencyResult = {
    requests,
    latencyMs,
    bodyBytes: Buffer.byteLength(bodies[0] ?? ''),
    ok,
    statuses: tally(answers.map(statusOf)),
    inFlightAtUpstream: inFlight,
    lastUpstreamArrivalMs: Math.max(...arrivals),
    firstAnswerMs: Math.min(...answers.map((a) => a.ms)),
    lastAnswerMs: Math.max(...answers.map((a) => a.ms)),
    rssBeforeBytes: before?.rss ?? 0,
    peakRssBytes: peak.maxRss,
    hwmBytes: peak.hwm,
    memoryAtPeak: atPeak?.usage,
  };

  const merge = ctx.settings.merge;
  await fakeControl(fake, 'reset', {});
  await fakeControl(fake, 'faults', { latencyMs: merge.latencyMs });
  const same = recognitionBody(`${QUESTION} merge ${run}`, makePng(1_400));
  const callsBefore = await upstreamCalls(fake);
  const merged = await burst(gateway.url, gatewayHeaders, Array(merge.requests).fill(same));
  const upstream = (await upstreamCalls(fake)) - callsBefore;
  await fakeControl(fake, 'reset', {});
  await gateway.child.stop();
  ctx.log(`  merge: ${merge.requests} identical requests → ${upstream} upstream call(s)`);
  return {
    concurrency,
    merge: {
      requests: merge.requests,
      latencyMs: merge.latencyMs,
      upstreamCalls: upstream,
      statuses: tally(merged.map(statusOf)),
      cacheStatuses: tally(merged.map((a) => a.cacheStatus?.replace('acedata-gateway; ', ''))),
    },
  };
}

const statusOf = (a: BurstResponse) => (a.status === 0 ? (a.error ?? 'error') : a.status);

export interface ProfiledGateway extends GatewayServer {
  which: 'hit' | 'miss';
  profileDir: string;
  spawnedAt: number;
}

export const isProfiled = (gateway: GatewayServer): gateway is ProfiledGateway =>
  'profileDir' in gateway;

/** A gateway for the hit or the miss load that writes a CPU profile (--cpu-prof) when it exits. */
export async function startProfiledGateway(
  ctx: Context,
  fake: Server,
  which: 'hit' | 'miss',
): Promise<ProfiledGateway> {
  const profileDir = join(ctx.dir, `profile-${which}`);
  mkdirSync(profileDir, { recursive: true });
  const spawnedAt = performance.now();
  const gateway = await startGateway({
    upstreamUrl: fake.url,
    cacheTtlSeconds: which === 'hit' ? 3600 : 0,
    dir: ctx.dir,
    cpuProfileDir: profileDir,
  });
  return { ...gateway, which, profileDir, spawnedAt };
}

/** Runs the scenario's load through a profiled gateway; start-up samples are left out. */
export async function profile(ctx: Context, gateway: ProfiledGateway): Promise<ProfileSummary> {
  const body =
    gateway.which === 'hit'
      ? recognitionBody(QUESTION, makePng(100_000))
      : recognitionBody(`${QUESTION} ${UNIQUE_MARK}`, makePng(1_400));
  const target = { name: 'gateway', url: gateway.url, headers: gatewayHeaders };
  await expectOk(target, body.replace(UNIQUE_MARK, 'warm'));
  const skipMs = performance.now() - gateway.spawnedAt;
  await cannon({
    ...target,
    body,
    connections: ctx.settings.connections,
    unique: gateway.which === 'miss',
    duration: ctx.settings.profileSeconds,
  });
  return readProfile(gateway, skipMs);
}

/** Stops a profiled gateway and summarises the profile it wrote on exit. */
export async function readProfile(
  gateway: ProfiledGateway,
  skipMs: number,
): Promise<ProfileSummary> {
  await gateway.child.stop();
  const file = readdirSync(gateway.profileDir).find((f) => f.endsWith('.cpuprofile'));
  if (!file) throw new Error(`the gateway wrote no CPU profile into ${gateway.profileDir}`);
  return summarise(join(gateway.profileDir, file), skipMs);
}
