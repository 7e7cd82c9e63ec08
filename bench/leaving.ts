// Clients that leave: rounds of multi-megabyte requests whose clients disconnect once every call
// has reached the upstream. Each upstream call still holds its body until it ends; does the byte
// budget still count it?
import { loadConfig } from '../src/config.ts';
import { distinctBodies, pngForBody } from './bodies.ts';
import { gatewayHeaders } from './capacity.ts';
import { resetFake, scrape, upstreamCalls, waitForCalls } from './fake.ts';
import { burst } from './load.ts';
import { type Server, startGateway, UPSTREAM_TOKEN } from './peers.ts';
import { memoryOf, pollMemory } from './processes.ts';
import type { Context } from './settings.ts';

export interface LeavingRound {
  /** gateway_inflight_bytes while this round's clients waited, and once they had left. */
  countedWhileWaiting: number;
  countedAfterLeaving: number;
  /** gateway_upstream_in_flight once they had left: calls still holding their bodies. */
  upstreamRunning: number;
  rssBytes: number;
}

export interface LeavingResult {
  /** Settings that differ from the defaults. */
  env: Record<string, string>;
  budget: { bytes: number; perClient: number };
  bodyBytes: number;
  perRound: number;
  latencyMs: number;
  rounds: LeavingRound[];
  peakRssBytes: number;
  hwmBytes: number;
}

export async function clientsLeaving(ctx: Context, fake: Server): Promise<LeavingResult> {
  const { bodyBytes, containerBytes } = ctx.settings.bytes;
  const { rounds, perRound, latencyMs } = ctx.settings.leaving;
  const budget = String(Math.floor(containerBytes / 8));
  // One client, its share raised to the whole budget: the global budget is what is tested.
  const env = { INFLIGHT_BYTES_MAX: budget, CLIENT_INFLIGHT_BYTES_MAX: budget };
  const derived = loadConfig({ ACEDATA_API_TOKEN: UPSTREAM_TOKEN, ...env }).derived;
  const gateway = await startGateway({ upstreamUrl: fake.url, dir: ctx.dir, env });
  const gauge = async (name: string) => (await scrape(gateway.adminUrl)).get(name) ?? 0;
  const memory = pollMemory(gateway.child.pid, 100);
  try {
    await resetFake(fake, latencyMs);
    const png = pngForBody(bodyBytes);
    const result: LeavingRound[] = [];
    let sentBytes = 0;
    for (let round = 1; round <= rounds; round++) {
      const stop = new AbortController();
      const before = await upstreamCalls(fake);
      const tag = `leaving ${round} ${Date.now().toString(36)}`;
      const bodies = distinctBodies(perRound, png, tag);
      sentBytes = bodies[0]?.length ?? 0;
      const sending = burst(gateway.url, gatewayHeaders, bodies, { signal: stop.signal });
      if (!(await waitForCalls(fake, before + perRound, 60_000))) {
        throw new Error(`round ${round}: the calls did not all reach the upstream`);
      }
      const countedWhileWaiting = await gauge('gateway_inflight_bytes');
      stop.abort();
      await sending;
      await new Promise((resolve) => setTimeout(resolve, 500));
      result.push({
        countedWhileWaiting,
        countedAfterLeaving: await gauge('gateway_inflight_bytes'),
        upstreamRunning: await gauge('gateway_upstream_in_flight'),
        rssBytes: memoryOf(gateway.child.pid)?.rss ?? 0,
      });
    }
    const peak = memory.stop();
    const last = result.at(-1);
    ctx.log(
      `  leaving: ${rounds} rounds of ${perRound} × ${(bodyBytes / 1e6).toFixed(0)} MB, clients gone: the budget counts ${((last?.countedAfterLeaving ?? 0) / 1e6).toFixed(0)} MB, ${last?.upstreamRunning} calls still hold their bodies; RSS ${((last?.rssBytes ?? 0) / 1e6).toFixed(0)} MB`,
    );
    return {
      env,
      budget: { bytes: derived.inflightBytesMax, perClient: derived.clientInflightBytesMax },
      bodyBytes: sentBytes,
      perRound,
      latencyMs,
      rounds: result,
      peakRssBytes: peak.maxRss,
      hwmBytes: peak.hwm,
    };
  } finally {
    memory.stop();
    await gateway.child.kill();
    await resetFake(fake);
  }
}
