// Clients that leave: rounds of multi-megabyte requests whose clients disconnect once every
// request is either at the upstream or refused. Each upstream call still holds its body until it
// ends; does the byte budget still count it (and refuse what does not fit)?
import { loadConfig } from '../src/config.ts';
import { distinctBodies, pngForBody } from './bodies.ts';
import { gatewayHeaders, statusOf, tally } from './capacity.ts';
import { pollUntil, resetFake, scrape, upstreamCalls, waitForCalls } from './fake.ts';
import { burst } from './load.ts';
import { type Server, startGateway, UPSTREAM_TOKEN } from './peers.ts';
import { memoryOf, pollMemory } from './processes.ts';
import type { Context } from './settings.ts';

export interface LeavingRound {
  /** This round's requests that reached the upstream, and the answers the others got. */
  reachedUpstream: number;
  statuses: Record<string, number>;
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
  /**
   * Small requests queued at the gate when their clients left: calls queued then, calls started
   * while the gateway was still reading the disconnects (one every 1 s / rate can slip out there),
   * and calls that still reached the upstream in the `seconds` after its queue was empty.
   */
  queued: {
    requests: number;
    queuedWhenLeft: number;
    callsWhileLeaving: number;
    callsAfter: number;
    seconds: number;
  };
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
      let answered = 0;
      const sending = burst(gateway.url, gatewayHeaders, bodies, {
        signal: stop.signal,
        onAnswer: () => answered++,
      });
      // Every request is either at the upstream or answered (refused by the budget).
      let reached = 0;
      const settled = await pollUntil(async () => {
        reached = (await upstreamCalls(fake)) - before;
        return reached + answered >= perRound;
      }, 60_000);
      if (!settled) {
        throw new Error(
          `round ${round}: ${perRound - reached - answered} requests neither reached the upstream nor were answered`,
        );
      }
      const countedWhileWaiting = await gauge('gateway_inflight_bytes');
      stop.abort();
      const answers = (await sending).filter((a) => a.error !== 'aborted');
      await new Promise((resolve) => setTimeout(resolve, 500));
      result.push({
        reachedUpstream: reached,
        statuses: tally(answers.map(statusOf)),
        countedWhileWaiting,
        countedAfterLeaving: await gauge('gateway_inflight_bytes'),
        upstreamRunning: await gauge('gateway_upstream_in_flight'),
        rssBytes: memoryOf(gateway.child.pid)?.rss ?? 0,
      });
    }
    const peak = memory.stop();
    const queued = await queuedThenLeft(ctx, fake, gateway.url, gauge);
    const last = result.at(-1);
    ctx.log(
      `  leaving: ${rounds} rounds of ${perRound} × ${(bodyBytes / 1e6).toFixed(0)} MB (${result.map((r) => `${r.reachedUpstream} upstream${Object.keys(r.statuses).length > 0 ? ` + ${JSON.stringify(r.statuses)}` : ''}`).join('; ')}), clients gone: the budget counts ${((last?.countedAfterLeaving ?? 0) / 1e6).toFixed(0)} MB, ${last?.upstreamRunning} calls still hold their bodies; RSS ${((last?.rssBytes ?? 0) / 1e6).toFixed(0)} MB`,
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
      queued,
    };
  } finally {
    memory.stop();
    await gateway.child.kill();
    await resetFake(fake);
  }
}

/**
 * More small requests than the gate starts in a few seconds; once some wait at the gate, every
 * client leaves. Are the calls still queued for them sent upstream?
 */
async function queuedThenLeft(
  ctx: Context,
  fake: Server,
  url: string,
  gauge: (name: string) => Promise<number>,
): Promise<LeavingResult['queued']> {
  const { queuedRequests, watchSeconds } = ctx.settings.leaving;
  const stop = new AbortController();
  const before = await upstreamCalls(fake);
  const tag = `queued ${Date.now().toString(36)}`;
  const sending = burst(
    url,
    gatewayHeaders,
    distinctBodies(queuedRequests, pngForBody(2_000), tag),
    {
      signal: stop.signal,
    },
  );
  // Once the gate has started some (its rate is the default), the rest wait in its queue.
  await waitForCalls(fake, before + 1, 30_000);
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  const queuedWhenLeft = await gauge('gateway_upstream_queued');
  const leaving = await upstreamCalls(fake);
  stop.abort();
  await sending;
  // The clients' sockets are closed; the gateway learns it as it reads each close event. Count
  // from when its queue is empty (or 5 s have passed, so that a queue that never empties is seen).
  await pollUntil(async () => (await gauge('gateway_upstream_queued')) === 0, 5_000, 20);
  const left = await upstreamCalls(fake);
  await new Promise((resolve) => setTimeout(resolve, watchSeconds * 1000));
  const callsAfter = (await upstreamCalls(fake)) - left;
  const callsWhileLeaving = left - leaving;
  ctx.log(
    `  leaving: ${queuedWhenLeft} calls queued when ${queuedRequests} clients left; ${callsWhileLeaving} started while the gateway read the disconnects, ${callsAfter} reached the upstream in the next ${watchSeconds} s`,
  );
  return {
    requests: queuedRequests,
    queuedWhenLeft,
    callsWhileLeaving,
    callsAfter,
    seconds: watchSeconds,
  };
}
