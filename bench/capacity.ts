// Capacity at the gateway's default settings: a burst of distinct requests against a slow
// upstream (all answered 200, when, and at what memory), identical requests merged into one call,
// and the steady state in which one replica keeps a token's allowed rate of calls busy.
import { distinctBodies, pngForBody, QUESTION, recognitionBody } from './bodies.ts';
import { callArrivals, resetFake, scrape, upstreamCalls } from './fake.ts';
import { type BurstResponse, burst, closedLoop } from './load.ts';
import { CLIENT_KEY, type GatewayServer, type Server } from './peers.ts';
import type { Child } from './processes.ts';
import { memoryOf, memoryUsageOf, pollMemory } from './processes.ts';
import type { Context } from './scenarios.ts';

export interface GateSample {
  running: number;
  queued: number;
}

export interface BurstResult {
  /** Which process: the bench's gateway server (sources) or the compiled entry point. */
  runAs: string;
  requests: number;
  latencyMs: number;
  bodyBytes: number;
  ok: number;
  statuses: Record<string, number>;
  firstAnswerMs: number;
  lastAnswerMs: number;
  upstream: {
    calls: number;
    /** First and last arrival at the fake, from the start of the burst. */
    firstArrivalMs: number;
    lastArrivalMs: number;
    /** Calls started per second between the first and the last arrival. */
    startsPerSecond: number;
    /** Most arrivals within any one second (the gate allows the rate in any second). */
    maxInOneSecond: number;
    /** Highest gateway_upstream_in_flight and gateway_upstream_queued seen (sampled every second). */
    maxRunning: number;
    maxQueued: number;
  };
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

export interface SteadyResult {
  latencyMs: number;
  /** The gate's rate at the defaults: UPSTREAM_RATE_PER_SECOND × tokens. */
  ratePerSecond: number;
  /** Senders, each sending its next request as soon as the last is answered. */
  workers: number;
  /** The window measured, from the start of the load. */
  windowMs: [number, number];
  callsInWindow: number;
  callsPerSecond: number;
  /** Calls started in each whole second of the window: the lowest and the highest. */
  perSecond: { min: number; max: number };
  /** Gate gauges sampled every second in the window. */
  queued: { min: number; max: number };
  running: { min: number; max: number };
  /** Answers received before the load stopped (requests cut off at the end are not counted). */
  statuses: Record<string, number>;
}

export const tally = (values: Array<string | number | undefined>) => {
  const counts: Record<string, number> = {};
  for (const value of values) counts[String(value)] = (counts[String(value)] ?? 0) + 1;
  return counts;
};

export const statusOf = (a: BurstResponse) => (a.status === 0 ? (a.error ?? 'error') : a.status);

export const gatewayHeaders = { authorization: `Bearer ${CLIENT_KEY}` };

/** Samples the gate's gauges on the admin /metrics every `ms` until stopped. */
export function sampleGate(adminUrl: string, ms = 1_000) {
  const samples: Array<GateSample & { at: number }> = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const metrics = await scrape(adminUrl).catch(() => undefined);
      if (metrics) {
        samples.push({
          at: performance.now(),
          running: metrics.get('gateway_upstream_in_flight') ?? 0,
          queued: metrics.get('gateway_upstream_queued') ?? 0,
        });
      }
      await new Promise((resolve) => setTimeout(resolve, ms));
    }
  })();
  return {
    samples,
    async stop() {
      running = false;
      await loop;
      return samples;
    },
  };
}

/** The most values within any window of `width` (sliding). */
export function mostWithin(values: number[], width: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  let most = 0;
  for (let start = 0, end = 0; end < sorted.length; end++) {
    while ((sorted[end] as number) - (sorted[start] as number) >= width) start++;
    most = Math.max(most, end - start + 1);
  }
  return most;
}

const range = (values: number[]) =>
  values.length === 0
    ? { min: Number.NaN, max: Number.NaN }
    : { min: Math.min(...values), max: Math.max(...values) };

/** What a burst needs of a gateway: its URLs and its process (IPC answers are optional). */
export interface BurstTarget {
  url: string;
  adminUrl: string;
  child: Child;
}

/**
 * `requests` distinct requests at once (each its own cache and merge key) through a fresh gateway
 * at its default settings, against an upstream that answers after `latencyMs`.
 */
export async function measureBurst(
  ctx: Context,
  fake: Server,
  gateway: BurstTarget,
  runAs: string,
): Promise<BurstResult> {
  const { requests, latencyMs, bodyBytes } = ctx.settings.burst;
  await resetFake(fake, latencyMs);
  const run = Date.now().toString(36);
  const bodies = distinctBodies(requests, pngForBody(bodyBytes), `burst ${run}`);
  const before = memoryOf(gateway.child.pid);
  const memory = pollMemory(gateway.child.pid, 100);
  // The heap breakdown at the highest RSS seen (sampled less often: it asks the busy process;
  // only a bench server answers).
  let atPeak: { rss: number; usage: NodeJS.MemoryUsage } | undefined;
  let sampling = true;
  const breakdown = (async () => {
    while (sampling) {
      const usage = await memoryUsageOf(gateway.child);
      if (usage && usage.rss > (atPeak?.rss ?? 0)) atPeak = { rss: usage.rss, usage };
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  })();
  const gate = sampleGate(gateway.adminUrl);
  const startedAt = Date.now();
  const answers = await burst(gateway.url, gatewayHeaders, bodies);
  const peak = memory.stop();
  sampling = false;
  await breakdown;
  const gateSamples = await gate.stop();
  const arrivals = (await callArrivals(fake)).map((at) => at - startedAt);
  await resetFake(fake);
  const ok = answers.filter((a) => a.status === 200).length;
  const first = Math.min(...arrivals);
  const last = Math.max(...arrivals);
  const result: BurstResult = {
    runAs,
    requests,
    latencyMs,
    bodyBytes: bodies[0]?.length ?? 0,
    ok,
    statuses: tally(answers.map(statusOf)),
    firstAnswerMs: Math.min(...answers.map((a) => a.doneMs)),
    lastAnswerMs: Math.max(...answers.map((a) => a.doneMs)),
    upstream: {
      calls: arrivals.length,
      firstArrivalMs: first,
      lastArrivalMs: last,
      startsPerSecond: arrivals.length > 1 ? ((arrivals.length - 1) * 1000) / (last - first) : 0,
      maxInOneSecond: mostWithin(arrivals, 1_000),
      maxRunning: Math.max(0, ...gateSamples.map((s) => s.running)),
      maxQueued: Math.max(0, ...gateSamples.map((s) => s.queued)),
    },
    rssBeforeBytes: before?.rss ?? 0,
    peakRssBytes: peak.maxRss,
    hwmBytes: peak.hwm,
    ...(atPeak ? { memoryAtPeak: atPeak.usage } : {}),
  };
  ctx.log(
    `  burst (${runAs}): ${ok}/${requests} × 200, last answer at ${(result.lastAnswerMs / 1000).toFixed(1)} s, ${result.upstream.startsPerSecond.toFixed(1)} calls/s started, RSS ${((before?.rss ?? 0) / 1e6).toFixed(0)} → peak ${(Math.max(peak.hwm, peak.maxRss) / 1e6).toFixed(0)} MB`,
  );
  return result;
}

/** Identical concurrent requests, which must merge into one upstream call. */
export async function merge(
  ctx: Context,
  fake: Server,
  gateway: BurstTarget,
): Promise<MergeResult> {
  const { requests, latencyMs } = ctx.settings.merge;
  await resetFake(fake, latencyMs);
  const same = recognitionBody(`${QUESTION} merge ${Date.now().toString(36)}`, pngForBody(2_000));
  const callsBefore = await upstreamCalls(fake);
  const merged = await burst(gateway.url, gatewayHeaders, Array(requests).fill(same));
  const upstream = (await upstreamCalls(fake)) - callsBefore;
  await resetFake(fake);
  ctx.log(`  merge: ${requests} identical requests → ${upstream} upstream call(s)`);
  return {
    requests,
    latencyMs,
    upstreamCalls: upstream,
    statuses: tally(merged.map(statusOf)),
    cacheStatuses: tally(merged.map((a) => a.cacheStatus?.replace('acedata-gateway; ', ''))),
  };
}

/**
 * The steady state: more senders than rate × latency keep the gate's queue from ever emptying,
 * so the calls started per second at the fake are the rate one replica sustains at its defaults.
 */
export async function steadyState(
  ctx: Context,
  servers: { fake: Server; gateway: GatewayServer },
  ratePerSecond: number,
): Promise<SteadyResult> {
  const { fake, gateway } = servers;
  const { latencyMs, windowMs } = ctx.settings.steady;
  // 15% more senders than calls the rate keeps in flight: the gate always has a queue.
  const workers = Math.ceil(((ratePerSecond * latencyMs) / 1000) * 1.15);
  await resetFake(fake, latencyMs);
  const run = Date.now().toString(36);
  const template = distinctBodies(1, pngForBody(2_000), 'x')[0]?.toString() ?? '';
  const body = (i: number) => template.replace(' #0 x', ` #${i} steady ${run}`);
  const stop = new AbortController();
  const startedAt = Date.now();
  const origin = performance.now();
  const load = closedLoop({
    url: gateway.url,
    headers: gatewayHeaders,
    workers,
    body,
    signal: stop.signal,
  });
  await new Promise((resolve) => setTimeout(resolve, windowMs[0]));
  const gate = sampleGate(gateway.adminUrl);
  await new Promise((resolve) => setTimeout(resolve, windowMs[1] - windowMs[0]));
  const samples = await gate.stop();
  const arrivals = (await callArrivals(fake))
    .map((at) => at - startedAt)
    .filter((at) => at >= windowMs[0] && at < windowMs[1]);
  stop.abort();
  const answers = (await load).filter((a) => a.error !== 'aborted');
  const stoppedMs = performance.now() - origin;
  await gateway.child.kill();
  await resetFake(fake);
  const seconds = (windowMs[1] - windowMs[0]) / 1000;
  const buckets = Array.from({ length: Math.floor(seconds) }, () => 0);
  for (const at of arrivals) {
    const index = Math.floor((at - windowMs[0]) / 1000);
    if (index < buckets.length) buckets[index] = (buckets[index] ?? 0) + 1;
  }
  const result: SteadyResult = {
    latencyMs,
    ratePerSecond,
    workers,
    windowMs,
    callsInWindow: arrivals.length,
    callsPerSecond: arrivals.length / seconds,
    perSecond: range(buckets),
    queued: range(samples.map((s) => s.queued)),
    running: range(samples.map((s) => s.running)),
    statuses: tally(answers.map(statusOf)),
  };
  ctx.log(
    `  steady: ${result.callsPerSecond.toFixed(1)} calls/s started in ${(windowMs[0] / 1000).toFixed(0)}–${(windowMs[1] / 1000).toFixed(0)} s (each second ${result.perSecond.min}–${result.perSecond.max}); queued ${result.queued.min}–${result.queued.max}; load stopped at ${(stoppedMs / 1000).toFixed(1)} s`,
  );
  return result;
}
