// The noisy neighbour: one client floods far above the upstream's rate while another sends at a
// steady low rate; the steady client's latency with and without the flood, on one gateway at its
// default settings.
import { Worker } from 'node:worker_threads';
import { distinctBodies, pngForBody } from './bodies.ts';
import { type GateSample, sampleGate, statusOf, tally } from './capacity.ts';
import { resetFake, scrape, upstreamCalls } from './fake.ts';
import type { FloodOptions, FloodReport } from './flood-worker.ts';
import { openLoop, percentile } from './load.ts';
import { benchClient, type GatewayServer, type Server } from './peers.ts';
import type { Context } from './scenarios.ts';

export const FLOOD = benchClient('flood');
export const STEADY = benchClient('steady');

export interface SteadyClientRun {
  sent: number;
  ok: number;
  statuses: Record<string, number>;
  p50: number;
  p99: number;
  max: number;
}

export interface NoisyResult {
  latencyMs: number;
  steadyRate: number;
  floodRate: number;
  seconds: number;
  alone: SteadyClientRun;
  flooded: SteadyClientRun;
  /** The flood's answers (requests cut off when it stopped count as "aborted"). */
  flood: FloodReport;
  /** Gate gauges sampled every second while the steady client ran under the flood. */
  gate: { queued: { min: number; max: number }; running: { min: number; max: number } };
  /** How long the flood ran before the steady client started (until the gate had a queue). */
  floodLeadMs: number;
  /** Calls that reached the upstream in the `seconds` after every client had gone. */
  afterClientsLeft: { calls: number; seconds: number };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function steadyClient(
  ctx: Context,
  gateway: GatewayServer,
  template: string,
  tag: string,
): Promise<SteadyClientRun> {
  const { steadyRate, seconds } = ctx.settings.noisy;
  const answers = await openLoop({
    url: gateway.url,
    headers: { authorization: `Bearer ${STEADY.key}` },
    rate: steadyRate,
    durationMs: seconds * 1000,
    connections: 256,
    body: (i) => template.replace(' #0 x', ` #${i} ${tag}`),
  });
  const ok = answers.filter((a) => a.status === 200);
  const sorted = Float64Array.from(ok.map((a) => a.latencyMs)).sort();
  return {
    sent: answers.length,
    ok: ok.length,
    statuses: tally(answers.map(statusOf)),
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    max: sorted.length > 0 ? (sorted[sorted.length - 1] ?? Number.NaN) : Number.NaN,
  };
}

export async function noisyNeighbour(
  ctx: Context,
  servers: { fake: Server; gateway: GatewayServer },
): Promise<NoisyResult> {
  const { fake, gateway } = servers;
  const { latencyMs, floodRate, seconds, steadyRate } = ctx.settings.noisy;
  const run = Date.now().toString(36);
  const template = distinctBodies(1, pngForBody(2_000), 'x')[0]?.toString() ?? '';
  try {
    await resetFake(fake, latencyMs);
    const alone = await steadyClient(ctx, gateway, template, `alone ${run}`);
    ctx.log(
      `  noisy: steady client alone: p50 ${alone.p50.toFixed(0)} ms, p99 ${alone.p99.toFixed(0)} ms (${alone.ok}/${alone.sent} × 200)`,
    );

    const options: FloodOptions = {
      url: gateway.url,
      key: FLOOD.key,
      rate: floodRate,
      durationMs: (seconds + 60) * 1000,
      connections: 8_192,
      template,
    };
    const worker = new Worker(new URL('./flood-worker.ts', import.meta.url), {
      workerData: options,
    });
    const report = new Promise<FloodReport>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    // The flood must have filled the gate before the steady client is measured.
    const floodStarted = performance.now();
    for (;;) {
      const metrics = await scrape(gateway.adminUrl);
      if ((metrics.get('gateway_upstream_queued') ?? 0) > 0) break;
      if (performance.now() - floodStarted > 30_000) {
        throw new Error('the flood did not fill the upstream gate within 30 s');
      }
      await sleep(100);
    }
    await sleep(ctx.settings.smoke ? 200 : 2_000);
    const floodLeadMs = performance.now() - floodStarted;
    const gate = sampleGate(gateway.adminUrl);
    const flooded = await steadyClient(ctx, gateway, template, `flooded ${run}`);
    const samples: GateSample[] = await gate.stop();
    worker.postMessage('stop');
    const flood = await report;
    await worker.terminate();
    // Every client has gone; calls that still start were queued for requests nobody awaits.
    await sleep(500);
    const orphanSeconds = ctx.settings.smoke ? 1 : 5;
    const callsBefore = await upstreamCalls(fake);
    await sleep(orphanSeconds * 1000);
    const afterClientsLeft = {
      calls: (await upstreamCalls(fake)) - callsBefore,
      seconds: orphanSeconds,
    };
    const range = (values: number[]) => ({
      min: Math.min(...values),
      max: Math.max(...values),
    });
    const result: NoisyResult = {
      latencyMs,
      steadyRate,
      floodRate,
      seconds,
      alone,
      flooded,
      flood,
      gate: {
        queued: range(samples.map((s) => s.queued)),
        running: range(samples.map((s) => s.running)),
      },
      floodLeadMs,
      afterClientsLeft,
    };
    ctx.log(
      `  noisy: under the flood: p50 ${flooded.p50.toFixed(0)} ms, p99 ${flooded.p99.toFixed(0)} ms (${flooded.ok}/${flooded.sent} × 200); gate queued ${result.gate.queued.min}–${result.gate.queued.max}; flood answers ${JSON.stringify(flood.statuses)}`,
    );
    return result;
  } finally {
    await gateway.child.kill();
    await resetFake(fake);
  }
}
