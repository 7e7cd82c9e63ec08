// Secrets: every other part scans everything it captured (the gateway's log lines at debug
// level, the child process's stdout and stderr, error bodies, /metrics) with SecretScanner and
// prints a `secrets` line. This part adds the requests most likely to leak something: keys in
// odd places, the upstream token sent as a client key, images in rejected requests, and upstream
// replies that echo image data or reject the gateway's token, each of which makes the gateway
// log at warn or error level.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Fault } from '../../dev/fake-upstream.ts';
import {
  CLIENT_KEY,
  OTHER_CLIENT_KEY,
  startGateway,
  type TestGateway,
  UPSTREAM_TOKEN,
} from '../helpers.ts';
import {
  asEnvelope,
  budget,
  drainLogs,
  makeImage,
  RECOGNITION,
  report,
  SecretScanner,
  scrapeMetrics,
  seededRandom,
  TASKS,
} from './support.ts';

const WRONG_KEY = 'agw_wrong_key_but_close_0123456789abcdefghijklmnopqrstuvw';

let gw: TestGateway;
const scanner = new SecretScanner();

beforeAll(async () => {
  gw = await startGateway({
    RATE_LIMIT_MAX: '100000',
    UPSTREAM_MAX_RETRIES: '0',
    UPSTREAM_TIMEOUT_MS: '1000',
    // Faults on every call would open the circuit and stop calls reaching the upstream.
    CIRCUIT_BREAKER_THRESHOLD: '100000',
  });
  scanner.addSecret(UPSTREAM_TOKEN, 'the upstream token');
  scanner.addSecret(CLIENT_KEY, 'a client key');
  scanner.addSecret(OTHER_CLIENT_KEY, 'a client key');
  scanner.addSecret(WRONG_KEY, 'a wrong client key');
});

afterAll(async () => {
  await gw?.close();
});

describe('secrets', () => {
  it(
    'never reach a log line (debug level), an error body, an upstream request header or /metrics',
    async () => {
      const random = seededRandom(99);
      const image = makeImage(random, 'jpeg', 6_000).toString('base64');
      const notImage = makeImage(random, 'png', 3_000).subarray(8).toString('base64');
      const huge = makeImage(random, 'gif', 1024 * 1024 + 10).toString('base64');
      for (const data of [image, notImage, huge]) scanner.addImage(data);

      const body = (queries: string[], extra: Record<string, unknown> = {}) =>
        JSON.stringify({ question: 'Please click each image containing a bus', queries, ...extra });
      const requests: Array<{
        url?: string;
        key?: string;
        headers?: Record<string, string>;
        payload: string;
      }> = [
        { payload: body([image]) },
        { payload: body([notImage]) },
        { payload: body([`${image}!`]) },
        { payload: body([huge]) },
        { payload: body([image], { async: 'yes' }) },
        { key: WRONG_KEY, payload: body([image]) },
        { key: UPSTREAM_TOKEN, payload: body([image]) },
        { url: `${RECOGNITION}?key=${CLIENT_KEY}&token=${UPSTREAM_TOKEN}`, payload: body([image]) },
        { url: `/nowhere?key=${CLIENT_KEY}`, payload: body([image]) },
        { headers: { 'content-type': 'text/plain' }, payload: body([image]) },
        {
          headers: { 'x-api-key': CLIENT_KEY, cookie: `key=${CLIENT_KEY}` },
          payload: body([image]),
        },
        { url: TASKS, payload: JSON.stringify({ task_id: 'task-that-does-not-exist' }) },
        {
          payload: body([image], {
            callback: `https://example.invalid/?token=${OTHER_CLIENT_KEY}`,
          }),
        },
      ];
      const faults: Array<Fault | undefined> = [
        undefined,
        { kind: 'status', status: 401, code: 'invalid_token' },
        { kind: 'status', status: 403, code: 'used_up' },
        { kind: 'status', status: 429 },
        { kind: 'status', status: 500, message: `upstream saw ${image.slice(0, 64)}` },
        { kind: 'garbage', body: `<html>${image}</html>` },
        { kind: 'garbage', status: 502, body: image },
        { kind: 'malformed' },
        { kind: 'reset' },
        { kind: 'hang' },
      ];
      const statuses: Record<string, number> = {};
      let upstreamCalls = 0;
      let passedThrough = 0;
      let sent = 0;
      for (const fault of faults) {
        for (const [i, request] of requests.entries()) {
          gw.fake.setDefaultFault(fault);
          const requestId = `secrets-${sent}-${i}`;
          const res = await gw.app.inject({
            method: 'POST',
            url: request.url ?? RECOGNITION,
            headers: {
              authorization: `Bearer ${request.key ?? CLIENT_KEY}`,
              'content-type': 'application/json',
              // A fresh cache key per request, so every valid one reaches the faulty upstream.
              'cache-control': 'no-store',
              'x-request-id': requestId,
              ...request.headers,
            },
            payload: request.payload,
          });
          sent++;
          statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1;
          // The gateway's own errors; an upstream error passes through as the upstream wrote it
          // (here one that quotes the caller's own image back to it).
          const own = asEnvelope(res.body)?.trace_id === requestId;
          if (res.statusCode >= 400 && own) scanner.scan('error body', res.body);
          if (res.statusCode >= 400 && !own) passedThrough++;
          scanner.scan('response headers', JSON.stringify(res.headers));
          for (const call of gw.fake.calls.splice(0)) {
            upstreamCalls++;
            const { authorization, ...others } = call.headers;
            expect(authorization).toBe(`Bearer ${UPSTREAM_TOKEN}`);
            scanner.scan('upstream request headers', JSON.stringify(others));
            for (const key of [CLIENT_KEY, OTHER_CLIENT_KEY, WRONG_KEY]) {
              expect(call.rawBody.includes(key) && !request.payload.includes(key)).toBe(false);
            }
          }
        }
      }
      gw.fake.setDefaultFault(undefined);
      const metrics = await scrapeMetrics(gw.app);
      scanner.scan('/metrics', metrics.text);
      await new Promise((resolve) => setImmediate(resolve));
      const levels: Record<string, number> = {};
      drainLogs(gw, scanner, 'gateway log', (line) => {
        levels[String(line.level)] = (levels[String(line.level)] ?? 0) + 1;
      });

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
});
