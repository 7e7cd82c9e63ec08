/**
 * Ace Data Cloud's Python SDK (acedatacloud) pointed at the gateway. Its bodies are httpx's JSON:
 * Python's `", "` / `": "` separators with non-ASCII escaped before httpx 0.28, compact raw UTF-8
 * from 0.28 on; both are accepted and forwarded byte for byte.
 */
import { describe, expect } from 'vitest';
import { gatewayTest, PNG_1X1 } from '../helpers.ts';
import {
  forwardedCall,
  HTTPX_VERSIONS,
  pySdk,
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

const QUESTION = '请点击每一张包含公交车的图片';
/** The same text as Python's json.dumps writes it by default (ensure_ascii). */
const QUESTION_ESCAPED =
  '\\u8bf7\\u70b9\\u51fb\\u6bcf\\u4e00\\u5f20\\u5305\\u542b\\u516c\\u4ea4\\u8f66\\u7684\\u56fe\\u7247';
const IMAGE_URL = 'https://example.com/img1.jpg';
const SITE = { website_key: SITE_KEY, website_url: SITE_URL };

async function okJson(g: Parameters<typeof send>[0], request: WireRequest, status: 200 | 201) {
  const res = await send(g, request);
  expect(res.statusCode).toBe(status);
  const outcome = sdkOutcome(res);
  if (!outcome.ok) throw new Error(`the SDK would raise ${outcome.errorClass}: ${res.body}`);
  return outcome.json;
}

describe.each(HTTPX_VERSIONS)('Python SDK with %s', (httpx) => {
  const sdk = pySdk(httpx);

  gatewayTest(
    'recognition.hcaptcha(queries=…, question=…): the solution, the body forwarded as written',
    async ({ gateway: g }) => {
      const request = sdk.recognition({ queries: [PNG_1X1], question: QUESTION });
      expect(request.body).toBe(
        httpx === 'httpx<0.28'
          ? `{"queries": ["${PNG_1X1}"], "question": "${QUESTION_ESCAPED}"}`
          : `{"queries":["${PNG_1X1}"],"question":"${QUESTION}"}`,
      );
      const json = await okJson(g, request, 200);
      expect(json.solution).toBeTypeOf('object');
      expect(forwardedCall(g, 0, RECOGNITION).rawBody).toBe(request.body);
    },
  );

  gatewayTest('image URLs without a question', async ({ gateway: g }) => {
    const request = sdk.recognition({ queries: [IMAGE_URL] });
    await okJson(g, request, 200);
    expect(forwardedCall(g, 0, RECOGNITION).rawBody).toBe(request.body);
  });

  gatewayTest(
    'async_=False is sent as "async": false: a sync answer, and the same cache entry as the TypeScript SDK\'s request without async',
    async ({ gateway: g }) => {
      const python = sdk.recognition({ queries: [PNG_1X1], question: QUESTION, async_: false });
      expect(python.json).toEqual({ queries: [PNG_1X1], question: QUESTION, async: false });
      const first = await okJson(g, python, 200);
      const node = await send(g, tsSdk().recognition({ queries: [PNG_1X1], question: QUESTION }));
      // The upstream would receive the same question, images and fields (async false is its
      // default): one answer for both.
      expect(node.statusCode).toBe(200);
      expect(node.json()).toEqual(first);
      expect(node.headers['cache-status']).toBe('acedata-gateway; hit');
      expect(g.fake.callCount()).toBe(1);
    },
  );

  gatewayTest('async_=True gives 201 {task_id, trace_id}', async ({ gateway: g }) => {
    const request = sdk.recognition({ queries: [PNG_1X1], question: QUESTION, async_: true });
    expect(Object.keys(request.json)).toEqual(['queries', 'question', 'async']);
    const json = await okJson(g, request, 201);
    expect(json).toEqual({ task_id: expect.any(String), trace_id: expect.any(String) });
    expect(forwardedCall(g, 0, RECOGNITION).rawBody).toBe(request.body);
  });

  gatewayTest('**kwargs come first and reach the upstream as written', async ({ gateway: g }) => {
    const request = sdk.recognition({
      queries: [PNG_1X1],
      kwargs: { note: 'élan', retries: 0 },
    });
    expect(Object.keys(request.json)).toEqual(['note', 'retries', 'queries']);
    await okJson(g, request, 200);
    expect(forwardedCall(g, 0, RECOGNITION).rawBody).toBe(request.body);
  });

  gatewayTest(
    'token.hcaptcha(website_key, website_url, rqdata, proxy): a token',
    async ({ gateway: g }) => {
      const request = sdk.token({ ...SITE, rqdata: 'rq', proxy: 'http://user:pass@1.2.3.4:8080' });
      expect(Object.keys(request.json)).toEqual(['website_key', 'website_url', 'rqdata', 'proxy']);
      const json = await okJson(g, request, 200);
      expect(json.token).toMatch(/^P1_/);
      expect(forwardedCall(g, 0, TOKEN).rawBody).toBe(request.body);
    },
  );

  gatewayTest(
    'token async, then captcha.tasks.retrieve(task_id=…) and tasks.get(…, service="captcha")',
    async ({ gateway: g }) => {
      const created = await okJson(g, sdk.token({ ...SITE, async_: true }), 201);
      const taskId = created.task_id as string;
      for (const poll of [sdk.tasksRetrieve(taskId), sdk.tasksGet(taskId)]) {
        const json = await okJson(g, poll, 200);
        expect(json).toMatchObject({ task_id: taskId, status: 'ready' });
        expect(json.token).toMatch(/^P1_/);
      }
      expect(forwardedCall(g, 1, TASKS).rawBody).toBe(sdk.tasksRetrieve(taskId).body);
      expect(forwardedCall(g, 2, TASKS).rawBody).toBe(sdk.tasksGet(taskId).body);
    },
  );
});
