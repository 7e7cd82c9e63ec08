// Memory: what one request in flight costs (against bare Fastify and @fastify/http-proxy holding
// the same requests), and whether a burst of multi-megabyte bodies stays within the byte budget.
import { loadConfig } from '../src/config.ts';
import { distinctBodies, pngForBody } from './bodies.ts';
import { gatewayHeaders, statusOf, tally } from './capacity.ts';
import { resetFake, upstreamCalls } from './fake.ts';
import { burst } from './load.ts';
import {
  type BenchClient,
  benchClient,
  type GatewayServer,
  type Server,
  startFloor,
  startGateway,
  startHttpProxy,
  UPSTREAM_TOKEN,
} from './peers.ts';
import {
  type Child,
  collectGarbage,
  memoryAnswerOf,
  memoryOf,
  memoryUsageOf,
  pollMemory,
} from './processes.ts';
import { type Context, median } from './scenarios.ts';

export const HELD_SERVERS = ['gateway', '@fastify/http-proxy', 'bare Fastify'] as const;
export type HeldServer = (typeof HELD_SERVERS)[number];

export interface MemorySnapshot {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
}

export interface HeldMemory {
  server: HeldServer;
  bodyBytes: number;
  requests: number;
  /** Requests held at each step (the gateway, the proxy: calls the upstream had received). */
  heldHalf: number;
  held: number;
  /** From sending the first request until all were held. */
  rampMs: number;
  /** After two full GCs: idle (after a warm-up), with the first half held, with all held. */
  idle: MemorySnapshot;
  half: MemorySnapshot;
  full: MemorySnapshot;
  /** VmHWM of the process over the whole run, start-up and ramp included. */
  hwmBytes: number;
  /** (full − half) / (held − heldHalf): what one more request in flight costs. */
  perRequest: MemorySnapshot;
  /** (full − idle) / held, first-use growth (pools, code, heap reservations) included. */
  perRequestFromIdle: MemorySnapshot;
  /** False when the process could not collect garbage (then the snapshots are sampled as is). */
  gc: boolean;
}

export interface BytesRun {
  label: string;
  /** Settings that differ from the defaults. */
  env: Record<string, string>;
  /** INFLIGHT_BYTES_MAX and CLIENT_INFLIGHT_BYTES_MAX as the gateway derived them. */
  budget: { bytes: number; perClient: number };
  clients: number;
  requests: number;
  bodyBytes: number;
  latencyMs: number;
  statuses: Record<string, number>;
  /** Refusals (429/503) that carried retry-after; when the median and the last one arrived. */
  refusals: { count: number; withRetryAfter: number; medianMs: number; lastMs: number };
  lastAnswerMs: number;
  rssBeforeBytes: number;
  peakRssBytes: number;
  hwmBytes: number;
  memoryAtPeak?: NodeJS.MemoryUsage;
}

const snapshot = (m: NodeJS.MemoryUsage): MemorySnapshot => ({
  rss: m.rss,
  heapUsed: m.heapUsed,
  heapTotal: m.heapTotal,
  external: m.external,
  arrayBuffers: m.arrayBuffers,
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Two full collections (the second frees what the first's finalisers released), then memory. */
async function settledMemory(child: Child) {
  await collectGarbage(child);
  const answer = await collectGarbage(child);
  if (!answer) throw new Error(`${child.name} did not report its memory`);
  return answer;
}

const perRequest = (a: MemorySnapshot, b: MemorySnapshot, requests: number): MemorySnapshot => {
  const per = (key: keyof MemorySnapshot) => (b[key] - a[key]) / Math.max(1, requests);
  return {
    rss: per('rss'),
    heapUsed: per('heapUsed'),
    heapTotal: per('heapTotal'),
    external: per('external'),
    arrayBuffers: per('arrayBuffers'),
  };
};

/** Starts the server one memory measurement needs, with --expose-gc. */
export function startHeld(ctx: Context, fake: Server, which: HeldServer): Promise<Server> {
  return which === 'gateway'
    ? startGateway({ upstreamUrl: fake.url, dir: ctx.dir, exposeGc: true })
    : which === 'bare Fastify'
      ? startFloor({ exposeGc: true })
      : // Its pool's default of 128 upstream connections would hold the rest unread.
        startHttpProxy(fake.url, { exposeGc: true, connections: 10_000 });
}

/**
 * N distinct requests of one size held in flight by one server: the gateway against an upstream
 * slower than the whole measurement, @fastify/http-proxy against the same upstream, bare Fastify
 * holding each parsed request itself. Memory after full GCs with half of them held and with all
 * held: the difference is what a request in flight costs, without the growth that comes with a
 * process's first requests (connection pools, compiled code, heap reservations).
 */
export async function heldMemory(
  ctx: Context,
  fake: Server,
  server: Server,
  which: HeldServer,
  size: { bodyBytes: number; requests: number },
): Promise<HeldMemory> {
  const { holdMs, settleMs } = ctx.settings.memory;
  const headers =
    which === 'gateway'
      ? gatewayHeaders
      : which === '@fastify/http-proxy'
        ? { authorization: `Bearer ${UPSTREAM_TOKEN}` }
        : {};
  const run = Date.now().toString(36);
  const png = pngForBody(size.bodyBytes);
  const stop = new AbortController();
  const sending: Array<Promise<unknown>> = [];
  try {
    // Warm-up: the code paths the held requests take, answered at once.
    await resetFake(fake);
    const warm = await burst(server.url, headers, distinctBodies(20, png, `warm ${run}`));
    const failed = warm.find((a) => a.status !== 200);
    if (failed) throw new Error(`${which}: the warm-up answered ${statusOf(failed)}`);
    const idle = await settledMemory(server.child);

    await resetFake(fake, holdMs);
    const bodies = distinctBodies(size.requests, png, `held ${run}`);
    const half = Math.floor(bodies.length / 2);
    const heldNow = async () =>
      which === 'bare Fastify'
        ? ((await memoryAnswerOf(server.child))?.stats.held ?? 0)
        : await upstreamCalls(fake);
    const started = performance.now();
    // The gateway starts calls at its default rate: all are held after requests / rate seconds.
    const until = started + holdMs - 10_000;
    const holdUntil = async (count: number) => {
      let held = await heldNow();
      while (held < count && performance.now() < until) {
        await sleep(250);
        held = await heldNow();
      }
      await sleep(settleMs);
      return held;
    };
    const send = (part: Buffer[]) =>
      sending.push(
        burst(server.url, headers, part, {
          signal: stop.signal,
          headers: which === 'bare Fastify' ? { 'x-bench-hold-ms': String(holdMs) } : {},
        }),
      );
    send(bodies.slice(0, half));
    const heldHalf = await holdUntil(half);
    const halfMemory = await settledMemory(server.child);
    send(bodies.slice(half));
    const held = await holdUntil(bodies.length);
    const rampMs = performance.now() - started - settleMs;
    const fullMemory = await settledMemory(server.child);
    const hwm = memoryOf(server.child.pid)?.peak ?? 0;
    const [idleSnap, halfSnap, fullSnap] = [idle, halfMemory, fullMemory].map((m) =>
      snapshot(m.memoryUsage),
    ) as [MemorySnapshot, MemorySnapshot, MemorySnapshot];
    const result: HeldMemory = {
      server: which,
      bodyBytes: bodies[0]?.length ?? 0,
      requests: size.requests,
      heldHalf,
      held,
      rampMs,
      idle: idleSnap,
      half: halfSnap,
      full: fullSnap,
      hwmBytes: hwm,
      perRequest: perRequest(halfSnap, fullSnap, held - heldHalf),
      perRequestFromIdle: perRequest(idleSnap, fullSnap, held),
      gc: idle.gc && fullMemory.gc,
    };
    const kb = (n: number) => `${(n / 1000).toFixed(1)} KB`;
    ctx.log(
      `  memory ${which}, ${held}/${size.requests} × ${kb(result.bodyBytes)} held after ${(rampMs / 1000).toFixed(1)} s: RSS ${(idleSnap.rss / 1e6).toFixed(0)} → ${(halfSnap.rss / 1e6).toFixed(0)} → ${(fullSnap.rss / 1e6).toFixed(0)} MB; per request ${kb(result.perRequest.rss)} (heap ${kb(result.perRequest.heapUsed)}, array buffers ${kb(result.perRequest.arrayBuffers)}), from idle ${kb(result.perRequestFromIdle.rss)}; peak ${(hwm / 1e6).toFixed(0)} MB`,
    );
    return result;
  } finally {
    stop.abort();
    await Promise.all(sending);
    await server.child.kill();
    await resetFake(fake);
  }
}

/**
 * Multi-megabyte distinct bodies, all at once, against a slow upstream: at the defaults (the
 * budget derived from this machine's memory), and with the budget a container's memory limit
 * would give it. Peak RSS and the answers: 200 within the budget, 429/503 with retry-after beyond.
 */
export async function boundedBytes(
  ctx: Context,
  fake: Server,
  run: { label: string; env: Record<string, string>; clients: number },
): Promise<BytesRun> {
  const { requests, bodyBytes, latencyMs } = ctx.settings.bytes;
  const clients: BenchClient[] = Array.from({ length: run.clients }, (_, i) =>
    benchClient(`bytes-${i + 1}`),
  );
  const derived = loadConfig({ ACEDATA_API_TOKEN: UPSTREAM_TOKEN, ...run.env }).derived;
  const gateway: GatewayServer = await startGateway({
    upstreamUrl: fake.url,
    dir: ctx.dir,
    env: run.env,
    clients,
  });
  try {
    await resetFake(fake, latencyMs);
    const tag = `${run.label} ${Date.now().toString(36)}`;
    const bodies = distinctBodies(requests, pngForBody(bodyBytes), tag);
    const before = memoryOf(gateway.child.pid);
    const memory = pollMemory(gateway.child.pid, 100);
    let atPeak: { rss: number; usage: NodeJS.MemoryUsage } | undefined;
    let sampling = true;
    const breakdown = (async () => {
      while (sampling) {
        const usage = await memoryUsageOf(gateway.child);
        if (usage && usage.rss > (atPeak?.rss ?? 0)) atPeak = { rss: usage.rss, usage };
        await sleep(250);
      }
    })();
    // Each client sends its share of the bodies at once, all clients together.
    const perClient = Math.ceil(requests / clients.length);
    const answers = (
      await Promise.all(
        clients.map((client, i) =>
          burst(
            gateway.url,
            { authorization: `Bearer ${client.key}` },
            bodies.slice(i * perClient, (i + 1) * perClient),
          ),
        ),
      )
    ).flat();
    const peak = memory.stop();
    sampling = false;
    await breakdown;
    const refused = answers.filter((a) => a.status === 429 || a.status === 503);
    const result: BytesRun = {
      label: run.label,
      env: run.env,
      budget: { bytes: derived.inflightBytesMax, perClient: derived.clientInflightBytesMax },
      clients: clients.length,
      requests,
      bodyBytes: bodies[0]?.length ?? 0,
      latencyMs,
      statuses: tally(answers.map(statusOf)),
      refusals: {
        count: refused.length,
        withRetryAfter: refused.filter((a) => a.retryAfter !== undefined).length,
        medianMs: median(refused.map((a) => a.doneMs)),
        lastMs: Math.max(0, ...refused.map((a) => a.doneMs)),
      },
      lastAnswerMs: Math.max(...answers.map((a) => a.doneMs)),
      rssBeforeBytes: before?.rss ?? 0,
      peakRssBytes: peak.maxRss,
      hwmBytes: peak.hwm,
      memoryAtPeak: atPeak?.usage,
    };
    ctx.log(
      `  bytes (${run.label}): ${JSON.stringify(result.statuses)}, refusals by ${(result.refusals.lastMs / 1000).toFixed(2)} s, peak RSS ${(Math.max(peak.hwm, peak.maxRss) / 1e6).toFixed(0)} MB`,
    );
    return result;
  } finally {
    await gateway.child.kill();
    await resetFake(fake);
  }
}
