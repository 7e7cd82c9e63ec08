/**
 * The MCP server's hCaptcha tools (AceDataCloud/MCPs, mcp-hcaptcha) with ACEDATACLOUD_API_BASE_URL
 * pointing at the gateway: each tool's request, and the JSON string the tool returns to the model.
 * Errors come back as {"error": "Authentication Error" | "API Error", "message"}: the message is all
 * the model sees, so the gateway's messages must say what happened.
 */
import { describe, expect } from 'vitest';
import { gatewayTest, PNG_1X1, UPSTREAM_TOKEN } from '../helpers.ts';
import {
  forwardedCall,
  HTTPX_VERSIONS,
  mcp,
  mcpToolResult,
  RECOGNITION,
  SITE_KEY,
  SITE_URL,
  send,
  TASKS,
  TOKEN,
} from './requests.ts';

const QUESTION = 'Please click each image containing a bus';
const SITE = { website_key: SITE_KEY, website_url: SITE_URL };

describe.each(HTTPX_VERSIONS)('MCP tools with %s', (httpx) => {
  const tools = mcp(httpx);

  gatewayTest.for(['default', 'sync'] as const)(
    'hcaptcha_recognize, mode %s: no "async" field, the solution',
    async (mode, { gateway: g }) => {
      const request = tools.recognize({
        queries: [PNG_1X1],
        question: QUESTION,
        mode: mode === 'default' ? undefined : mode,
      });
      expect(Object.keys(request.json)).toEqual(['queries', 'question']);
      const res = await send(g, request);
      expect(res.statusCode).toBe(200);
      expect(mcpToolResult(res).solution).toBeTypeOf('object');
      expect(forwardedCall(g, 0, RECOGNITION).rawBody).toBe(request.body);
    },
  );

  gatewayTest(
    'hcaptcha_recognize, mode async, then hcaptcha_get_task until ready',
    async ({ gateway: g }) => {
      const request = tools.recognize({ queries: [PNG_1X1], question: QUESTION, mode: 'async' });
      expect(request.json.async).toBe(true);
      const created = await send(g, request);
      expect(created.statusCode).toBe(201);
      const taskId = mcpToolResult(created).task_id as string;
      const poll = tools.getTask(taskId);
      const res = await send(g, poll);
      expect(res.statusCode).toBe(200);
      expect(mcpToolResult(res)).toMatchObject({
        task_id: taskId,
        status: 'ready',
        solution: expect.any(Object),
      });
      expect(forwardedCall(g, 1, TASKS).rawBody).toBe(poll.body);
    },
  );

  gatewayTest('hcaptcha_get_token with rqdata, proxy; and mode async', async ({ gateway: g }) => {
    const sync = tools.getToken({ ...SITE, rqdata: 'RQ', proxy: 'http://1.2.3.4:8080' });
    expect(Object.keys(sync.json)).toEqual(['website_key', 'website_url', 'rqdata', 'proxy']);
    const res = await send(g, sync);
    expect(res.statusCode).toBe(200);
    expect(mcpToolResult(res).token).toMatch(/^P1_/);
    expect(forwardedCall(g, 0, TOKEN).rawBody).toBe(sync.body);

    const created = await send(g, tools.getToken({ ...SITE, mode: 'async' }));
    expect(created.statusCode).toBe(201);
    expect(mcpToolResult(created).task_id).toBeTypeOf('string');
  });

  gatewayTest(
    'an unknown key: "Authentication Error" with the gateway\'s message',
    async ({ gateway: g }) => {
      const res = await send(g, mcp(httpx, 'agw_unknown').getToken(SITE));
      expect(res.statusCode).toBe(401);
      expect(mcpToolResult(res)).toEqual({
        error: 'Authentication Error',
        message: expect.stringContaining('client key'),
      });
      expect(g.fake.callCount()).toBe(0);
    },
  );

  gatewayTest(
    "the gateway's account is out of balance: the message says whose account",
    async ({ gateway: g }) => {
      g.fake.revokeToken(UPSTREAM_TOKEN, 'used_up');
      const res = await send(g, tools.getToken(SITE));
      expect(res.statusCode).toBe(403);
      expect(mcpToolResult(res)).toEqual({
        error: 'Authentication Error',
        message: expect.stringMatching(/gateway's Ace Data Cloud account/),
      });
    },
  );

  gatewayTest(
    "hcaptcha_get_task on another client's task: API Error, task not found",
    async ({ gateway: g }) => {
      const res = await send(g, tools.getTask('61138bb6-19aa-11ec-a9c8-0242ac110002'));
      expect(res.statusCode).toBe(404);
      expect(mcpToolResult(res)).toEqual({
        error: 'API Error',
        message: expect.stringContaining('task not found'),
      });
      expect(g.fake.callCount()).toBe(0);
    },
  );

  describe('a task that misses the upstream deadline', () => {
    let clock = Date.UTC(2026, 7, 1);
    gatewayTest.override('gatewaySettings', {
      fakeOptions: { asyncReadyAfterMs: 1_000, taskDeadlineMs: 120_000, now: () => clock },
    });

    gatewayTest(
      'hcaptcha_get_task: the flat 504 passes through; the tool reports its detail',
      async ({ gateway: g }) => {
        g.fake.enqueueFaults({ kind: 'task_timeout', path: TOKEN });
        const created = await send(g, tools.getToken({ ...SITE, mode: 'async' }));
        const taskId = mcpToolResult(created).task_id as string;
        clock += 120_000;
        const res = await send(g, tools.getTask(taskId));
        expect(res.statusCode).toBe(504);
        expect(res.json()).toMatchObject({ code: 'timeout', status: 'failed', task_id: taskId });
        expect(mcpToolResult(res)).toEqual({
          error: 'API Error',
          message: 'The captcha task timed out.',
        });
        // A terminal answer: read once, not retried by the gateway.
        expect(g.fake.callCount(TASKS)).toBe(1);
      },
    );
  });
});
