// Load generators: autocannon for throughput and latency at a fixed number of connections, and a
// plain undici burst for "N requests in flight at once".
import autocannon from 'autocannon';
import { Agent, request } from 'undici';
import { cpuSnapshot, otherCpuShare } from './processes.ts';

export const RECOGNITION_PATH = '/captcha/recognition/hcaptcha';

export interface LoadOptions {
  url: string;
  headers: Record<string, string>;
  body: string;
  connections: number;
  /** Seconds. */
  duration: number;
  /** Replace each `[<id>]` in the body with a unique id per request. */
  unique?: boolean;
}

export interface LoadRun {
  /** 2xx responses per second. */
  rps: number;
  /** Latency percentiles of 2xx responses, in ms, from every response's own timing. */
  p50: number;
  p99: number;
  ok: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  /** Requests sent, including those still unanswered when the run stopped. */
  sent: number;
  seconds: number;
  /** Share of the machine's CPU that processes outside the benchmark used meanwhile (0–1). */
  otherCpu?: number;
}

/**
 * One autocannon run. autocannon's own histogram has 1 ms resolution, too coarse for added
 * latency, so percentiles come from the response times it reports per response (hrtime).
 */
export async function cannon(options: LoadOptions): Promise<LoadRun> {
  const latencies: number[] = [];
  const cpuBefore = cpuSnapshot();
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    const instance = autocannon(
      {
        url: options.url + RECOGNITION_PATH,
        method: 'POST',
        headers: { 'content-type': 'application/json', ...options.headers },
        body: options.body,
        connections: options.connections,
        duration: options.duration,
        idReplacement: options.unique === true,
        timeout: 30,
        // autocannon checks for the end of a run once per sample; short runs need short samples.
        sampleInt: Math.min(1000, options.duration * 1000),
      },
      (error, res) => (error ? reject(error) : resolve(res)),
    );
    instance.on('response', (_client, status, _bytes, ms) => {
      if (status >= 200 && status < 300) latencies.push(ms);
    });
  });
  const otherCpu = otherCpuShare(cpuBefore, cpuSnapshot());
  const sorted = Float64Array.from(latencies).sort();
  return {
    rps: latencies.length / result.duration,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    ok: latencies.length,
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    sent: result.requests.sent,
    seconds: result.duration,
    ...(otherCpu === undefined ? {} : { otherCpu }),
  };
}

/** Nearest-rank percentile of sorted values; NaN when there are none. */
export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1] ?? Number.NaN;
}

export interface BurstResponse {
  status: number;
  ms: number;
  cacheStatus?: string;
  error?: string;
}

/** Sends every body at once, each on its own connection, and waits for all the answers. */
export async function burst(
  url: string,
  headers: Record<string, string>,
  bodies: readonly string[],
  onFirstAnswer: () => void = () => {},
): Promise<BurstResponse[]> {
  const agent = new Agent({
    connections: bodies.length + 16,
    connect: { timeout: 60_000 },
    headersTimeout: 120_000,
    bodyTimeout: 120_000,
  });
  const started = performance.now();
  try {
    return await Promise.all(
      bodies.map(async (body): Promise<BurstResponse> => {
        try {
          const res = await request(url + RECOGNITION_PATH, {
            method: 'POST',
            headers: { 'content-type': 'application/json', ...headers },
            body,
            dispatcher: agent,
          });
          onFirstAnswer();
          await res.body.text();
          const cacheStatus = res.headers['cache-status'];
          return {
            status: res.statusCode,
            ms: performance.now() - started,
            cacheStatus: typeof cacheStatus === 'string' ? cacheStatus : undefined,
          };
        } catch (error) {
          const { code, message } = error as { code?: string; message?: string };
          return { status: 0, ms: performance.now() - started, error: code ?? message };
        }
      }),
    );
  } finally {
    await agent.close();
  }
}

/** One request, for checks before a run: status, a header and the JSON body. */
export async function post(
  url: string,
  headers: Record<string, string>,
  body: string,
): Promise<{ status: number; cacheStatus: string | null; json: unknown }> {
  const res = await fetch(url + RECOGNITION_PATH, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body,
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, cacheStatus: res.headers.get('cache-status'), json };
}
