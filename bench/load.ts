// Load generators: autocannon for throughput and latency at a fixed number of connections, and a
// plain undici burst for "N requests in flight at once".

import { setTimeout as sleep } from 'node:timers/promises';
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
  /** When this request was sent and answered, from the start of the burst or loop. */
  sentMs: number;
  doneMs: number;
  /** doneMs − sentMs: this request's own latency. */
  latencyMs: number;
  cacheStatus?: string;
  retryAfter?: string;
  error?: string;
}

export interface SendOptions {
  /** Aborts every request still unanswered (they count as error "aborted"). */
  signal?: AbortSignal;
  /** Called once per answer, as it arrives. */
  onAnswer?: (answer: BurstResponse) => void;
  /** Extra headers for every request. */
  headers?: Record<string, string>;
}

type Body = string | Buffer;

/** An agent that opens up to `connections` connections: one per request in flight. */
export const loadAgent = (connections: number) =>
  new Agent({
    connections,
    connect: { timeout: 60_000 },
    headersTimeout: 200_000,
    bodyTimeout: 200_000,
    keepAliveTimeout: 10_000,
  });

/** One request; never throws: failures come back as status 0 with the error's code. */
async function send(
  agent: Agent,
  url: string,
  headers: Record<string, string>,
  body: Body,
  options: SendOptions,
  origin: number,
): Promise<BurstResponse> {
  const sentMs = performance.now() - origin;
  const measure = (rest: Omit<BurstResponse, 'sentMs' | 'doneMs' | 'latencyMs'>): BurstResponse => {
    const doneMs = performance.now() - origin;
    const answer = { ...rest, sentMs, doneMs, latencyMs: doneMs - sentMs };
    options.onAnswer?.(answer);
    return answer;
  };
  try {
    const res = await request(url + RECOGNITION_PATH, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers, ...options.headers },
      body,
      dispatcher: agent,
      signal: options.signal,
    });
    await res.body.text();
    const header = (name: string) => {
      const value = res.headers[name];
      return typeof value === 'string' ? value : undefined;
    };
    return measure({
      status: res.statusCode,
      cacheStatus: header('cache-status'),
      retryAfter: header('retry-after'),
    });
  } catch (error) {
    const { code, message, name } = error as { code?: string; message?: string; name?: string };
    const aborted = options.signal?.aborted === true || name === 'AbortError';
    return measure({ status: 0, error: aborted ? 'aborted' : (code ?? message) });
  }
}

/** Sends every body at once, each on its own connection, and waits for all the answers. */
export async function burst(
  url: string,
  headers: Record<string, string>,
  bodies: readonly Body[],
  options: SendOptions & { onFirstAnswer?: () => void } = {},
): Promise<BurstResponse[]> {
  const agent = loadAgent(bodies.length + 16);
  const started = performance.now();
  const { onFirstAnswer, ...sendOptions } = options;
  try {
    return await Promise.all(
      bodies.map(async (body) => {
        const answer = await send(agent, url, headers, body, sendOptions, started);
        onFirstAnswer?.();
        return answer;
      }),
    );
  } finally {
    await agent.destroy();
  }
}

/**
 * An open loop: request i is sent at i / rate seconds, whatever the answers do, until
 * `durationMs` has passed; then waits for the answers (or the signal).
 */
export async function openLoop(options: {
  url: string;
  headers: Record<string, string>;
  rate: number;
  durationMs: number;
  body: (i: number) => Body;
  connections: number;
  signal?: AbortSignal;
  onAnswer?: (answer: BurstResponse) => void;
}): Promise<BurstResponse[]> {
  const agent = loadAgent(options.connections);
  const started = performance.now();
  const pending: Array<Promise<BurstResponse>> = [];
  const sendOptions: SendOptions = { signal: options.signal, onAnswer: options.onAnswer };
  try {
    for (let i = 0; ; i++) {
      const due = (i * 1000) / options.rate;
      if (due >= options.durationMs || options.signal?.aborted) break;
      const wait = due - (performance.now() - started);
      if (wait > 1) await sleep(wait);
      pending.push(
        send(agent, options.url, options.headers, options.body(i), sendOptions, started),
      );
    }
    return await Promise.all(pending);
  } finally {
    await agent.destroy();
  }
}

/**
 * A closed loop: `workers` senders, each sending its next request as soon as the last is
 * answered, until the signal aborts them.
 */
export async function closedLoop(options: {
  url: string;
  headers: Record<string, string>;
  workers: number;
  body: (i: number) => Body;
  signal: AbortSignal;
  onAnswer?: (answer: BurstResponse) => void;
}): Promise<BurstResponse[]> {
  const agent = loadAgent(options.workers + 16);
  const started = performance.now();
  const answers: BurstResponse[] = [];
  const sendOptions: SendOptions = { signal: options.signal, onAnswer: options.onAnswer };
  let next = 0;
  const worker = async () => {
    while (!options.signal.aborted) {
      const body = options.body(next++);
      answers.push(await send(agent, options.url, options.headers, body, sendOptions, started));
    }
  };
  try {
    await Promise.all(Array.from({ length: options.workers }, worker));
    return answers;
  } finally {
    await agent.destroy();
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
