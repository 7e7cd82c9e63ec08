import { afterEach, describe, expect, vi } from 'vitest';
import {
  CLIENT_KEY,
  completionLines,
  completionOf,
  EVENT_BOUND,
  gateHold,
  gatewayTest,
  listenLocally,
  metricSum,
  OTHER_CLIENT_KEY,
  postJson,
  RECOGNITION,
  rawConnection,
  type TestGateway,
  validBody,
} from './helpers.ts';

// Requests in flight are held at the upstream gate (one start a second on a frozen clock), so a
// test decides when each one ends; nothing here waits on time. Each release takes up to a second
// of the gate's own timer, hence the bound on a test.
const RELEASES = { timeout: 30_000 };

afterEach(() => {
  vi.useRealTimers();
});

/** A recognition body of exactly `bytes` bytes, distinct per `tag`. */
function bodyOfBytes(bytes: number, tag: string): string {
  const empty = JSON.stringify(validBody({ question: tag }));
  return JSON.stringify(validBody({ question: tag + 'x'.repeat(bytes - empty.length) }));
}

const sendBytes = (g: TestGateway, bytes: number, tag: string, key = CLIENT_KEY) =>
  postJson(g, { key, body: JSON.parse(bodyOfBytes(bytes, tag)) });

/** Lets every held call start (one a second), then resolves the answers. */
async function releaseAll<T>(hold: ReturnType<typeof gateHold>, runs: Promise<T>[]) {
  await hold.releaseAll();
  return Promise.all(runs);
}

describe("a client's requests in flight", () => {
  describe('maxInFlight from the clients file', () => {
    const test = gatewayTest.override('gatewaySettings', {
      env: { UPSTREAM_RATE_PER_SECOND: '1', CLIENT_MAX_IN_FLIGHT: '10' },
      limits: { maxInFlight: 2 },
    });

    test(
      'refuses the one over the limit with 429 and retry-after; others are unaffected',
      RELEASES,
      async ({ gateway: g }) => {
        vi.useFakeTimers({ toFake: ['Date'] });
        const hold = gateHold(g);
        await hold.takeSlot();
        const calls = g.fake.callCount();
        const held = [
          postJson(g, { body: validBody({ question: 'one' }) }),
          postJson(g, { body: validBody({ question: 'two' }) }),
        ];
        await hold.queued(2);
        expect(await metricSum(g, 'gateway_inflight_requests')).toBe(2);

        const refused = await postJson(g, { body: validBody({ question: 'three' }) });
        expect(refused.statusCode).toBe(429);
        expect(refused.headers['retry-after']).toBe('1');
        expect(refused.json()).toEqual({
          success: false,
          error: {
            code: 'too_many_requests',
            message:
              'client checkout-service already has 2 requests in flight, its limit; retry when one has finished',
          },
          trace_id: refused.headers['x-request-id'],
        });
        expect(completionOf(g, refused)).toMatchObject({
          status: 429,
          limit: 'client_in_flight',
          error_code: 'too_many_requests',
          client: 'checkout-service',
        });
        expect(
          await metricSum(g, 'gateway_inflight_refused_total', {
            client: 'checkout-service',
            limit: 'client_in_flight',
          }),
        ).toBe(1);

        // Another client, with the default of 10, is admitted (a cache hit, and a held call).
        const hit = await postJson(g, {
          key: OTHER_CLIENT_KEY,
          body: validBody({ question: 'this request takes the start slot' }),
        });
        expect(hit.statusCode).toBe(200);
        const other = postJson(g, { key: OTHER_CLIENT_KEY, body: validBody({ question: 'four' }) });
        await hold.queued(3);

        const answers = await releaseAll(hold, [...held, other]);
        expect(answers.map((r) => r.statusCode)).toEqual([200, 200, 200]);
        expect(g.fake.callCount()).toBe(calls + 3);
        // Released when answered: the client may send again.
        expect(await metricSum(g, 'gateway_inflight_requests')).toBe(0);
        const again = postJson(g, { body: validBody({ question: 'three' }) });
        await hold.queued(1);
        expect((await releaseAll(hold, [again]))[0]?.statusCode).toBe(200);
      },
    );
  });

  describe('CLIENT_MAX_IN_FLIGHT for clients without maxInFlight', () => {
    const test = gatewayTest.override('gatewaySettings', {
      env: { UPSTREAM_RATE_PER_SECOND: '1', CLIENT_MAX_IN_FLIGHT: '1' },
    });

    test('applies to every route that reaches the upstream', RELEASES, async ({ gateway: g }) => {
      vi.useFakeTimers({ toFake: ['Date'] });
      const hold = gateHold(g);
      await hold.takeSlot();
      const held = postJson(g, { body: validBody({ question: 'one' }) });
      await hold.queued(1);
      const token = await postJson(g, {
        url: '/captcha/token/hcaptcha',
        body: { website_key: 'k', website_url: 'https://example.com' },
      });
      expect(token.statusCode).toBe(429);
      expect(completionOf(g, token)?.limit).toBe('client_in_flight');
      const poll = await postJson(g, { url: '/captcha/tasks', body: { task_id: 't' } });
      expect(poll.statusCode).toBe(429);
      expect((await releaseAll(hold, [held]))[0]?.statusCode).toBe(200);
    });
  });

  describe('the default, derived from rate × deadline', () => {
    // 1 call/s × 5 s: capacity 5, half of it (2) per client.
    const test = gatewayTest.override('gatewaySettings', {
      env: { UPSTREAM_RATE_PER_SECOND: '1', UPSTREAM_TIMEOUT_MS: '5000' },
    });

    test('is half the upstream capacity', RELEASES, async ({ gateway: g }) => {
      expect(g.config.derived).toMatchObject({
        upstreamRatePerSecond: 1,
        upstreamMaxConcurrency: 5,
        upstreamQueueMax: 5,
        clientMaxInFlight: 2,
      });
      vi.useFakeTimers({ toFake: ['Date'] });
      const hold = gateHold(g);
      await hold.takeSlot();
      const held = [1, 2].map((n) => postJson(g, { body: validBody({ question: `q${n}` }) }));
      await hold.queued(2);
      const refused = await postJson(g, { body: validBody({ question: 'q3' }) });
      expect(refused.statusCode).toBe(429);
      expect(completionOf(g, refused)?.limit).toBe('client_in_flight');
      // Released well before their deadline (the gate gives up on them 4.5 s after they came).
      const answers = await releaseAll(hold, held);
      expect(answers.map((r) => r.statusCode)).toEqual([200, 200]);
    });
  });
});

describe('bytes in flight', () => {
  // Bodies of 3,000 bytes: a client's share holds two, the whole budget three.
  const test = gatewayTest.override('gatewaySettings', {
    env: {
      UPSTREAM_RATE_PER_SECOND: '1',
      BODY_LIMIT_BYTES: '4096',
      CLIENT_INFLIGHT_BYTES_MAX: '6000',
      INFLIGHT_BYTES_MAX: '10000',
    },
  });

  test(
    "over a client's share: 429; over the whole budget: 503; both released when answered",
    RELEASES,
    async ({ gateway: g }) => {
      vi.useFakeTimers({ toFake: ['Date'] });
      const hold = gateHold(g);
      await hold.takeSlot();
      const calls = g.fake.callCount();
      const held = [sendBytes(g, 3000, 'a1'), sendBytes(g, 3000, 'a2')];
      await hold.queued(2);
      const overShare = await sendBytes(g, 3000, 'a3');
      expect(overShare.statusCode).toBe(429);
      expect(overShare.headers['retry-after']).toBe('1');
      expect(overShare.json().error).toEqual({
        code: 'too_many_requests',
        message:
          'client checkout-service has its share of request bytes in flight (6000 bytes); retry when a request has finished',
      });
      expect(completionOf(g, overShare)?.limit).toBe('bytes_in_flight');

      held.push(sendBytes(g, 3000, 'b1', OTHER_CLIENT_KEY));
      await hold.queued(3);
      expect(await metricSum(g, 'gateway_inflight_bytes')).toBe(9000);
      const overBudget = await sendBytes(g, 3000, 'b2', OTHER_CLIENT_KEY);
      expect(overBudget.statusCode).toBe(503);
      expect(overBudget.headers['retry-after']).toBe('1');
      expect(overBudget.json().error).toEqual({
        code: 'upstream_unavailable',
        message:
          'the gateway holds as many request bytes as its memory budget allows; retry shortly',
      });
      expect(completionOf(g, overBudget)).toMatchObject({ status: 503, limit: 'bytes_in_flight' });
      // What fits is still admitted.
      const small = await postJson(g, {
        key: OTHER_CLIENT_KEY,
        body: validBody({ question: 'this request takes the start slot' }),
      });
      expect(small.statusCode).toBe(200);
      expect(g.fake.callCount()).toBe(calls); // the refused ones were never forwarded
      for (const client of ['checkout-service', 'other-service']) {
        expect(
          await metricSum(g, 'gateway_inflight_refused_total', {
            client,
            limit: 'bytes_in_flight',
          }),
        ).toBe(1);
      }

      const answers = await releaseAll(hold, held);
      expect(answers.map((r) => r.statusCode)).toEqual([200, 200, 200]);
      expect(await metricSum(g, 'gateway_inflight_bytes')).toBe(0);
      const retried = sendBytes(g, 3000, 'a3');
      await hold.queued(1);
      expect((await releaseAll(hold, [retried]))[0]?.statusCode).toBe(200);
    },
  );

  test('a body over BODY_LIMIT_BYTES gets 413, not 429: it counts at most the limit', async ({
    gateway: g,
  }) => {
    const tooLarge = await sendBytes(g, 8000, 'too large');
    expect(tooLarge.statusCode).toBe(413);
    expect(tooLarge.json().error.code).toBe('request_too_large');
    expect(completionOf(g, tooLarge)?.limit).toBeUndefined();
    expect(g.fake.callCount()).toBe(0);
    expect(await metricSum(g, 'gateway_inflight_bytes')).toBe(0);
  });

  test(
    'are released when the client leaves before its answer',
    RELEASES,
    async ({ gateway: g }) => {
      vi.useFakeTimers({ toFake: ['Date'] });
      const port = await listenLocally(g);
      const hold = gateHold(g);
      await hold.takeSlot();
      const body = bodyOfBytes(3000, 'leaves');
      const leaving = rawConnection(
        port,
        `POST ${RECOGNITION} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer ${CLIENT_KEY}\r\n` +
          `content-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
      );
      leaving.response.catch(() => {}); // it leaves before any answer
      const staying = sendBytes(g, 3000, 'stays');
      await hold.queued(2);
      expect(await metricSum(g, 'gateway_inflight_bytes')).toBe(6000);
      expect((await sendBytes(g, 3000, 'refused')).statusCode).toBe(429);

      leaving.socket.destroy();
      await leaving.closed;
      // Its call had not been sent: it leaves the gate's queue, and its bytes are free again.
      await expect.poll(() => metricSum(g, 'gateway_inflight_bytes'), EVENT_BOUND).toBe(3000);
      expect(completionLines(g).filter((l) => l.status === 499)).toHaveLength(1);
      const admitted = sendBytes(g, 3000, 'admitted');
      await hold.queued(2);
      const answers = await releaseAll(hold, [staying, admitted]);
      expect(answers.map((r) => r.statusCode)).toEqual([200, 200]);
      // No call was ever sent for the client that left.
      const questions = g.fake.calls.map((c) =>
        String((c.body as { question?: unknown })?.question),
      );
      expect(questions.some((q) => q.startsWith('leaves'))).toBe(false);
      expect(
        questions.filter((q) => q.startsWith('stays') || q.startsWith('admitted')),
      ).toHaveLength(2);
    },
  );

  test(
    'a body of unknown length (chunked) reserves BODY_LIMIT_BYTES until it is read',
    RELEASES,
    async ({ gateway: g }) => {
      vi.useFakeTimers({ toFake: ['Date'] });
      const port = await listenLocally(g);
      const hold = gateHold(g);
      await hold.takeSlot();
      const held = sendBytes(g, 3000, 'held');
      await hold.queued(1);
      const small = JSON.stringify(validBody({ question: 'small, but of unknown length' }));
      const chunked = rawConnection(
        port,
        `POST ${RECOGNITION} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer ${CLIENT_KEY}\r\n` +
          'content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n' +
          `${small.length.toString(16)}\r\n${small}\r\n0\r\n\r\n`,
      );
      // 3,000 held + 4,096 reserved > the share of 6,000, whatever the body turns out to be.
      const refused = await chunked.response;
      expect(refused.status).toBe(429);
      expect(JSON.parse(refused.body).error.code).toBe('too_many_requests');
      expect((await releaseAll(hold, [held]))[0]?.statusCode).toBe(200);
      // With the share free, the same chunked body is admitted and shrinks to its real size.
      const again = rawConnection(
        port,
        `POST ${RECOGNITION} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer ${CLIENT_KEY}\r\n` +
          'content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n' +
          `${small.length.toString(16)}\r\n${small}\r\n0\r\n\r\n`,
      );
      await hold.queued(1);
      expect(await metricSum(g, 'gateway_inflight_bytes')).toBe(small.length);
      hold.next();
      expect((await again.response).status).toBe(200);
      again.socket.destroy();
    },
  );
});

describe('fair shares at the upstream gate (noisy neighbour)', () => {
  const test = gatewayTest.override('gatewaySettings', { env: { UPSTREAM_RATE_PER_SECOND: '1' } });

  test(
    "one client's burst queues behind itself: another client's request starts before the burst's tail",
    RELEASES,
    async ({ gateway: g }) => {
      vi.useFakeTimers({ toFake: ['Date'] });
      const hold = gateHold(g);
      await hold.takeSlot();
      const first = g.fake.callCount();
      // checkout-service floods first: four calls wait at the gate.
      const burst = [1, 2, 3, 4].map((n) =>
        postJson(g, { body: validBody({ question: `burst ${n}` }) }),
      );
      await hold.queued(4);
      // other-service sends one request after the whole burst is queued.
      const steady = postJson(g, {
        key: OTHER_CLIENT_KEY,
        body: validBody({ question: 'steady' }),
      });
      await hold.queued(5);
      const answers = await releaseAll(hold, [...burst, steady]);
      expect(answers.map((r) => r.statusCode)).toEqual([200, 200, 200, 200, 200]);
      // The order in which the upstream received them: served in turn, one client after the other.
      const order = g.fake.calls
        .slice(first)
        .map((call) => (call.body as { question: string }).question);
      expect(order).toEqual(['burst 1', 'steady', 'burst 2', 'burst 3', 'burst 4']);
    },
  );
});

describe('a client that leaves', () => {
  const test = gatewayTest.override('gatewaySettings', {
    env: { UPSTREAM_RATE_PER_SECOND: '1', BODY_LIMIT_BYTES: '65536' },
  });

  test(
    'after its call was sent: its bytes stay held until the call ends (the call holds them)',
    RELEASES,
    async ({ gateway: g }) => {
      const port = await listenLocally(g);
      g.fake.enqueueFaults({ kind: 'hang' });
      const body = bodyOfBytes(3000, 'sent-then-left');
      const leaving = rawConnection(
        port,
        `POST ${RECOGNITION} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer ${CLIENT_KEY}\r\n` +
          `content-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
      );
      leaving.response.catch(() => {});
      await g.fake.waitForCalls(1);
      leaving.socket.destroy();
      await leaving.closed;
      await expect
        .poll(() => completionLines(g).filter((l) => l.status === 499).length, EVENT_BOUND)
        .toBe(1);
      expect(await metricSum(g, 'gateway_inflight_bytes')).toBe(3000);
      // The hung call ends when the fake goes (a reset answers it): only then are the bytes free.
      await g.fake.close();
      await expect.poll(() => metricSum(g, 'gateway_inflight_bytes'), EVENT_BOUND).toBe(0);
    },
  );

  test(
    'before its merged call was sent: the call is not sent for it, and a request merged into it makes its own',
    RELEASES,
    async ({ gateway: g }) => {
      vi.useFakeTimers({ toFake: ['Date'] });
      const port = await listenLocally(g);
      const hold = gateHold(g);
      await hold.takeSlot();
      const payload = JSON.stringify(validBody({ question: 'owner leaves' }));
      const leaving = rawConnection(
        port,
        `POST ${RECOGNITION} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer ${CLIENT_KEY}\r\n` +
          `content-type: application/json\r\ncontent-length: ${payload.length}\r\n\r\n${payload}`,
      );
      leaving.response.catch(() => {});
      await hold.queued(1);
      const merged = postJson(g, { key: OTHER_CLIENT_KEY, body: JSON.parse(payload) });
      await expect
        .poll(() => metricSum(g, 'gateway_merge_events_total', { event: 'merged' }), EVENT_BOUND)
        .toBe(1);
      leaving.socket.destroy();
      await leaving.closed;
      await hold.releaseAll();
      const answer = await merged;
      expect(answer.statusCode).toBe(200);
      // One call for the question, sent for the request that stayed.
      const calls = g.fake.calls.filter(
        (c) => (c.body as { question?: unknown })?.question === 'owner leaves',
      );
      expect(calls).toHaveLength(1);
      expect(calls[0]?.headers['x-request-id']).toBe(answer.headers['x-request-id']);
    },
  );
});
