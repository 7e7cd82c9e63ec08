/**
 * Ace Data Cloud's TypeScript SDK (@acedatacloud/sdk) pointed at the gateway: every method that
 * reaches an hCaptcha endpoint, sent as the SDK sends it (requests.ts), forwarded as it was
 * written, and answered with what the SDK's caller reads.
 */
import { describe, expect } from 'vitest';
import { gatewayTest, OTHER_CLIENT_KEY, PNG_1X1, within } from '../helpers.ts';
import {
  forwardedCall,
  RECOGNITION,
  SITE_KEY,
  SITE_URL,
  sdkOutcome,
  send,
  TASKS,
  TOKEN,
  tsSdk,
  type WireRequest,
} from './requests.ts';

const sdk = tsSdk();
const QUESTION = 'Please click each image containing a bus';
const IMAGE_URL = 'https://example.com/img1.jpg';
const SITE = { websiteKey: SITE_KEY, websiteUrl: SITE_URL };

/** What the SDK hands its caller for a 2xx: the parsed body, whatever the 2xx. */
async function okJson(
  g: Parameters<typeof send>[0],
  request: WireRequest,
  status: 200 | 201,
): Promise<Record<string, unknown>> {
  const res = await send(g, request);
  expect(res.statusCode).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/json/);
  const outcome = sdkOutcome(res);
  if (!outcome.ok) throw new Error(`the SDK would raise ${outcome.errorClass}: ${res.body}`);
  return outcome.json;
}

describe('captcha.recognition.hcaptcha', () => {
  gatewayTest('{queries, question} with a Base64 image: the solution', async ({ gateway: g }) => {
    const request = sdk.recognition({ queries: [PNG_1X1], question: QUESTION });
    expect(request.body).toBe(`{"queries":["${PNG_1X1}"],"question":"${QUESTION}"}`);
    const json = await okJson(g, request, 200);
    expect(json.solution).toEqual({
      label: expect.any(String),
      box: [expect.any(String), expect.any(String)],
      confidences: expect.any(Number),
    });
    expect(g.fake.callCount()).toBe(1);
    expect(forwardedCall(g, 0, RECOGNITION).rawBody).toBe(request.body);
  });

  gatewayTest('image URLs and no question: forwarded unchanged', async ({ gateway: g }) => {
    const request = sdk.recognition({ queries: [IMAGE_URL, `${IMAGE_URL}?size=2&v=a%20b`] });
    const json = await okJson(g, request, 200);
    expect(json.solution).toBeTypeOf('object');
    expect(forwardedCall(g, 0, RECOGNITION).rawBody).toBe(request.body);
  });

  gatewayTest('a repeat is answered from the cache', async ({ gateway: g }) => {
    const request = sdk.recognition({ queries: [PNG_1X1], question: QUESTION });
    const first = await send(g, request);
    const second = await send(g, request);
    expect(second.statusCode).toBe(200);
    expect(second.body).toBe(first.body);
    expect(second.headers['cache-status']).toBe('acedata-gateway; hit');
    expect(g.fake.callCount()).toBe(1);
  });

  gatewayTest('extra options reach the upstream as written', async ({ gateway: g }) => {
    // `...extra` is spread first, then queries and question.
    const request = sdk.recognition({ queries: [PNG_1X1], question: QUESTION, priority: 18 });
    expect(Object.keys(request.json)).toEqual(['priority', 'queries', 'question']);
    await okJson(g, request, 200);
    expect(forwardedCall(g, 0, RECOGNITION).rawBody).toBe(request.body);
  });

  gatewayTest('async: true gives 201 {task_id, trace_id}', async ({ gateway: g }) => {
    const request = sdk.recognition({ queries: [PNG_1X1], question: QUESTION, async: true });
    // async travels in `...rest`, so it leads the body.
    expect(request.body.startsWith('{"async":true,')).toBe(true);
    const json = await okJson(g, request, 201);
    expect(json).toEqual({ task_id: expect.any(String), trace_id: expect.any(String) });
    expect(forwardedCall(g, 0, RECOGNITION).rawBody).toBe(request.body);
  });
});

describe('captcha.token.hcaptcha', () => {
  gatewayTest('{website_key, website_url}: a token', async ({ gateway: g }) => {
    const request = sdk.token(SITE);
    expect(request.body).toBe(
      `{"website_key":"${SITE.websiteKey}","website_url":"${SITE.websiteUrl}"}`,
    );
    const json = await okJson(g, request, 200);
    expect(json.token).toMatch(/^P1_/);
    expect(forwardedCall(g, 0, TOKEN).rawBody).toBe(request.body);
  });

  gatewayTest('rqdata and proxy are forwarded as written', async ({ gateway: g }) => {
    const request = sdk.token({
      ...SITE,
      rqdata: 'rq+/=data',
      proxy: 'socks5://user:pass@1.2.3.4:1080',
    });
    expect(Object.keys(request.json)).toEqual(['website_key', 'website_url', 'rqdata', 'proxy']);
    await okJson(g, request, 200);
    expect(forwardedCall(g, 0, TOKEN).rawBody).toBe(request.body);
  });

  gatewayTest('every call solves anew: tokens are single-use', async ({ gateway: g }) => {
    const request = sdk.token(SITE);
    const first = await okJson(g, request, 200);
    const second = await okJson(g, request, 200);
    expect(second.token).not.toBe(first.token);
    expect(g.fake.callCount()).toBe(2);
  });

  gatewayTest('async: true gives 201 {task_id, trace_id}', async ({ gateway: g }) => {
    const request = sdk.token({ ...SITE, async: true });
    expect(request.body).toBe(
      `{"website_key":"${SITE.websiteKey}","website_url":"${SITE.websiteUrl}","async":true}`,
    );
    const json = await okJson(g, request, 201);
    expect(json).toEqual({ task_id: expect.any(String), trace_id: expect.any(String) });
  });
});

describe('polling a task: captcha.tasks.retrieve, tasks.get and tasks.wait', () => {
  let clock = Date.UTC(2026, 7, 1);
  gatewayTest.override('gatewaySettings', {
    fakeOptions: { asyncReadyAfterMs: 10_000, now: () => clock },
  });

  gatewayTest(
    'captcha.tasks.retrieve({taskId}): processing, then ready with the solution',
    async ({ gateway: g }) => {
      const created = await okJson(
        g,
        sdk.recognition({ queries: [PNG_1X1], question: QUESTION, async: true }),
        201,
      );
      const taskId = created.task_id as string;
      const poll = sdk.tasksRetrieve({ taskId });
      expect(poll.body).toBe(`{"task_id":"${taskId}"}`);
      expect(await okJson(g, poll, 200)).toMatchObject({ task_id: taskId, status: 'processing' });
      clock += 10_000;
      const ready = await okJson(g, poll, 200);
      expect(ready).toMatchObject({ task_id: taskId, status: 'ready' });
      expect(ready.solution).toBeTypeOf('object');
      expect(forwardedCall(g, 2, TASKS).rawBody).toBe(poll.body);
    },
  );

  gatewayTest(
    'tasks.get(id, {service: "captcha"}) sends {"id","action":"retrieve"}: accepted and forwarded',
    async ({ gateway: g }) => {
      const created = await okJson(g, sdk.token({ ...SITE, async: true }), 201);
      const taskId = created.task_id as string;
      clock += 10_000;
      const poll = sdk.tasksGet(taskId);
      expect(poll.body).toBe(`{"id":"${taskId}","action":"retrieve"}`);
      const ready = await okJson(g, poll, 200);
      expect(ready).toMatchObject({ task_id: taskId, status: 'ready', token: expect.any(String) });
      expect(forwardedCall(g, 1, TASKS).rawBody).toBe(poll.body);
    },
  );

  describe('with a daily quota of one upstream call', () => {
    gatewayTest.override('gatewaySettings', {
      fakeOptions: { asyncReadyAfterMs: 10_000, now: () => clock },
      limits: { quota: { upstreamCallsPerDay: 1 } },
    });

    gatewayTest(
      "tasks.wait's polls are each forwarded, never cached, and cost no quota",
      async ({ gateway: g }) => {
        const created = await okJson(g, sdk.token({ ...SITE, async: true }), 201);
        const poll = sdk.tasksGet(created.task_id as string);
        const states: unknown[] = [];
        for (let i = 0; i < 3; i++) {
          states.push((await okJson(g, poll, 200)).status);
          clock += 5_000;
        }
        expect(states).toEqual(['processing', 'processing', 'ready']);
        expect(g.fake.callCount(TASKS)).toBe(3);
        // The quota's one unit went to the submission; a second billed call is refused.
        const refused = sdkOutcome(await send(g, sdk.token(SITE)));
        expect(refused).toMatchObject({ ok: false, errorClass: 'RateLimitError', statusCode: 429 });
        expect(g.fake.callCount(TOKEN)).toBe(1);
      },
    );
  });

  gatewayTest(
    "another client's task id: 404 not_found (a plain APIError), not forwarded",
    async ({ gateway: g }) => {
      const created = await okJson(g, sdk.token({ ...SITE, async: true }), 201);
      const other = tsSdk(OTHER_CLIENT_KEY);
      for (const poll of [
        other.tasksRetrieve({ taskId: created.task_id as string }),
        other.tasksGet(created.task_id as string),
      ]) {
        const outcome = sdkOutcome(await send(g, poll));
        expect(outcome).toMatchObject({
          ok: false,
          errorClass: 'APIError',
          statusCode: 404,
          code: 'not_found',
          retried: false,
        });
      }
      expect(g.fake.callCount(TASKS)).toBe(0);
    },
  );
});

describe('a retry that arrives while the first call is still in flight joins it', () => {
  const request = sdk.recognition({ queries: [PNG_1X1], question: QUESTION });

  gatewayTest('original and retry, both waiting: one upstream call', async ({ gateway: g }) => {
    // Long enough that the retry, sent as soon as the upstream has the first call, arrives
    // before the answer; the test waits on events, not on this time.
    g.fake.setLatency(3_000);
    const original = send(g, request);
    await within(g.fake.waitForCalls(1), 20_000, 'the first upstream call');
    const retry = await send(g, request);
    const first = await original;
    expect(retry.statusCode).toBe(200);
    expect(retry.body).toBe(first.body);
    expect(retry.headers['cache-status']).toBe('acedata-gateway; fwd=uri-miss; collapsed');
    expect(g.fake.callCount()).toBe(1);
  });

  gatewayTest(
    'the SDK gave up on the first attempt (its timeout) and re-sent it: one upstream call',
    async ({ gateway: g }) => {
      await g.app.listen({ host: '127.0.0.1', port: 0 });
      const address = g.app.server.address();
      if (address === null || typeof address === 'string') throw new Error('not listening');
      const url = `http://127.0.0.1:${address.port}${request.path}`;
      const post = (signal?: AbortSignal) =>
        fetch(url, { method: 'POST', headers: request.headers, body: request.body, signal });

      g.fake.setLatency(3_000);
      const timeout = new AbortController();
      const first = post(timeout.signal);
      await within(g.fake.waitForCalls(1), 20_000, 'the first upstream call');
      timeout.abort();
      await expect(first).rejects.toThrow();
      const retry = await post();
      expect(retry.status).toBe(200);
      expect(retry.headers.get('cache-status')).toBe('acedata-gateway; fwd=uri-miss; collapsed');
      expect(((await retry.json()) as { solution?: unknown }).solution).toBeTypeOf('object');
      expect(g.fake.callCount()).toBe(1);
    },
  );
});
