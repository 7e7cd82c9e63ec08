// The fake upstream's control routes (/__fake/…) and the gateway's admin /metrics, as the
// scenarios read them.
import type { Server } from './peers.ts';

export async function fakeControl(fake: Server, path: string, body?: unknown): Promise<unknown> {
  const res = await fetch(`${fake.url}/__fake/${path}`, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`fake upstream /__fake/${path} answered ${res.status}`);
  return res.json();
}

/** Forgets calls and faults, then sets the answer time of every call from now on. */
export async function resetFake(fake: Server, latencyMs = 0): Promise<void> {
  await fakeControl(fake, 'reset', {});
  if (latencyMs > 0) await fakeControl(fake, 'faults', { latencyMs });
}

export const upstreamCalls = async (fake: Server) =>
  ((await fakeControl(fake, 'calls')) as { count: number }).count;

/** When each call since the last reset arrived at the fake (epoch ms). */
export const callArrivals = async (fake: Server) =>
  ((await fakeControl(fake, 'calls')) as { calls: Array<{ at: number }> }).calls.map((c) => c.at);

/** Polls `done` until it holds; false if `timeoutMs` passed first (asked once more at the end). */
export async function pollUntil(
  done: () => Promise<boolean>,
  timeoutMs: number,
  intervalMs = 200,
): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await done()) return true;
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
  return done();
}

/** Polls until the fake has received `count` calls; false if `timeoutMs` passed first. */
export const waitForCalls = (fake: Server, count: number, timeoutMs: number, intervalMs = 200) =>
  pollUntil(async () => (await upstreamCalls(fake)) >= count, timeoutMs, intervalMs);

/** The gateway's admin /metrics as name{labels} → value (Prometheus text format). */
export async function scrape(adminUrl: string): Promise<Map<string, number>> {
  const res = await fetch(`${adminUrl}/metrics`, { signal: AbortSignal.timeout(5_000) });
  if (!res.ok) throw new Error(`admin /metrics answered ${res.status}`);
  const values = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    values.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return values;
}
