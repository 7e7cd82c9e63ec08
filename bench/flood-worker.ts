// The noisy neighbour's flood, in a worker thread: an open loop of distinct requests at a fixed
// rate, so that the flood's own sending never delays the timing of the steady client measured
// on the main thread. Stops on the 'stop' message and posts the tally of its answers.
import { parentPort, workerData } from 'node:worker_threads';
import { openLoop } from './load.ts';

export interface FloodOptions {
  url: string;
  key: string;
  rate: number;
  durationMs: number;
  connections: number;
  /** A body whose ' #0 x' is replaced by a unique mark per request. */
  template: string;
}

export interface FloodReport {
  sent: number;
  statuses: Record<string, number>;
}

const options = workerData as FloodOptions;
const stop = new AbortController();
parentPort?.once('message', (message) => {
  if (message === 'stop') stop.abort();
});
const run = Date.now().toString(36);
const answers = await openLoop({
  url: options.url,
  headers: { authorization: `Bearer ${options.key}` },
  rate: options.rate,
  durationMs: options.durationMs,
  connections: options.connections,
  body: (i) => options.template.replace(' #0 x', ` #${i} flood ${run}`),
  signal: stop.signal,
});
const statuses: Record<string, number> = {};
for (const a of answers) {
  const key = a.status === 0 ? (a.error ?? 'error') : String(a.status);
  statuses[key] = (statuses[key] ?? 0) + 1;
}
const report: FloodReport = { sent: answers.length, statuses };
parentPort?.postMessage(report);
