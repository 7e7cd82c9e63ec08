import { connect, type Socket } from 'node:net';
import { expect, test, vi } from 'vitest';
import {
  FAKE_UPSTREAM_DEFAULT_TOKEN,
  type FakeUpstream,
  type FakeUpstreamOptions,
  startFakeUpstream,
} from '../dev/fake-upstream.ts';
import { buildApp } from '../src/app.ts';
import { type ClientRecord, ClientRegistry, hashClientKey } from '../src/clients/registry.ts';
import { type Config, type ConfigInput, loadConfig } from '../src/config.ts';

/** A 1×1 PNG, and the same image as other formats' magic bytes, for valid `queries`. */
export const PNG_1X1 =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==';
export const JPEG_HEADER = Buffer.from([
  0xff, 0xd8, 0xff, 0xe0, 0, 0x10, 0x4a, 0x46, 0x49, 0x46,
]).toString('base64');
export const GIF_HEADER = Buffer.from('GIF89a\x01\x00\x01\x00', 'latin1').toString('base64');
export const WEBP_HEADER = Buffer.from('RIFF\x24\x00\x00\x00WEBPVP8 ', 'latin1').toString('base64');
export const BMP_HEADER = Buffer.from(
  'BM\x3a\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00',
  'latin1',
).toString('base64');

export const CLIENT_KEY = 'agw_test_client_key_0123456789abcdefghijklmnopqrstuvwxyz';
export const OTHER_CLIENT_KEY = 'agw_other_client_key_9876543210zyxwvutsrqponmlkjihgfedcba';
export const UPSTREAM_TOKEN = FAKE_UPSTREAM_DEFAULT_TOKEN;

export const validBody = (overrides: Record<string, unknown> = {}) => ({
  question: 'Please click each image containing a bus',
  queries: [PNG_1X1],
  ...overrides,
});

/** Two clients; `limits` adds a rateLimit/quota to checkout-service (the CLIENT_KEY holder). */
export function testRegistry(
  limits: Pick<ClientRecord, 'rateLimit' | 'quota' | 'maxInFlight'> = {},
): ClientRegistry {
  return new ClientRegistry([
    { id: 'checkout-service', keySha256: hashClientKey(CLIENT_KEY), ...limits },
    { id: 'other-service', keySha256: hashClientKey(OTHER_CLIENT_KEY) },
  ]);
}

export interface TestGateway {
  app: Awaited<ReturnType<typeof buildApp>>;
  /** The operations server: /metrics, /docs, /openapi.json, /usage. */
  admin: Awaited<ReturnType<typeof buildApp>>['admin'];
  fake: FakeUpstream;
  config: Config;
  /** Every log line written so far, raw. */
  logLines: string[];
  /** Parsed log lines. */
  logs(): Array<Record<string, unknown>>;
  close(): Promise<void>;
}

export interface GatewayOptions {
  /** Limits for checkout-service. */
  limits?: Pick<ClientRecord, 'rateLimit' | 'quota' | 'maxInFlight'>;
  /** Share one fake upstream between several gateways (replicas); closed by its owner, not here. */
  fake?: FakeUpstream;
  /** Options of the fake this gateway starts for itself. */
  fakeOptions?: FakeUpstreamOptions;
}

/** Builds the app against a fake upstream, capturing every log line (at debug level). */
export async function startGateway(
  overrides: Partial<Record<keyof ConfigInput, string>> = {},
  options: GatewayOptions = {},
): Promise<TestGateway> {
  const ownsFake = options.fake === undefined;
  const fake = options.fake ?? (await startFakeUpstream(options.fakeOptions));
  const config = loadConfig({
    ACEDATA_API_TOKEN: UPSTREAM_TOKEN,
    ACEDATA_BASE_URL: fake.url,
    LOG_LEVEL: 'debug',
    ...overrides,
  });
  const logLines: string[] = [];
  const app = await buildApp(config, {
    clients: testRegistry(options.limits),
    logDestination: { write: (line: string) => logLines.push(line) },
  });
  return {
    app,
    admin: app.admin,
    fake,
    config,
    logLines,
    logs: () => logLines.map((line) => JSON.parse(line) as Record<string, unknown>),
    close: async () => {
      await app.close();
      if (ownsFake) await fake.close();
    },
  };
}

export const authHeaders = (key = CLIENT_KEY) => ({
  authorization: `Bearer ${key}`,
  'content-type': 'application/json',
});

export const RECOGNITION = '/captcha/recognition/hcaptcha';
export const TOKEN = '/captcha/token/hcaptcha';
export const TASKS = '/captcha/tasks';

/**
 * POSTs JSON to a captcha route as checkout-service (or `key`), with extra headers: `body`
 * serialised, or `payload` sent byte for byte.
 */
export function postJson(
  g: TestGateway,
  options: {
    body?: unknown;
    payload?: string | Buffer;
    key?: string;
    headers?: Record<string, string>;
    url?: string;
  } = {},
) {
  return g.app.inject({
    method: 'POST',
    url: options.url ?? RECOGNITION,
    headers: { ...authHeaders(options.key), ...options.headers },
    payload: options.payload ?? JSON.stringify(options.body ?? validBody()),
  });
}

/**
 * Options for `expect.poll` when waiting for an event (a call queued, a lock taken, Redis seen
 * down): a generous bound on the wait, so a loaded machine only makes the test slower, never red.
 */
export const EVENT_BOUND = { timeout: 10_000 } as const;

/** Rejects if `promise` has not settled within `ms`: a bound on waiting, not a timing assertion. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, bound]);
  } finally {
    clearTimeout(timer);
  }
}

/** What a test's gateway is built with: settings (environment) and the options above. */
export interface GatewaySettings extends GatewayOptions {
  env?: Partial<Record<keyof ConfigInput, string>>;
}

/**
 * `gatewayTest(name, async ({ gateway }) => …)`: a gateway with its own fake upstream, built for
 * the test and closed after it. A describe block changes the settings with
 * `gatewayTest.override('gatewaySettings', { env: { … }, limits: { … } })`.
 */
export const gatewayTest = test
  .extend<'gatewaySettings', GatewaySettings>('gatewaySettings', {})
  .extend('gateway', async ({ gatewaySettings }, { onCleanup }) => {
    const gateway = await startGateway(gatewaySettings.env, gatewaySettings);
    onCleanup(() => gateway.close());
    return gateway;
  });

/** An HTTP/1.1 response read off a raw socket. */
export interface RawResponse {
  status: number;
  /** `HTTP/1.1 408 Request Timeout`, reason phrase included. */
  statusLine: string;
  /** Lower-case names; a repeated header keeps its last value. */
  headers: Record<string, string>;
  body: string;
  /** The whole response as received (latin1), for scanning. */
  raw: string;
}

/** A raw client connection: exact bytes out, the first response in, and the close seen. */
export interface RawConnection {
  socket: Socket;
  /** The first complete response; rejects if the connection ends before it is complete. */
  response: Promise<RawResponse>;
  /** Settles when the socket closes, with the error that closed it (EPIPE, ECONNRESET), if any. */
  closed: Promise<NodeJS.ErrnoException | undefined>;
  /**
   * Writes `total` bytes (or forever when `Infinity`) in chunks, honouring backpressure, until done
   * or the connection ends; resolves with the bytes written.
   */
  stream(total: number, chunk?: Buffer): Promise<number>;
}

/** Opens a connection to 127.0.0.1:`port` and writes `head` (request line, headers, maybe body). */
export function rawConnection(port: number, head: string | Buffer): RawConnection {
  const socket = connect(port, '127.0.0.1');
  let error: NodeJS.ErrnoException | undefined;
  socket.on('error', (e: NodeJS.ErrnoException) => {
    error ??= e;
  });
  const closed = new Promise<NodeJS.ErrnoException | undefined>((resolve) =>
    socket.once('close', () => resolve(error)),
  );
  const response = new Promise<RawResponse>((resolve, reject) => {
    let received = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const parsed = parseRawResponse(received);
      if (parsed) {
        socket.off('data', onData);
        resolve(parsed);
      }
    };
    socket.on('data', onData);
    void closed.then((e) =>
      reject(new Error(`connection closed before a whole response (${e?.code ?? 'no error'})`)),
    );
  });
  socket.write(head);
  const stream = async (total: number, chunk = Buffer.alloc(64 * 1024, 0x20)) => {
    let written = 0;
    while (written < total && socket.writable && !socket.destroyed) {
      const piece = total - written >= chunk.length ? chunk : chunk.subarray(0, total - written);
      written += piece.length;
      if (!socket.write(piece)) await drainedOrClosed(socket);
    }
    return written;
  };
  return { socket, response, closed, stream };
}

/** Resolves on 'drain' or 'close', never rejects (a write error ends the writer, not the test). */
function drainedOrClosed(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      socket.off('drain', done);
      socket.off('close', done);
      resolve();
    };
    socket.on('drain', done);
    socket.on('close', done);
  });
}

function parseRawResponse(received: Buffer): RawResponse | undefined {
  const end = received.indexOf('\r\n\r\n');
  if (end < 0) return undefined;
  const [statusLine = '', ...lines] = received.toString('latin1', 0, end).split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const at = line.indexOf(':');
    headers[line.slice(0, at).trim().toLowerCase()] = line.slice(at + 1).trim();
  }
  const length = Number(headers['content-length'] ?? 0);
  if (received.length < end + 4 + length) return undefined;
  const body = received.toString('utf8', end + 4, end + 4 + length);
  const raw = received.toString('latin1', 0, end + 4 + length);
  return { status: Number(statusLine.split(' ')[1]), statusLine, headers, body, raw };
}

/** Makes the gateway's API server listen on 127.0.0.1, port 0; resolves with the port. */
export async function listenLocally(g: TestGateway): Promise<number> {
  await g.app.listen({ host: '127.0.0.1', port: 0 });
  const address = g.app.server.address();
  if (typeof address !== 'object' || address === null) throw new Error('not listening');
  return address.port;
}

/** The sum of a metric's series whose labels include `labels` (0 when none), read from the registry. */
export async function metricSum(
  g: Pick<TestGateway, 'app'>,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const metric = g.app.metrics.registry.getSingleMetric(name);
  if (!metric) throw new Error(`no metric named ${name}`);
  const { values } = await metric.get();
  return values
    .filter((v) => Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want))
    .reduce((total, v) => total + v.value, 0);
}

/**
 * The admin server's /metrics as `name{labels}` → value (e.g.
 * `gateway_merge_events_total{event="merged"}`); absent series read as undefined.
 */
export async function scrapeMetrics(g: TestGateway): Promise<Map<string, number>> {
  const res = await g.admin.inject({ method: 'GET', url: '/metrics' });
  if (res.statusCode !== 200) throw new Error(`/metrics answered ${res.statusCode}`);
  const samples = new Map<string, number>();
  for (const line of res.body.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const at = line.lastIndexOf(' ');
    samples.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return samples;
}

/** The completion log lines written so far (one per request). */
export const completionLines = (g: TestGateway) =>
  g.logs().filter((line) => line.msg === 'request completed');

/** The completion line of the request answered with `res` (matched by its x-request-id). */
export function completionOf(
  g: TestGateway,
  res: { headers: Record<string, unknown> },
): Record<string, unknown> | undefined {
  return completionLines(g).find((line) => line.trace_id === res.headers['x-request-id']);
}

/**
 * Holds upstream calls at the gateway's gate, without sleeps, so a test decides when each starts.
 * Needs `UPSTREAM_RATE_PER_SECOND: '1'` (one start per second) and a frozen clock
 * (`vi.useFakeTimers({ toFake: ['Date'] })` before the first request). `takeSlot()` makes one
 * call that uses the current second's only start; every upstream call after it waits at the gate
 * until `next()` moves the clock a second on, which lets exactly one more start (on the gate's own
 * timer, within a second of real time).
 */
export function gateHold(g: TestGateway) {
  return {
    /**
     * One answered request (other-service, a question of its own: give replicas sharing a cache
     * different ones) that takes the second's start slot.
     */
    async takeSlot(question = 'this request takes the start slot'): Promise<void> {
      const res = await postJson(g, { key: OTHER_CLIENT_KEY, body: validBody({ question }) });
      if (res.statusCode !== 200) throw new Error(`the slot-taking request got ${res.statusCode}`);
    },
    /** Resolves once `count` calls wait at the gate (a bound on waiting, not a timing claim). */
    async queued(count: number): Promise<void> {
      await expect.poll(() => metricSum(g, 'gateway_upstream_queued'), EVENT_BOUND).toBe(count);
    },
    /** Lets every waiting call start, one a second, and resolves when the gate is empty. */
    async releaseAll(): Promise<void> {
      for (let left = await metricSum(g, 'gateway_upstream_queued'); left > 0; left--) {
        vi.advanceTimersByTime(1_000);
        await this.queued(left - 1);
      }
    },
    /** Lets one more call start. */
    next(): void {
      vi.advanceTimersByTime(1_000);
    },
  };
}
