// The benchmark scenarios. Each is handed its servers (one process each, started by run.ts), checks
// that they answer as expected, measures, and stops them.
import { createReadStream, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { makePng, pngForBody, QUESTION, recognitionBody, UNIQUE_MARK } from './bodies.ts';
import { resetFake } from './fake.ts';
import { cannon, type LoadRun, post } from './load.ts';
import {
  CLIENT_KEY,
  type GatewayServer,
  type Server,
  startGateway,
  UPSTREAM_TOKEN,
} from './peers.ts';
import { type ProfileSummary, summarise } from './profile.ts';
import type { Context } from './settings.ts';

export type { Context, Settings } from './settings.ts';

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

/** Above this share of the CPU used by other processes, a run is reported as disturbed. */
export const NOISY = 0.05;
/** How often a disturbed run is taken again. */
const RETRIES = 2;

const gatewayHeaders = { authorization: `Bearer ${CLIENT_KEY}` };

/**
 * Settings that differ from the defaults, per scenario. The miss scenario measures the gateway's
 * own work per call, not its upstream gate: the gate's rate (60 calls/s by default, the upstream's
 * limit per token) would be what is measured, so it is raised; and caching is off.
 */
export const SCENARIO_ENV = {
  hit: {},
  miss: { CACHE_TTL_SECONDS: '0', UPSTREAM_RATE_PER_SECOND: '100000' },
} as const satisfies Record<string, Record<string, string>>;
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
  duration = ctx.settings.duration,
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
      let result = await run(target, duration);
      // Other work on the machine (a test suite, a build) skews a run: take it again, while the
      // run's retry budget lasts (so a machine that stays busy costs minutes, not hours).
      for (let retry = 1; retry <= RETRIES && (result.otherCpu ?? 0) > NOISY; retry++) {
        if (ctx.retryBudgetSeconds < duration) break;
        ctx.retryBudgetSeconds -= duration;
        ctx.log(
          `  ${label} round ${round} ${target.name}: other processes used ${((result.otherCpu ?? 0) * 100).toFixed(0)}% of the CPU; running it again`,
        );
        result = await run(target, duration);
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

/**
 * Cache hits at each body size: the same bytes every time, answered from a warm cache, against
 * bare Fastify parsing the body with its default parser. One result per size.
 */
export async function hit(
  ctx: Context,
  servers: { gateway: GatewayServer; floor: Server },
): Promise<LoadResult[]> {
  const targets: Target[] = [
    { name: 'gateway', url: servers.gateway.url, headers: gatewayHeaders },
    { name: 'bare Fastify', url: servers.floor.url, headers: {} },
  ];
  const results: LoadResult[] = [];
  for (const size of ctx.settings.hitSizes) {
    const body = recognitionBody(QUESTION, pngForBody(size));
    await expectOk(targets[0] as Target, body); // warms the cache
    await expectOk(targets[0] as Target, body, '; hit');
    await expectOk(targets[1] as Target, body);
    const bodyBytes = Buffer.byteLength(body);
    const load = { body, connections: ctx.settings.connections, unique: false };
    const label = `hit ${(bodyBytes / 1000).toFixed(1)} KB`;
    const measured = await alternate(
      ctx,
      label,
      targets,
      load,
      undefined,
      ctx.settings.hitDuration,
    );
    results.push({ connections: load.connections, bodyBytes, targets: measured, skipped: [] });
  }
  await servers.gateway.child.stop();
  await servers.floor.child.stop();
  const last = results[results.length - 1];
  if (last) {
    last.gatewayLog = {
      lines: await completionLines(servers.gateway.logFile),
      sent: results.reduce((n, r) => n + sentTo(r.targets, 'gateway'), 0),
    };
  }
  return results;
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
  const reset = () => resetFake(fake);
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
    dir: ctx.dir,
    env: SCENARIO_ENV[which],
    cpuProfileDir: profileDir,
  });
  return { ...gateway, which, profileDir, spawnedAt };
}

/** Runs the scenario's load through a profiled gateway; start-up samples are left out. */
export async function profile(
  ctx: Context,
  gateway: ProfiledGateway,
  hitBodyBytes = ctx.settings.hitSizes.at(-1) ?? 133_500,
): Promise<ProfileSummary> {
  const body =
    gateway.which === 'hit'
      ? recognitionBody(QUESTION, pngForBody(hitBodyBytes))
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
