// Fuzz: 12,000 generated requests through app.inject (six fast-check properties), plus a raw
// TCP sample for what inject cannot express (bytes the HTTP parser itself sees). Each answer is
// compared with the contract's oracle (fuzz-oracle.ts). Invariants: no 5xx, no crash, no upstream
// call for an invalid request, every forwarded body exactly what the client sent (only `queries`
// put in standard Base64), every error the gateway makes is the envelope with the status of its
// code (parser rejections included), trace ids honoured, one completion log line per answer,
// Object.prototype untouched, no secret in logs, bodies or /metrics.
import { METHODS } from 'node:http';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  authHeaders,
  CLIENT_KEY,
  listenLocally,
  OTHER_CLIENT_KEY,
  PNG_1X1,
  postJson,
  RECOGNITION,
  rawConnection,
  startGateway,
  TASKS,
  type TestGateway,
  TOKEN,
  UPSTREAM_TOKEN,
  validBody,
  within,
} from '../helpers.ts';
import {
  type Expectation,
  expectationFor,
  type FuzzRequest,
  forwardedProblem,
  headerAsSeen,
  payloadBytes,
} from './fuzz-oracle.ts';
import {
  adminMetrics,
  asEnvelope,
  budget,
  clientErrorProblem,
  drainLogs,
  gatewayErrorProblem,
  IMAGE_KINDS,
  type ImageKind,
  isClientErrorAnswer,
  makeImage,
  report,
  SecretScanner,
  seededRandom,
  TRACE_ID,
  UUID,
} from './support.ts';

const SEED = Number(process.env.FUZZ_SEED ?? 20_251_130);
/**
 * numRuns per property; they add up to 12,000 inject requests, about 25 s of one core: the run
 * stays within its budget on a 2-core machine shared with other work (FUZZ_SCALE=5 for a deep run).
 */
const SCALE = Number(process.env.FUZZ_SCALE ?? 1);
const RUNS = Object.fromEntries(
  Object.entries({
    bodies: 4_000,
    bytes: 2_000,
    json: 2_000,
    token: 1_500,
    headers: 1_200,
    routes: 1_270,
    edges: 30,
  }).map(([name, runs]) => [name, Math.round(runs * SCALE)]),
) as Record<'bodies' | 'bytes' | 'json' | 'token' | 'headers' | 'routes' | 'edges', number>;
const TCP_SAMPLE = 400;
const BODY_LIMIT = 4 * 1024 * 1024;
/** IMAGES_MAX and IMAGE_MAX_BYTES below their defaults, so the generators reach both sides. */
const IMAGES_MAX = 12;
const IMAGE_MAX_BYTES = 1024 * 1024;
/**
 * A bound, not an expectation: a property takes 1–25 s on a quiet 2-core machine and several times
 * that on a busy one. budget() cuts it to what is left of the run's 5 minutes.
 */
const PROPERTY_TIMEOUT_MS = 240_000;
/** How long one raw TCP exchange may take (a bound on waiting only). */
const EXCHANGE_BOUND_MS = 20_000;
/** Tasks created before the fuzz, per client: recognition and token, async. */
const TASKS_PER_CLIENT = 4;

let gw: TestGateway;
const scanner = new SecretScanner();
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);
const prototypeKeysBefore = prototypeKeys();
/** Task id → the key of the client that created it; filled in beforeAll, read by generators. */
const taskOwners = new Map<string, string>();
const knownTaskIds: string[] = [];
const ORACLE = {
  clientKeys: [CLIENT_KEY, OTHER_CLIENT_KEY],
  bodyLimitBytes: BODY_LIMIT,
  imagesMax: IMAGES_MAX,
  imageMaxBytes: IMAGE_MAX_BYTES,
  taskOwners,
};

const stats = {
  requests: 0,
  /** Main-port requests outside the properties (task set-up, raw TCP, /healthz, …). */
  otherRequests: 0,
  /** Requests to the admin server: they write completion lines but are not in its metrics. */
  adminRequests: 0,
  forwarded: 0,
  /** Forwarded bodies that had to be rebuilt (queries put in standard Base64). */
  rewritten: 0,
  injectRefused: 0,
  statuses: {} as Record<string, number>,
  /** Answers by the oracle's reading of the route (malformed-url, unknown, …). */
  byRoute: {} as Record<Expectation['route'], number>,
  /** The gateway's own refusals, by envelope code. */
  codes: {} as Record<string, number>,
  completionLines: 0,
  /**
   * Answers whose trace id the gateway generated (a UUID, so unique), by trace id: each must have
   * its own completion line. `what` describes the request for a failure message.
   */
  generatedIds: new Map<string, string>(),
  /** The UUID trace ids of the completion lines. */
  lineIds: new Set<string>(),
  /** Completion lines of requests the HTTP parser rejected, by trace id. */
  clientErrorLines: new Map<string, Record<string, unknown>>(),
  errorLines: 0,
  perProperty: {} as Record<string, { runs: number; ms: number }>,
  slowest: { ms: 0, what: '' },
  /** Time spent in inject (the rest of a property's time is fast-check generating inputs). */
  injectMs: 0,
};

const count = (table: Record<string, number>, key: string | number) => {
  table[key] = (table[key] ?? 0) + 1;
};

/** A short description of a request for figures and failures (bodies cut, keys masked). */
function summarise(request: FuzzRequest): string {
  const payload = request.payload === undefined ? '' : String(request.payload);
  return `${request.method} ${request.url.slice(0, 60)} ${payload.length} bytes: ${payload.slice(0, 80)}`
    .replaceAll(CLIENT_KEY, '<key>')
    .replaceAll(OTHER_CLIENT_KEY, '<key>');
}

beforeAll(async () => {
  process.on('unhandledRejection', onUnhandled);
  process.on('uncaughtException', onUnhandled);
  gw = await startGateway({
    RATE_LIMIT_MAX: '100000000',
    // The upstream gate's rate would pace the fuzz, not test it.
    UPSTREAM_RATE_PER_SECOND: '100000',
    UPSTREAM_TIMEOUT_MS: '5000',
    BODY_LIMIT_BYTES: String(BODY_LIMIT),
    IMAGES_MAX: String(IMAGES_MAX),
    IMAGE_MAX_BYTES: String(IMAGE_MAX_BYTES),
  });
  scanner.addSecret(UPSTREAM_TOKEN, 'the upstream token');
  scanner.addSecret(CLIENT_KEY, 'a client key');
  scanner.addSecret(OTHER_CLIENT_KEY, 'a client key');
  // Tasks to poll: each client's own, which the other client must not read.
  for (const key of [CLIENT_KEY, OTHER_CLIENT_KEY]) {
    for (let i = 0; i < TASKS_PER_CLIENT; i++) {
      const res =
        i % 2 === 0
          ? await postJson(gw, { key, body: validBody({ question: `task ${i}`, async: true }) })
          : await postJson(gw, {
              key,
              url: TOKEN,
              body: { website_key: `site-${i}`, website_url: 'https://example.com/', async: true },
            });
      stats.otherRequests++;
      expect(res.statusCode, res.body).toBe(201);
      const taskId = (res.json() as { task_id: string }).task_id;
      taskOwners.set(taskId, key);
      knownTaskIds.push(taskId);
    }
  }
});

afterAll(async () => {
  process.off('unhandledRejection', onUnhandled);
  process.off('uncaughtException', onUnhandled);
  await gw?.close();
});

function prototypeKeys(): string {
  return [Object.prototype, Array.prototype, Function.prototype, String.prototype]
    .map((proto) => Object.getOwnPropertyNames(proto).sort().join(','))
    .join('|');
}

// ---------------------------------------------------------------------------------------------
// Sending one request and judging its answer

function drain(): void {
  drainLogs(gw, scanner, 'gateway log', (line) => {
    if (typeof line.level === 'number' && line.level >= 50) stats.errorLines++;
    if (line.msg !== 'request completed') return;
    stats.completionLines++;
    const traceId = String(line.trace_id);
    if (UUID.test(traceId)) stats.lineIds.add(traceId);
    if (line.client_error !== undefined) stats.clientErrorLines.set(traceId, line);
  });
}

/** Remembers an answer whose trace id the gateway generated, to find its completion line later. */
function answered(requestId: unknown, what: string): void {
  if (typeof requestId === 'string' && UUID.test(requestId)) {
    stats.generatedIds.set(requestId, what);
  }
}

async function send(request: FuzzRequest): Promise<void> {
  const expectation = expectationFor(request, ORACLE);
  gw.fake.calls.length = 0;
  let res: Awaited<ReturnType<typeof gw.app.inject>>;
  const sentAt = performance.now();
  try {
    res = await gw.app.inject({
      method: request.method as 'GET',
      url: request.url,
      headers: request.headers,
      payload: request.payload,
    });
  } catch {
    // light-my-request refused to build the request (the gateway never saw it).
    stats.injectRefused++;
    return;
  }
  const calls = gw.fake.calls.splice(0);
  const took = performance.now() - sentAt;
  stats.injectMs += took;
  if (took > stats.slowest.ms) stats.slowest = { ms: Math.round(took), what: summarise(request) };
  stats.requests++;
  stats.forwarded += calls.length;
  count(stats.statuses, res.statusCode);
  count(stats.byRoute, expectation.route);
  if (res.statusCode >= 400) scanner.scan('error body', res.body);
  for (const call of calls) {
    const headers = JSON.stringify(call.headers);
    if (call.token !== UPSTREAM_TOKEN)
      throw new Error('an upstream call without the gateway token');
    if (headers.includes(CLIENT_KEY) || headers.includes(OTHER_CLIENT_KEY)) {
      throw new Error('a client key was sent upstream');
    }
    if (call.headers['x-request-id'] !== res.headers['x-request-id']) {
      throw new Error('the upstream call carries another trace id than the answer');
    }
  }
  answered(res.headers['x-request-id'], summarise(request));
  if (stats.requests % 500 === 0) drain();
  const problems = judge(request, expectation, res, calls);
  if (problems.length > 0) {
    throw new Error(
      `${problems.join('; ')} | ${res.statusCode} ${res.body.slice(0, 200)} | expected ${[
        ...expectation.statuses,
      ].join('/')} ${expectation.code ?? ''} forwardable=${expectation.forwardable}`,
    );
  }
}

function judge(
  request: FuzzRequest,
  expectation: Expectation,
  res: { statusCode: number; body: string; headers: Record<string, unknown> },
  calls: ReadonlyArray<{ rawBody: string }>,
): string[] {
  const problems: string[] = [];
  const { statusCode: status, body } = res;
  if (status >= 500) problems.push(`a ${status} from the gateway`);
  if (calls.length > 1) problems.push(`${calls.length} upstream calls for one request`);
  if (calls.length > 0 && !expectation.forwardable) {
    problems.push('forwarded a request the contract says is invalid');
  }
  const [call] = calls;
  if (call && expectation.forwardable) {
    if (expectation.forwarded?.exact === false) stats.rewritten++;
    const problem = forwardedProblem(expectation, payloadBytes(request.payload), call.rawBody);
    if (problem) problems.push(problem);
  }
  if (!expectation.statuses.has(status)) problems.push(`status ${status}`);
  if (status >= 400) {
    if (calls.length > 0) {
      // An upstream error passes through with its own trace id.
      if (!asEnvelope(body)) problems.push('an upstream error not passed through as is');
    } else if (request.method === 'HEAD') {
      if (body !== '') problems.push('an answer to HEAD with a body');
    } else {
      const problem = gatewayErrorProblem(status, body, res.headers['x-request-id']);
      if (problem) problems.push(problem);
      const code = asEnvelope(body)?.error.code ?? '?';
      count(stats.codes, code);
      if (expectation.code !== undefined && code !== expectation.code) {
        problems.push(`code ${code}, not ${expectation.code}`);
      }
    }
  } else if (status === 200 || status === 201) {
    const problem = answerProblem(expectation.route, status, body);
    if (problem) problems.push(problem);
  }
  // Every answer carries a trace id, including those refused before routing (a malformed URL).
  const incoming = headerAsSeen(request.headers, 'x-request-id');
  const echoed = res.headers['x-request-id'];
  if (typeof incoming === 'string' && TRACE_ID.test(incoming)) {
    if (echoed !== incoming) problems.push('a valid x-request-id was not used');
  } else if (typeof echoed !== 'string' || !UUID.test(echoed)) {
    problems.push(`x-request-id ${JSON.stringify(echoed)} is not a generated UUID`);
  }
  return problems;
}

/** A success must hold what its route promises (the upstream's bytes, passed through). */
function answerProblem(route: Expectation['route'], status: number, body: string) {
  if (route === 'operations' || route === 'unknown' || route === 'malformed-url') return undefined;
  const json = JSON.parse(body) as Record<string, unknown>;
  if (status === 201) {
    return typeof json.task_id === 'string' ? undefined : 'a 201 without task_id';
  }
  if (route === 'recognition') {
    return typeof json.solution === 'object' && json.solution !== null
      ? undefined
      : 'a 200 without solution';
  }
  if (route === 'token') return typeof json.token === 'string' ? undefined : 'a 200 without token';
  return json.status === 'ready' || json.status === 'processing'
    ? undefined
    : 'a poll answered 200 without a task status';
}

// ---------------------------------------------------------------------------------------------
// Generators

const ABSENT = Symbol('absent');
type Maybe<T> = T | typeof ABSENT;

/** Images are drawn from a bounded family (kind × seed × size), each one added to the scanner. */
const imageBytes = fc
  .record({
    kind: fc.oneof(
      { weight: 8, arbitrary: fc.constantFrom<ImageKind>(...IMAGE_KINDS) },
      { weight: 1, arbitrary: fc.constantFrom('noise', 'short-png') },
    ),
    seed: fc.nat(63),
    size: fc.constantFrom(12, 64, 700, 3_000),
  })
  .map(({ kind, seed, size }) => {
    const random = seededRandom(seed * 7_919 + size);
    let image: Buffer;
    if (kind === 'noise') image = Buffer.from(Array.from({ length: size }, () => random() * 256));
    else if (kind === 'short-png') image = makeImage(random, 'png', 8).subarray(0, 5);
    else image = makeImage(random, kind as ImageKind, size);
    scanner.addImage(image.toString('base64'));
    return image;
  });

const insertAt = (text: string, at: number, what: string) =>
  text.slice(0, at) + what + text.slice(at);
const JUNK = ['!', '-', '_', '.', '~', '*', '"', '\\', 'é', '\u0000', '%', '=='];

const ENCODINGS = {
  plain: (b64: string) => b64,
  dataUrl: (b64: string) => `data:image/png;base64,${b64}`,
  dataUrlUpper: (b64: string) => `DATA:IMAGE/WEBP;BASE64,${b64}`,
  dataUrlOther: (b64: string) => `data:application/octet-stream;base64,${b64}`,
  dataUrlSpace: (b64: string) => ` data:image/png;base64,${b64}`,
  wrappedLf: (b64: string) => b64.replace(/(.{76})/g, '$1\n'),
  wrappedCrlf: (b64: string) => b64.replace(/(.{60})/g, '$1\r\n'),
  spaces: (b64: string, n: number) => insertAt(b64, n % (b64.length + 1), ' \t '),
  unpadded: (b64: string) => b64.replace(/=+$/, ''),
  urlSafe: (b64: string) => b64.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, ''),
  urlSafePadded: (b64: string) => b64.replace(/\+/g, '-').replace(/\//g, '_'),
  urlSafeJunk: (b64: string) => `${b64.replace(/\+/g, '-').replace(/\//g, '_')}_-`,
  junk: (b64: string, n: number) =>
    insertAt(b64, n % (b64.length + 1), JUNK[n % JUNK.length] ?? '!'),
  truncated: (b64: string, n: number) => b64.slice(0, Math.max(0, b64.length - 1 - (n % 3))),
  extraPadding: (b64: string, n: number) => `${b64}${'='.repeat(1 + (n % 3))}`,
  paddingInside: (b64: string, n: number) => insertAt(b64, n % (b64.length + 1), '='),
} as const;
type Encoding = keyof typeof ENCODINGS;

/** 1 MiB + 3 bytes of PNG: over IMAGE_MAX_BYTES, under the body limit; and one exactly at it. */
const OVERSIZED_IMAGE = makeImage(seededRandom(1), 'png', IMAGE_MAX_BYTES + 3).toString('base64');
const LARGEST_IMAGE = makeImage(seededRandom(2), 'bmp', IMAGE_MAX_BYTES).toString('base64');

/** Image URLs: forwarded unchanged when valid http(s) URLs of at most 2,048 characters. */
const imageUrl = fc.oneof(
  {
    weight: 4,
    arbitrary: fc
      .tuple(fc.constantFrom('https', 'http', 'HTTPS'), fc.webPath(), fc.nat(99))
      .map(([scheme, path, n]) => `${scheme}://img.example.com${path}/${n}.jpg`),
  },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      `https://example.com/${'a'.repeat(2_048 - 'https://example.com/'.length)}`,
      `https://example.com/${'a'.repeat(2_049 - 'https://example.com/'.length)}`,
      'https://exa mple.com/x.png',
      'http://[::1',
      'https://',
      'http:/one-slash.png',
      'ftp://example.com/x.png',
      'https://example.com/a b.png?x=1#y',
    ),
  },
);

const imageText: fc.Arbitrary<unknown> = fc.oneof(
  {
    weight: 12,
    arbitrary: fc
      .tuple(
        imageBytes,
        fc.oneof(
          { weight: 6, arbitrary: fc.constant<Encoding>('plain') },
          { weight: 4, arbitrary: fc.constantFrom<Encoding>('dataUrl', 'wrappedLf', 'unpadded') },
          {
            weight: 4,
            arbitrary: fc.constantFrom<Encoding>(...(Object.keys(ENCODINGS) as Encoding[])),
          },
        ),
        fc.nat(100_000),
      )
      .map(([bytes, encoding, n]) => ENCODINGS[encoding](bytes.toString('base64'), n)),
  },
  { weight: 2, arbitrary: imageUrl },
  { weight: 1, arbitrary: fc.constantFrom('', ' ', '\n', 'data:image/png;base64,', '====') },
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }) },
  { weight: 1, arbitrary: fc.oneof(fc.integer(), fc.constant(null), fc.boolean(), fc.object()) },
);

const question: fc.Arbitrary<Maybe<unknown>> = fc.oneof(
  { weight: 8, arbitrary: fc.string({ minLength: 1, maxLength: 40 }) },
  { weight: 3, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 10 }) },
  {
    weight: 1,
    arbitrary: fc.constantFrom('', ' ', '\n\t ', '\u00a0', '\u3000', '\ufeff', '\u200b', '\u0000'),
  },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      'a'.repeat(500),
      'a'.repeat(501),
      ` ${'b'.repeat(500)} `,
      '😀'.repeat(500),
      '😀'.repeat(501),
    ),
  },
  {
    weight: 1,
    arbitrary: fc.oneof(
      fc.integer(),
      fc.boolean(),
      fc.constant(null),
      fc.array(fc.string(), { maxLength: 2 }),
      fc.constant(ABSENT),
    ),
  },
);

const queries: fc.Arbitrary<Maybe<unknown>> = fc.oneof(
  { weight: 40, arbitrary: fc.array(imageText, { minLength: 1, maxLength: 3 }) },
  // At and past IMAGES_MAX. (Megabyte images are the `edges` test's: a few cost what 1,000 small
  // requests do.)
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.constantFrom(IMAGES_MAX, IMAGES_MAX + 1), imageText)
      .map(([n, item]) => Array(n).fill(item)),
  },
  { weight: 5, arbitrary: fc.array(imageText, { minLength: 0, maxLength: 20 }) },
  {
    weight: 5,
    arbitrary: fc.oneof(imageText, fc.constant(ABSENT), fc.dictionary(fc.string(), fc.string())),
  },
);

const asyncFlag: fc.Arbitrary<Maybe<unknown>> = fc.oneof(
  { weight: 8, arbitrary: fc.constant(ABSENT) },
  { weight: 2, arbitrary: fc.boolean() },
  { weight: 1, arbitrary: fc.constantFrom(null, 'true', 0, 1, {}, []) },
);

const nested = (levels: number, open = '[', close = ']') =>
  `${open.repeat(levels)}${open === '[' ? '' : '1'}${close.repeat(levels)}`;

/** Extra fields as raw JSON text, so keys such as "__proto__" reach the parser as written. */
const extraKey = fc.oneof(
  { weight: 3, arbitrary: fc.string({ maxLength: 12 }).map((k) => JSON.stringify(k)) },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      '"__proto__"',
      '"constructor"',
      '"prototype"',
      '"toJSON"',
      '"hasOwnProperty"',
      '"valueOf"',
      '"\\u005f\\u005fproto\\u005f\\u005f"',
      '"__pro\\u0074o__"',
      '"question"',
      '"queries"',
      '"async"',
    ),
  },
);
const extraValue = fc.oneof(
  { weight: 3, arbitrary: fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)) },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      '{"polluted":"yes"}',
      '{"prototype":{"polluted":"yes"}}',
      '{"__proto__":{"polluted":"yes"}}',
      '[{"constructor":{"prototype":{"polluted":"yes"}}}]',
      // Numbers are forwarded as written, whatever a double makes of them.
      '1e400',
      '-1e999',
      '123456789012345678901234567890',
      '18446744073709551617',
      '1e-400',
      '-0',
      '1.0',
      '1E5',
      '0.1e1',
      '[1.50,-0.0,2e0]',
      nested(62),
      nested(63),
      nested(64),
      nested(5_000),
      nested(20_000, '{"a":', '}'),
    ),
  },
);
const extraFields = fc.oneof(
  { weight: 4, arbitrary: fc.constant([] as Array<[string, string]>) },
  {
    weight: 2,
    arbitrary: fc.array(fc.tuple(extraKey, extraValue), { minLength: 1, maxLength: 3 }),
  },
);

const recognitionBody = fc
  .record({ question, queries, async: asyncFlag, extra: extraFields, rotate: fc.nat(5) })
  .map(({ question: q, queries: images, async, extra, rotate }) => {
    const entries: string[] = [];
    if (q !== ABSENT) entries.push(`"question":${JSON.stringify(q)}`);
    if (images !== ABSENT) entries.push(`"queries":${JSON.stringify(images)}`);
    if (async !== ABSENT) entries.push(`"async":${JSON.stringify(async)}`);
    for (const [key, value] of extra) entries.push(`${key}:${value}`);
    const cut = entries.length === 0 ? 0 : rotate % entries.length;
    return `{${[...entries.slice(cut), ...entries.slice(0, cut)].join(',')}}`;
  });

const siteField = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.constantFrom('a5f74b19-9e45-40e0-b45d-47ff91b7a6c2', 'https://x.test/'),
  },
  { weight: 2, arbitrary: fc.string({ maxLength: 30 }) },
  { weight: 1, arbitrary: fc.oneof(fc.integer(), fc.constant(null), fc.boolean(), fc.object()) },
  { weight: 1, arbitrary: fc.constant(ABSENT) },
);
const optionalText = fc.oneof(
  { weight: 4, arbitrary: fc.constant(ABSENT) },
  { weight: 2, arbitrary: fc.string({ maxLength: 30 }) },
  { weight: 1, arbitrary: fc.oneof(fc.integer(), fc.constant(null), fc.array(fc.string())) },
);

/** `POST /captcha/token/hcaptcha` bodies: the spec's fields of every type, and extra fields. */
const tokenBody = fc
  .record({
    website_key: siteField,
    website_url: siteField,
    rqdata: optionalText,
    proxy: optionalText,
    async: asyncFlag,
    extra: extraFields,
    rotate: fc.nat(6),
  })
  .map(({ extra, rotate, ...fields }) => {
    const entries: string[] = [];
    for (const [name, value] of Object.entries(fields)) {
      if (value !== ABSENT) entries.push(`${JSON.stringify(name)}:${JSON.stringify(value)}`);
    }
    for (const [key, value] of extra) entries.push(`${key}:${value}`);
    const cut = entries.length === 0 ? 0 : rotate % entries.length;
    return `{${[...entries.slice(cut), ...entries.slice(0, cut)].join(',')}}`;
  });

/**
 * The expensive edges, few and each one deliberately: an image exactly at IMAGE_MAX_BYTES (valid)
 * and 3 bytes over it (400), three over-limit images (over the body limit: 413, answered before
 * the body is read), a 200,000-character question (valid), nesting far past 64 levels (400).
 */
const edgeBodies = fc
  .tuple(
    fc.constantFrom(
      [OVERSIZED_IMAGE],
      Array(3).fill(OVERSIZED_IMAGE),
      [LARGEST_IMAGE],
      [LARGEST_IMAGE, PNG_1X1],
      ['x', LARGEST_IMAGE],
    ),
    fc.constantFrom('edge', 'q'.repeat(200_000)),
    fc.constantFrom('', `,"x":${nested(20_000, '{"a":', '}')}`, `,"y":${nested(5_000)}`),
  )
  .map(
    ([images, q, extra]) =>
      `{"question":${JSON.stringify(q)},"queries":${JSON.stringify(images)}${extra}}`,
  );

const post = (url: string, payload: string | Buffer, headers = authHeaders()): FuzzRequest => ({
  method: 'POST',
  url,
  headers,
  payload,
});

/** Byte sequences that are not UTF-8: bare continuation, overlong, surrogate, > U+10FFFF, … */
const BAD_UTF8 = [
  [0xff],
  [0xfe],
  [0x80],
  [0xc0, 0x80],
  [0xc3],
  [0xe2, 0x82],
  [0xed, 0xa0, 0x80],
  [0xf4, 0x90, 0x80, 0x80],
  [0xf8, 0x88, 0x80, 0x80, 0x80],
];

const validTemplate = fc
  .tuple(fc.string({ minLength: 1, maxLength: 20 }), imageBytes)
  .map(([q, image]) =>
    JSON.stringify({ question: `fuzz ${q}`, queries: [image.toString('base64')] }),
  );
const validTokenTemplate = fc
  .string({ minLength: 1, maxLength: 20 })
  .map((site) => JSON.stringify({ website_key: site, website_url: 'https://example.com/' }));

const byteBodies = fc.oneof(
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)) },
  {
    // Invalid UTF-8 inside the question: still valid JSON once decoded with replacements.
    weight: 4,
    arbitrary: fc
      .tuple(validTemplate, fc.constantFrom(...BAD_UTF8), fc.nat(4))
      .map(([text, bad, offset]) => {
        const bytes = Buffer.from(text);
        const at = bytes.indexOf('fuzz ') + offset;
        return Buffer.concat([bytes.subarray(0, at), Buffer.from(bad), bytes.subarray(at)]);
      }),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(
        validTemplate,
        fc.array(fc.tuple(fc.nat(), fc.constantFrom(...BAD_UTF8)), { minLength: 1, maxLength: 3 }),
      )
      .map(([text, inserts]) => {
        let bytes = Buffer.from(text);
        for (const [n, bad] of inserts) {
          const at = n % (bytes.length + 1);
          bytes = Buffer.concat([bytes.subarray(0, at), Buffer.from(bad), bytes.subarray(at)]);
        }
        return bytes;
      }),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(validTemplate, fc.constantFrom('bom', 'nul', 'truncate', 'trailing', 'utf16'))
      .map(([text, how]) => {
        const bytes = Buffer.from(text);
        if (how === 'bom') return Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), bytes]);
        if (how === 'nul') return Buffer.concat([bytes, Buffer.from([0])]);
        if (how === 'truncate') return bytes.subarray(0, Math.floor(bytes.length / 2));
        if (how === 'trailing') return Buffer.concat([bytes, Buffer.from(' x')]);
        return Buffer.from(text, 'utf16le');
      }),
  },
);

const CONTENT_TYPES = [
  'application/json',
  'application/json; charset=utf-8',
  'APPLICATION/JSON',
  'application/json;;;',
  'application/json; charset=utf-16',
  ' application/json',
  'application/jsonx',
  'application/json-patch+json',
  'text/json',
  'text/plain',
  'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=x',
  '',
  '*/*',
  'json',
  'application/json, text/plain',
];

const TRACE_ALPHABET = fc.constantFrom(
  ...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-'.split(''),
);
const validTraceId = fc.string({ unit: TRACE_ALPHABET, minLength: 1, maxLength: 128 });

function headerSet() {
  const key = fc.constantFrom(CLIENT_KEY, OTHER_CLIENT_KEY);
  const authorization = fc.oneof(
    { weight: 6, arbitrary: key.map((k) => `Bearer ${k}`) },
    {
      weight: 4,
      arbitrary: fc
        .tuple(
          key,
          fc.constantFrom(
            (k: string) => `bearer ${k}`,
            (k: string) => `BEARER\t${k}`,
            (k: string) => `Bearer  ${k}  `,
            (k: string) => `Bearer ${k}\r\n`,
            (k: string) => `Bearer ${k}\n`,
            (k: string) => `Bearer ${k}\u0000`,
            (k: string) => ` Bearer ${k}`,
            (k: string) => `Bearer ${k} extra`,
            (k: string) => `Basic ${k}`,
            (k: string) => `Bearer ${k.slice(0, -1)}`,
            (k: string) => `Bearer ${k}x`,
            (k: string) => `Bearer ${k.toUpperCase()}`,
            (k: string) => `Bearer ${k}\r\nx-injected: 1`,
            () => 'Bearer',
            () => '',
          ),
        )
        .map(([k, form]) => form(k)),
    },
    { weight: 1, arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 80 }) },
    {
      weight: 1,
      arbitrary: fc.array(
        key.map((k) => `Bearer ${k}`),
        { minLength: 2, maxLength: 3 },
      ),
    },
    { weight: 1, arbitrary: fc.constant(ABSENT) },
  );
  const requestId = fc.oneof(
    { weight: 3, arbitrary: fc.constant(ABSENT) },
    { weight: 3, arbitrary: validTraceId },
    {
      weight: 3,
      arbitrary: fc.constantFrom(
        'a'.repeat(129),
        '',
        ' abc',
        'abc\r\nset-cookie: evil=1',
        'abc\nx-injected: 1',
        'a\u0000b',
        'a\u007fb',
        'é',
        '../../etc/passwd',
        'a b',
        '<script>',
      ),
    },
    { weight: 1, arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 40 }) },
    { weight: 1, arbitrary: fc.array(validTraceId, { minLength: 2, maxLength: 2 }) },
  );
  const contentType = fc.oneof(
    { weight: 6, arbitrary: fc.constant('application/json') },
    { weight: 3, arbitrary: fc.constantFrom(...CONTENT_TYPES) },
    { weight: 1, arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 30 }) },
    {
      weight: 1,
      arbitrary: fc.array(fc.constantFrom(...CONTENT_TYPES), { minLength: 2, maxLength: 2 }),
    },
    { weight: 1, arbitrary: fc.constant(ABSENT) },
  );
  const cacheControl = fc.oneof(
    { weight: 4, arbitrary: fc.constant(ABSENT) },
    {
      weight: 2,
      arbitrary: fc.constantFrom('no-cache', 'no-store', 'NO-STORE', 'max-age=0, no-cache', 'x'),
    },
    {
      weight: 1,
      arbitrary: fc.array(fc.constantFrom('no-cache', 'no-store'), { minLength: 2, maxLength: 2 }),
    },
  );
  return fc
    .record({ authorization, requestId, contentType, cacheControl })
    .map(({ authorization: a, requestId: r, contentType: c, cacheControl: cc }) => {
      const headers: Record<string, string | string[]> = {};
      if (a !== ABSENT) headers.authorization = a;
      if (r !== ABSENT) headers['x-request-id'] = r;
      if (c !== ABSENT) headers['content-type'] = c;
      if (cc !== ABSENT) headers['cache-control'] = cc;
      return headers;
    });
}

/** The API port's paths, and the admin port's (on the API port they are unknown routes). */
const KNOWN_PATHS = [
  RECOGNITION,
  TOKEN,
  TASKS,
  '/healthz',
  '/readyz',
  '/metrics',
  '/openapi.json',
  '/docs',
  '/usage',
  '/usage/checkout-service',
  '/',
];
const PATH_MUTATIONS = [
  (p: string) => `${p}/`,
  (p: string) => `/${p}`,
  (p: string) => p.toUpperCase(),
  (p: string) => p.replace('a', '%61'),
  (p: string) => p.replace('/t', '%2Ft'),
  (p: string) => p.replace('/c', '/./c'),
  (p: string) => `/x/..${p}`,
  (p: string) => `${p}/x`,
  (p: string) => `${p}?a=1&a=2&__proto__[polluted]=1&constructor[prototype][polluted]=1`,
  (p: string) => `${p};v=1`,
  (p: string) => `${p}%00`,
  (p: string) => `${p}%`,
  (p: string) => `${p}%zz`,
  (p: string) => `${p}%E0%A4%A`,
  (p: string) => `${p}%C0%AF`,
];

const path = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...KNOWN_PATHS) },
  {
    weight: 4,
    arbitrary: fc
      .tuple(fc.constantFrom(...KNOWN_PATHS), fc.constantFrom(...PATH_MUTATIONS))
      .map(([p, mutate]) => mutate(p)),
  },
  { weight: 2, arbitrary: fc.webPath().map((p) => (p.startsWith('/') ? p : `/${p}`)) },
  { weight: 1, arbitrary: fc.constant(`/${'a'.repeat(10_000)}`) },
);

const routeRequest = fc
  .record({
    method: fc.oneof(
      { weight: 3, arbitrary: fc.constantFrom('GET', 'POST') },
      { weight: 2, arbitrary: fc.constantFrom(...METHODS) },
    ),
    url: path,
    withBody: fc.constantFrom('none', 'valid', 'broken', 'text'),
    body: validTemplate,
  })
  .map(({ method, url, withBody, body }): FuzzRequest => {
    const headers: Record<string, string> = { authorization: `Bearer ${CLIENT_KEY}` };
    if (withBody === 'none') return { method, url, headers };
    headers['content-type'] = withBody === 'text' ? 'text/plain' : 'application/json';
    return { method, url, headers, payload: withBody === 'broken' ? '{"question":' : body };
  });

/** A task id: one a client created before the fuzz (its own or the other's), or any string. */
const taskId = fc.oneof(
  { weight: 3, arbitrary: fc.nat().map((n) => knownTaskIds[n % knownTaskIds.length] ?? 'none') },
  { weight: 2, arbitrary: fc.string({ maxLength: 40 }) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '',
      'x'.repeat(256),
      'x'.repeat(257),
      '😀'.repeat(128),
      '😀'.repeat(129),
    ),
  },
  { weight: 1, arbitrary: fc.oneof(fc.integer(), fc.constant(null)) },
);

/** Both poll shapes (`{"task_id"}`, the SDK poller's `{"id","action":"retrieve"}`) and mixes. */
const pollBody = fc
  .record({
    id: taskId,
    other: taskId,
    shape: fc.constantFrom('task_id', 'id+action', 'id', 'both', 'both-differ', 'bad-action'),
    extra: extraFields,
  })
  .map(({ id, other, shape, extra }) => {
    const fields: Record<string, unknown> = {};
    if (shape === 'task_id' || shape.startsWith('both')) fields.task_id = id;
    if (shape !== 'task_id') fields.id = shape === 'both-differ' ? other : id;
    if (shape === 'id+action') fields.action = 'retrieve';
    if (shape === 'bad-action') fields.action = 'fetch';
    const members = Object.entries(fields).map(
      ([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`,
    );
    for (const [key, value] of extra) members.push(`${key}:${value}`);
    return `{${members.join(',')}}`;
  });

const jsonBodies = fc.oneof(
  { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v)) },
  { weight: 3, arbitrary: pollBody },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '{}',
      '[]',
      'null',
      '0',
      '""',
      '{"__proto__":{"polluted":"yes"}}',
      '{"constructor":{"prototype":{"polluted":"yes"}}}',
      '{"task_id":"a","task_id":"a"}',
      '{"queries":["x"],"queries":["y"]}',
    ),
  },
);

// ---------------------------------------------------------------------------------------------
// Properties

async function runProperty(name: string, runs: number, arbitrary: fc.Arbitrary<FuzzRequest>) {
  const started = performance.now();
  await fc.assert(
    fc.asyncProperty(arbitrary, async (request) => {
      await send(request);
    }),
    { numRuns: runs, seed: SEED },
  );
  stats.perProperty[name] = { runs, ms: Math.round(performance.now() - started) };
  expect(({} as Record<string, unknown>).polluted).toBeUndefined();
}

describe('fuzz (fast-check, app.inject)', () => {
  it(
    'recognition bodies: wrong types, huge strings, broken Base64, wrong magic, deep nesting, prototype keys',
    () =>
      runProperty(
        'bodies',
        RUNS.bodies,
        recognitionBody.map((body) => post(RECOGNITION, body)),
      ),
    budget(PROPERTY_TIMEOUT_MS),
  );

  it(
    'raw body bytes: invalid UTF-8, BOM, NUL, truncation, UTF-16',
    () =>
      runProperty(
        'bytes',
        RUNS.bytes,
        fc
          .tuple(byteBodies, fc.constantFrom(RECOGNITION, RECOGNITION, RECOGNITION, TASKS))
          .map(([payload, url]) => post(url, payload)),
      ),
    budget(PROPERTY_TIMEOUT_MS),
  );

  it(
    'any JSON value to any captcha route; polls of either shape, for own, foreign and unknown tasks',
    () =>
      runProperty(
        'json',
        RUNS.json,
        fc
          .tuple(jsonBodies, fc.constantFrom(RECOGNITION, TOKEN, TASKS, TASKS))
          .map(([payload, url]) => post(url, payload)),
      ),
    budget(PROPERTY_TIMEOUT_MS),
  );

  it(
    'token bodies: the spec fields of every type, sync and async, extra fields',
    () =>
      runProperty(
        'token',
        RUNS.token,
        tokenBody.map((body) => post(TOKEN, body)),
      ),
    budget(PROPERTY_TIMEOUT_MS),
  );

  it(
    'headers: control characters and CRLF in authorization and x-request-id, repeated headers, content types',
    () =>
      runProperty(
        'headers',
        RUNS.headers,
        fc
          .tuple(
            headerSet(),
            fc.oneof(
              { weight: 3, arbitrary: validTemplate.map((payload) => [RECOGNITION, payload]) },
              { weight: 1, arbitrary: validTokenTemplate.map((payload) => [TOKEN, payload]) },
            ),
          )
          .map(([headers, [url, payload]]) => ({
            method: 'POST',
            url: url ?? RECOGNITION,
            headers,
            payload,
          })),
      ),
    budget(PROPERTY_TIMEOUT_MS),
  );

  it(
    'methods and paths: every HTTP method, mutated, encoded, malformed and random paths',
    () => runProperty('routes', RUNS.routes, routeRequest),
    budget(PROPERTY_TIMEOUT_MS),
  );

  it(
    'edges: megabyte images at and over IMAGE_MAX_BYTES, over the body limit, a 200,000-character question, 20,000 levels of nesting',
    () =>
      runProperty(
        'edges',
        RUNS.edges,
        edgeBodies.map((body) => post(RECOGNITION, body)),
      ),
    budget(PROPERTY_TIMEOUT_MS),
  );
});

// ---------------------------------------------------------------------------------------------
// Raw TCP: what only the HTTP parser sees

describe('fuzz (raw TCP sample)', () => {
  it(
    `${TCP_SAMPLE} requests with bytes inject cannot send: control characters, bare CR/LF, repeated headers, oversized headers`,
    async () => {
      const port = await listenLocally(gw);
      const random = seededRandom(SEED);
      const body = JSON.stringify({
        question: 'raw tcp',
        queries: [makeImage(random, 'png', 64).toString('base64')],
      });
      scanner.addImage(JSON.parse(body).queries[0]);
      const tcp = {
        requests: 0,
        ok: 0,
        /** Refused after routing (401, 400, 415, …): the gateway's envelope. */
        enveloped: 0,
        /** Refused by Node's HTTP parser: the envelope too, with a fresh trace id. */
        parserRejected: 0,
        statuses: {} as Record<string, number>,
        /** Node's error codes, from the rejections' completion lines. */
        clientErrors: {} as Record<string, number>,
      };
      const controls = [...Array.from({ length: 32 }, (_, i) => String.fromCharCode(i)), '\x7f'];
      const variants = [
        (c: string) => `x-request-id: abc${c}def\r\n`,
        (c: string) => `authorization: Bearer ${CLIENT_KEY}${c}\r\n`,
        (c: string) => `authorization: Bearer${c}${CLIENT_KEY}\r\n`,
        () => `authorization: Bearer wrong\r\nauthorization: Bearer ${CLIENT_KEY}\r\n`,
        () => `authorization: Bearer ${CLIENT_KEY}\r\nauthorization: Bearer wrong\r\n`,
        () => 'x-request-id: one\r\nx-request-id: two\r\n',
        () => `content-type: text/plain\r\n`,
        () => `content-length: ${Buffer.byteLength(body)}\r\n`,
        () => 'transfer-encoding: chunked\r\n',
        (c: string) => `x-custom${c}: 1\r\n`,
        () => `authorization: Bearer\r\n ${CLIENT_KEY}\r\n`,
        // Over Node's 16 KiB header limit.
        () => `x-padding: ${'a'.repeat(20_000)}\r\n`,
      ];
      drain();
      for (let i = 0; i < TCP_SAMPLE; i++) {
        const control = controls[i % controls.length] ?? '\x01';
        const variant = variants[Math.floor(random() * variants.length)] ?? variants[0];
        const extra = variant ? variant(control) : '';
        const auth = extra.startsWith('authorization')
          ? ''
          : `authorization: Bearer ${CLIENT_KEY}\r\n`;
        const request =
          `POST ${RECOGNITION} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n` +
          `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${auth}${extra}\r\n${body}`;
        const what = `raw tcp #${i}: ${JSON.stringify(extra.slice(0, 60).replaceAll(CLIENT_KEY, '<key>'))}`;
        gw.fake.calls.length = 0;
        const conn = rawConnection(port, request);
        const res = await within(conn.response, EXCHANGE_BOUND_MS, `${what}: an answer`);
        conn.socket.destroy();
        const calls = gw.fake.calls.splice(0);
        tcp.requests++;
        stats.otherRequests++;
        tcp.statuses[res.status] = (tcp.statuses[res.status] ?? 0) + 1;
        scanner.scan('raw tcp answer', res.raw);
        expect(res.status, `${what}: ${res.statusLine}`).toBeGreaterThanOrEqual(200);
        expect(res.status, `${what}: ${res.statusLine}`).toBeLessThan(500);
        // Nothing a client injected into a header comes back as a header of its own.
        expect(res.headers['set-cookie']).toBeUndefined();
        expect(res.headers['x-injected']).toBeUndefined();
        for (const call of calls) expect(call.token).toBe(UPSTREAM_TOKEN);
        // Every answer carries a trace id: the request's own valid one, or a generated UUID.
        expect(res.headers['x-request-id'], what).toMatch(TRACE_ID);
        answered(res.headers['x-request-id'], what);
        if (res.status === 200) {
          tcp.ok++;
          continue;
        }
        // Only a well-formed request with a valid key may reach the upstream (a cache hit
        // answers 200 without it); anything else got a refusal without an upstream call.
        expect(calls, what).toHaveLength(0);
        if (!isClientErrorAnswer(res)) {
          tcp.enveloped++;
          expect(
            gatewayErrorProblem(res.status, res.body, res.headers['x-request-id']),
            `${what}: ${res.raw.slice(0, 300)}`,
          ).toBeUndefined();
          continue;
        }
        // Rejected by Node's HTTP parser, before any route: the envelope, a fresh trace id,
        // `connection: close`, and one completion line naming the parser's error.
        tcp.parserRejected++;
        expect(clientErrorProblem(res), `${what}: ${res.raw.slice(0, 300)}`).toBeUndefined();
        drain();
        const line = stats.clientErrorLines.get(res.headers['x-request-id'] ?? '');
        expect(line, `${what}: no completion line`).toMatchObject({
          route: 'unmatched',
          status: res.status,
          client_error: expect.any(String),
        });
        const code = String(line?.client_error);
        tcp.clientErrors[code] = (tcp.clientErrors[code] ?? 0) + 1;
      }
      report('fuzz-tcp', tcp);
      expect(tcp.parserRejected).toBeGreaterThan(0);
    },
    budget(PROPERTY_TIMEOUT_MS),
  );
});

describe('fuzz: after every request', () => {
  it('left the process healthy, unpolluted and silent about secrets', async () => {
    const healthz = await gw.app.inject({ method: 'GET', url: '/healthz' });
    stats.otherRequests++;
    // Metrics, docs and usage are served by the admin server (the API port answered 404 above).
    const metrics = await adminMetrics(gw);
    const requestsTotal = metrics.sum('gateway_requests_total');
    const answersBeforeScrape = stats.requests + stats.otherRequests;
    const admin: Record<string, number> = {};
    for (const url of ['/openapi.json', '/docs', '/usage', '/usage/checkout-service']) {
      const res = await gw.admin.inject({ method: 'GET', url });
      admin[url] = res.statusCode;
      scanner.scan(`admin ${url}`, res.body);
    }
    stats.adminRequests += 5;
    scanner.scan('/metrics', metrics.text);
    await new Promise((resolve) => setImmediate(resolve));
    drain();
    // Every answer writes one completion line: routed requests, malformed URLs, unknown routes
    // and requests the HTTP parser rejected alike (the admin server's requests too).
    const expectedLines = stats.requests + stats.otherRequests + stats.adminRequests;
    const withoutLine = [...stats.generatedIds]
      .filter(([id]) => !stats.lineIds.has(id))
      .map(([, what]) => what);
    const total = Object.values(stats.perProperty).reduce((sum, p) => sum + p.runs, 0);
    report('fuzz', {
      seed: SEED,
      generated: total,
      answered: stats.requests,
      inject_refused: stats.injectRefused,
      forwarded_upstream: stats.forwarded,
      forwarded_rewritten: stats.rewritten,
      statuses: stats.statuses,
      gateway_codes: stats.codes,
      status_5xx: Object.entries(stats.statuses).filter(([s]) => Number(s) >= 500).length,
      by_route: stats.byRoute,
      completion_lines: stats.completionLines,
      completion_lines_expected: expectedLines,
      generated_trace_ids: stats.generatedIds.size,
      generated_trace_ids_without_line: withoutLine.length,
      // Σ gateway_requests_total against every answer before the final scrape.
      requests_total_metric: requestsTotal,
      answers_before_scrape: answersBeforeScrape,
      admin_statuses: admin,
      error_lines: stats.errorLines,
      properties: stats.perProperty,
      inject_ms_total: Math.round(stats.injectMs),
      slowest_request: stats.slowest,
    });
    report('secrets', { source: 'fuzz', ...scanner.summary() });

    expect(unhandled).toEqual([]);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(([] as unknown as Record<string, unknown>).polluted).toBeUndefined();
    expect(prototypeKeys()).toBe(prototypeKeysBefore);
    expect(healthz.statusCode).toBe(200);
    expect(admin).toEqual({
      '/openapi.json': 200,
      '/docs': 200,
      '/usage': 200,
      '/usage/checkout-service': 200,
    });
    // No line at error level (an api_error would log one).
    expect(stats.errorLines).toBe(0);
    expect(scanner.hits).toEqual([]);
    expect(total).toBeGreaterThanOrEqual(Math.round(12_000 * SCALE));
    // The generators reached the rewriting path and the forwarding path of every route.
    expect(stats.rewritten).toBeGreaterThan(0);
    expect(stats.codes.not_found ?? 0).toBeGreaterThan(0);
    // One completion line per answer (README: "Every request gets exactly one such line"); last,
    // so that a missing line does not hide any other failure.
    expect(
      withoutLine.slice(0, 10),
      `${withoutLine.length} answers without a completion line`,
    ).toEqual([]);
    expect(stats.completionLines).toBe(expectedLines);
    // Every answer is counted too, including those given before routing.
    expect(requestsTotal).toBe(answersBeforeScrape);
  });
});
