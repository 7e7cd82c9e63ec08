// Secrets: every other part scans everything it captured (the gateway's log lines at debug
// level, the child process's stdout and stderr, error bodies, /metrics) with SecretScanner and
// prints a `secrets` line. This part adds what is most likely to leak:
// 1. keys in odd places, the upstream token sent as a client key, images in rejected requests,
//    and upstream replies that echo image data or reject the gateway's token;
// 2. upstream tokens that match no pattern ("hunter2-pass", a short word, one with a quote and a
//    backslash) echoed by the upstream, together with the client's own key, in error bodies,
//    HTML 200s and 5xx bodies: they may reach neither a client nor a log line (issue 13 item 5:
//    secrets are masked by value, not by shape);
// 3. the same through the real server process, its stdout and stderr scanned.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FakeUpstream, type Fault, startFakeUpstream } from '../../dev/fake-upstream.ts';
import { hashClientKey, writeClientsFile } from '../../src/clients/registry.ts';
import {
  CLIENT_KEY,
  OTHER_CLIENT_KEY,
  postJson,
  RECOGNITION,
  startGateway,
  TASKS,
  TOKEN,
  UPSTREAM_TOKEN,
  within,
} from '../helpers.ts';
import {
  killServerProcesses,
  PROCESS_BOUND_MS,
  PROCESS_DEFAULTS,
  ServerProcess,
} from '../support/server-process.ts';
import {
  adminMetrics,
  asEnvelope,
  budget,
  drainLogs,
  makeImage,
  report,
  SecretScanner,
  seededRandom,
} from './support.ts';

const WRONG_KEY = 'agw_wrong_key_but_close_0123456789abcdefghijklmnopqrstuvw';
/** Tokens no pattern would take for a secret: a phrase, a short word, quote and backslash. */
const PLAIN_TOKENS = ['hunter2-pass', 'swordfish', 'pa"ss\\wd'];
/** Settings that let every fault reach the upstream: no retries, a breaker that never opens. */
const FAULT_SETTINGS = {
  RATE_LIMIT_MAX: '100000',
  UPSTREAM_MAX_RETRIES: '0',
  // A hanging upstream costs a request this long.
  UPSTREAM_TIMEOUT_MS: '500',
  SHUTDOWN_TIMEOUT_MS: '500',
  CIRCUIT_BREAKER_THRESHOLD: '100000',
  IMAGE_MAX_BYTES: String(1024 * 1024),
};
/** For the echoing upstream: retries on (5xx and 429 are retried, then passed through). */
const ECHO_SETTINGS = {
  ...FAULT_SETTINGS,
  UPSTREAM_MAX_RETRIES: '2',
  UPSTREAM_TIMEOUT_MS: '10000',
  SHUTDOWN_TIMEOUT_MS: '10000',
  ACEDATA_API_TOKEN: PLAIN_TOKENS.join(','),
};

let fake: FakeUpstream;
let plainFake: FakeUpstream;
let dir: string;

beforeAll(async () => {
  fake = await startFakeUpstream();
  plainFake = await startFakeUpstream({ tokens: PLAIN_TOKENS, sharedAccount: true });
  dir = await mkdtemp(join(tmpdir(), 'agw-secrets-'));
});

afterAll(async () => {
  await killServerProcesses();
  await fake?.close();
  await plainFake?.close();
  await rm(dir, { recursive: true, force: true });
});

/**
 * What an upstream may echo: every configured token and the calling client's key, in a sentence
 * (an error message), so the gateway's masking by value is what stands between it and the client.
 */
const echo = (key: string) =>
  `token ${PLAIN_TOKENS.join(' / ')} was used for key ${key} at upstream.internal:8443`;

/** Upstream answers that echo secrets: passed-through errors, HTML 200s, 5xx bodies, rejections. */
const echoingFaults = (key: string): Array<{ name: string; fault: Fault }> => [
  { name: '400 echo', fault: { kind: 'status', status: 400, message: echo(key) } },
  {
    name: '403 forbidden echo',
    fault: { kind: 'status', status: 403, code: 'forbidden', message: echo(key) },
  },
  {
    name: '404 plain-string echo',
    fault: { kind: 'status', status: 404, message: echo(key), plainError: true },
  },
  { name: '500 echo', fault: { kind: 'status', status: 500, message: echo(key) } },
  { name: '503 echo', fault: { kind: 'status', status: 503, message: echo(key) } },
  { name: 'HTML 200 echo', fault: { kind: 'garbage', body: `<html><p>${echo(key)}</p></html>` } },
  {
    name: 'HTML 502 echo',
    fault: { kind: 'garbage', status: 502, body: `<pre>${echo(key)}</pre>` },
  },
  {
    name: '429 echo',
    fault: { kind: 'status', status: 429, message: echo(key), retryAfter: '0' },
  },
  // Last: a rejection takes the tokens out of rotation.
  {
    name: '401 invalid_token echo',
    fault: { kind: 'status', status: 401, code: 'invalid_token', message: echo(key) },
  },
];

/** Checks the scanner itself: a secret in plain text and JSON-escaped is found. */
function scannerFinds(secret: string): boolean {
  const probe = new SecretScanner();
  probe.addSecret(secret, 'probe');
  probe.scan('self-test', `text ${secret} text`);
  probe.scan('self-test', JSON.stringify({ msg: `x ${secret} y` }));
  return probe.hitCount === 2;
}

describe('secrets', () => {
  it(
    'never reach a log line (debug level), an error body, an upstream request header or /metrics',
    async () => {
      const scanner = new SecretScanner();
      scanner.addSecret(UPSTREAM_TOKEN, 'the upstream token');
      scanner.addSecret(CLIENT_KEY, 'a client key');
      scanner.addSecret(OTHER_CLIENT_KEY, 'a client key');
      scanner.addSecret(WRONG_KEY, 'a wrong client key');
      const random = seededRandom(99);
      const image = makeImage(random, 'jpeg', 6_000).toString('base64');
      const notImage = makeImage(random, 'png', 3_000).subarray(8).toString('base64');
      // Over IMAGE_MAX_BYTES, under the body limit: refused after the body was read.
      const huge = makeImage(random, 'gif', 1024 * 1024 + 10).toString('base64');
      for (const data of [image, notImage, huge]) scanner.addImage(data);

      const body = (queries: string[], extra: Record<string, unknown> = {}) => ({
        question: 'Please click each image containing a bus',
        queries,
        ...extra,
      });
      const requests: Array<{
        url?: string;
        key?: string;
        headers?: Record<string, string>;
        body: Record<string, unknown>;
      }> = [
        { body: body([image]) },
        { body: body([notImage]) },
        { body: body([`${image}!`]) },
        { body: body([huge]) },
        { body: body([image], { async: 'yes' }) },
        { key: WRONG_KEY, body: body([image]) },
        { key: UPSTREAM_TOKEN, body: body([image]) },
        { url: `${RECOGNITION}?key=${CLIENT_KEY}&token=${UPSTREAM_TOKEN}`, body: body([image]) },
        { url: `/nowhere?key=${CLIENT_KEY}`, body: body([image]) },
        { headers: { 'content-type': 'text/plain' }, body: body([image]) },
        { headers: { 'x-api-key': CLIENT_KEY, cookie: `key=${CLIENT_KEY}` }, body: body([image]) },
        { url: TASKS, body: { task_id: 'task-that-does-not-exist' } },
        {
          url: TOKEN,
          body: { website_key: CLIENT_KEY, website_url: `https://x.test/?k=${CLIENT_KEY}` },
        },
        { body: body([image], { callback: `https://example.invalid/?token=${OTHER_CLIENT_KEY}` }) },
      ];
      // Each group shares a gateway. A 429 rests the token for a second, and a rejection takes
      // it out of rotation: those get a gateway of their own, so every fault reaches the upstream.
      const faultGroups: Array<Array<Fault | undefined>> = [
        [
          undefined,
          { kind: 'status', status: 403, code: 'forbidden' },
          { kind: 'status', status: 500, message: `upstream saw ${image.slice(0, 64)}` },
          { kind: 'garbage', body: `<html>${image}</html>` },
          { kind: 'garbage', status: 502, body: image },
          { kind: 'malformed' },
          { kind: 'reset' },
          { kind: 'hang' },
        ],
        [{ kind: 'status', status: 429 }],
        [{ kind: 'status', status: 401, code: 'invalid_token' }],
        [{ kind: 'status', status: 403, code: 'used_up' }],
      ];
      const statuses: Record<string, number> = {};
      const levels: Record<string, number> = {};
      let upstreamCalls = 0;
      let passedThrough = 0;
      let sent = 0;
      for (const faults of faultGroups) {
        const gw = await startGateway(FAULT_SETTINGS, { fake });
        try {
          for (const fault of faults) {
            fake.reset();
            fake.setDefaultFault(fault);
            for (const [i, request] of requests.entries()) {
              const requestId = `secrets-${sent}-${i}`;
              const res = await postJson(gw, {
                url: request.url,
                key: request.key,
                body: request.body,
                // A fresh cache key per request, so every valid one reaches the faulty upstream.
                headers: {
                  'cache-control': 'no-store',
                  'x-request-id': requestId,
                  ...request.headers,
                },
              });
              sent++;
              statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1;
              // The gateway's own errors; an upstream error passes through as the upstream wrote it
              // (here one that quotes the caller's own image back to it): never with a secret.
              const own = asEnvelope(res.body)?.trace_id === requestId;
              if (res.statusCode >= 400) scanner.scan('error body', res.body, { images: own });
              if (res.statusCode >= 400 && !own) passedThrough++;
              scanner.scan('response headers', JSON.stringify(res.headers));
              for (const call of fake.calls.splice(0)) {
                upstreamCalls++;
                const { authorization, ...others } = call.headers;
                expect(authorization).toBe(`Bearer ${UPSTREAM_TOKEN}`);
                scanner.scan('upstream request headers', JSON.stringify(others));
                for (const key of [CLIENT_KEY, OTHER_CLIENT_KEY, WRONG_KEY]) {
                  const inBody = JSON.stringify(request.body).includes(key);
                  expect(call.rawBody.includes(key) && !inBody).toBe(false);
                }
              }
            }
          }
          scanner.scan('/metrics', (await adminMetrics(gw)).text);
        } finally {
          fake.setDefaultFault(undefined);
          await gw.close();
        }
        drainLogs(gw, scanner, 'gateway log', (line) => {
          levels[String(line.level)] = (levels[String(line.level)] ?? 0) + 1;
        });
      }

      report('secrets', {
        source: 'secrets',
        requests: sent,
        statuses,
        upstream_calls: upstreamCalls,
        upstream_errors_passed_through: passedThrough,
        log_lines_by_level: levels,
        ...scanner.summary(),
      });
      expect(levels['50']).toBeGreaterThan(0);
      expect(levels['40']).toBeGreaterThan(0);
      expect(scanner.hits).toEqual([]);
    },
    budget(60_000),
  );

  it(
    'tokens that match no pattern and the client key, echoed by the upstream, are masked by value',
    async () => {
      for (const token of PLAIN_TOKENS) expect(scannerFinds(token), token).toBe(true);
      const scanner = new SecretScanner();
      for (const token of PLAIN_TOKENS) scanner.addSecret(token, 'an upstream token');
      scanner.addSecret(CLIENT_KEY, 'a client key');
      scanner.addSecret(OTHER_CLIENT_KEY, 'a client key');
      const statuses: Record<string, number> = {};
      const masked = { token: 0, key: 0, logLines: 0 };
      const levels: Record<string, number> = {};
      let upstreamCalls = 0;
      for (const key of [CLIENT_KEY, OTHER_CLIENT_KEY]) {
        const gw = await startGateway(ECHO_SETTINGS, { fake: plainFake });
        try {
          for (const [i, { name, fault }] of echoingFaults(key).entries()) {
            plainFake.reset();
            plainFake.setDefaultFault(fault);
            for (const url of [RECOGNITION, TOKEN]) {
              const res = await postJson(gw, {
                key,
                url,
                body:
                  url === TOKEN
                    ? { website_key: 'site', website_url: 'https://example.com/' }
                    : {
                        question: `${name} ${i}`,
                        queries: [makeImage(seededRandom(i), 'png', 64).toString('base64')],
                      },
              });
              statuses[`${name} → ${res.statusCode}`] =
                (statuses[`${name} → ${res.statusCode}`] ?? 0) + 1;
              // Every byte a client gets is scanned, the upstream's own error bodies included.
              scanner.scan(`${name}: answer`, res.body, { images: false });
              scanner.scan(`${name}: headers`, JSON.stringify(res.headers));
              if (res.body.includes('[token:')) masked.token++;
              if (res.body.includes('[key:')) masked.key++;
              upstreamCalls += plainFake.calls.splice(0).length;
            }
          }
          scanner.scan('/metrics', (await adminMetrics(gw)).text);
        } finally {
          plainFake.setDefaultFault(undefined);
          await gw.close();
        }
        drainLogs(gw, scanner, 'gateway log', (line) => {
          levels[String(line.level)] = (levels[String(line.level)] ?? 0) + 1;
          if (JSON.stringify(line).includes('[token:')) masked.logLines++;
        });
      }
      report('secrets', {
        source: 'plain tokens, in process',
        tokens: PLAIN_TOKENS.length,
        outcomes: statuses,
        upstream_calls: upstreamCalls,
        answers_with_masked: masked,
        log_lines_by_level: levels,
        ...scanner.summary(),
      });
      // The upstream did echo them, and clients and log lines got fingerprints instead.
      expect(masked.token).toBeGreaterThan(0);
      expect(masked.key).toBeGreaterThan(0);
      expect(masked.logLines).toBeGreaterThan(0);
      expect(levels['50']).toBeGreaterThan(0);
      expect(scanner.hits).toEqual([]);
    },
    budget(60_000),
  );

  it(
    'the same through the real server process: nothing on its stdout or stderr, nothing to clients',
    async () => {
      const scanner = new SecretScanner();
      for (const token of PLAIN_TOKENS) scanner.addSecret(token, 'an upstream token');
      scanner.addSecret(CLIENT_KEY, 'the client key');
      const clientsFile = join(dir, 'clients.json');
      await writeClientsFile(clientsFile, {
        clients: [{ id: 'secrets-test', keySha256: hashClientKey(CLIENT_KEY) }],
      });
      const server = new ServerProcess(
        {
          ...PROCESS_DEFAULTS,
          ...ECHO_SETTINGS,
          LOG_LEVEL: 'debug',
          ACEDATA_BASE_URL: plainFake.url,
          GATEWAY_CLIENTS_FILE: clientsFile,
        },
        dir,
      );
      const { port, adminPort } = await server.listening();
      const statuses: Record<string, number> = {};
      const masked = { token: 0, key: 0, logLines: 0 };
      for (const [i, { name, fault }] of echoingFaults(CLIENT_KEY).entries()) {
        plainFake.reset();
        plainFake.setDefaultFault(fault);
        const traceId = `process-secrets-${i}`;
        const res = await fetch(`http://127.0.0.1:${port}${RECOGNITION}`, {
          method: 'POST',
          headers: {
            authorization: `Bearer ${CLIENT_KEY}`,
            'content-type': 'application/json',
            'x-request-id': traceId,
          },
          body: JSON.stringify({
            question: name,
            queries: [makeImage(seededRandom(i), 'gif', 64).toString('base64')],
          }),
        });
        const text = await res.text();
        statuses[`${name} → ${res.status}`] = 1;
        scanner.scan(`${name}: answer`, text, { images: false });
        scanner.scan(`${name}: headers`, JSON.stringify([...res.headers]));
        if (text.includes('[token:')) masked.token++;
        if (text.includes('[key:')) masked.key++;
        // Its completion line is the last line the request writes.
        await server.waitFor(
          (line) => line.msg === 'request completed' && line.trace_id === traceId,
          `the completion line of ${traceId}`,
        );
      }
      plainFake.setDefaultFault(undefined);
      const metrics = await fetch(`http://127.0.0.1:${adminPort}/metrics`);
      scanner.scan('/metrics', await metrics.text());
      const exit = await within(server.stop(), PROCESS_BOUND_MS, 'the server stopping');
      for (const line of server.stdout.split('\n')) if (line) scanner.scan('server stdout', line);
      scanner.scan('server stderr', server.stderr);
      const levels: Record<string, number> = {};
      for (const line of server.lines) {
        levels[String(line.level)] = (levels[String(line.level)] ?? 0) + 1;
        if (JSON.stringify(line).includes('[token:')) masked.logLines++;
      }
      report('secrets', {
        source: 'plain tokens, server process',
        outcomes: statuses,
        answers_with_masked: masked,
        stdout_lines_by_level: levels,
        stderr_bytes: server.stderr.length,
        exit,
        ...scanner.summary(),
      });
      expect(masked.token).toBeGreaterThan(0);
      expect(masked.key).toBeGreaterThan(0);
      expect(masked.logLines).toBeGreaterThan(0);
      expect(levels['50']).toBeGreaterThan(0);
      expect(exit).toEqual({ code: 0, signal: null });
      expect(scanner.hits).toEqual([]);
    },
    budget(PROCESS_BOUND_MS * 3),
  );
});
