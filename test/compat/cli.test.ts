/**
 * The `hcaptcha` CLI (AceDataCloud/Clis, hcaptcha-cli) pointed at the gateway with
 * ACEDATACLOUD_API_BASE_URL: each command's request as it sends it, and what it then prints.
 * It sends only the options given (`recognize` alone sends `{}`), does not retry, prints the raw
 * error body for statuses other than 401 and 403, and exits 1 on any error.
 */
import { describe, expect } from 'vitest';
import { gatewayTest, PNG_1X1 } from '../helpers.ts';
import {
  cli,
  cliOutcome,
  cliPrinted,
  forwardedCall,
  HTTPX_VERSIONS,
  RECOGNITION,
  SITE_KEY,
  SITE_URL,
  send,
  TASKS,
  TOKEN,
} from './requests.ts';

describe.each(HTTPX_VERSIONS)('hcaptcha CLI with %s', (httpx) => {
  const hcaptcha = cli(httpx);

  gatewayTest(
    'recognize --queries \'["https://…/img1.jpg"]\' --question …: the documented usage',
    async ({ gateway: g }) => {
      const request = hcaptcha.recognize({
        queries: ['https://example.com/img1.jpg', 'https://example.com/img2.jpg'],
        question: 'Select all cars',
      });
      if (httpx === 'httpx<0.28') {
        expect(request.body).toBe(
          '{"queries": ["https://example.com/img1.jpg", "https://example.com/img2.jpg"], "question": "Select all cars"}',
        );
      }
      // The result panel reads solution.box, label, and confidence or confidences.
      const solution = cliPrinted(await send(g, request)).solution as Record<string, unknown>;
      expect(solution.box).toHaveLength(2);
      expect(solution.label).toBeTypeOf('string');
      expect(solution.confidence ?? solution.confidences).toBeTypeOf('number');
      expect(forwardedCall(g, 0, RECOGNITION).rawBody).toBe(request.body);
    },
  );

  gatewayTest('recognize with a Base64 image and no question', async ({ gateway: g }) => {
    const request = hcaptcha.recognize({ queries: [PNG_1X1] });
    expect(cliOutcome(await send(g, request)).exitCode).toBe(0);
    expect(forwardedCall(g, 0, RECOGNITION).rawBody).toBe(request.body);
  });

  gatewayTest(
    'recognize --async: 201 with the task_id the "Task ID" panel shows',
    async ({ gateway: g }) => {
      const request = hcaptcha.recognize({ queries: [PNG_1X1], async: true });
      const res = await send(g, request);
      expect(res.statusCode).toBe(201);
      const outcome = cliOutcome(res);
      expect(outcome).toEqual({
        exitCode: 0,
        json: { task_id: expect.any(String), trace_id: expect.any(String) },
      });
      expect(forwardedCall(g, 0, RECOGNITION).rawBody).toBe(request.body);
    },
  );

  gatewayTest.for([
    ['recognize (no options) sends {}', {}, '{}'],
    ['recognize --question only', { question: 'Select all cars' }, null],
  ] as const)(
    '%s: 400 bad_request printed as the raw body, nothing forwarded',
    async ([, options, body], { gateway: g }) => {
      const request = hcaptcha.recognize(options);
      if (body !== null) expect(request.body).toBe(body);
      const res = await send(g, request);
      expect(res.statusCode).toBe(400);
      expect(res.json().error).toEqual({
        code: 'bad_request',
        message: expect.stringContaining('body.queries'),
      });
      expect(cliOutcome(res)).toEqual({ exitCode: 1, printed: `Error: ${res.body}` });
      expect(g.fake.callCount()).toBe(0);
    },
  );

  gatewayTest(
    'token KEY URL --proxy … --rqdata …: a token (proxy before rqdata in the body)',
    async ({ gateway: g }) => {
      const request = hcaptcha.token(SITE_KEY, SITE_URL, {
        proxy: 'http://user:pass@1.2.3.4:8080',
        rqdata: 'RQ',
      });
      expect(Object.keys(request.json)).toEqual(['website_key', 'website_url', 'proxy', 'rqdata']);
      const outcome = cliOutcome(await send(g, request));
      expect(outcome).toEqual({
        exitCode: 0,
        json: expect.objectContaining({ token: expect.stringMatching(/^P1_/) }),
      });
      expect(forwardedCall(g, 0, TOKEN).rawBody).toBe(request.body);
    },
  );

  gatewayTest('token --async, then task TASK_ID: ready with the token', async ({ gateway: g }) => {
    const created = cliPrinted(await send(g, hcaptcha.token(SITE_KEY, SITE_URL, { async: true })));
    const taskId = created.task_id as string;
    const poll = hcaptcha.task(taskId);
    const outcome = cliOutcome(await send(g, poll));
    // The task panel reads task_id, status, trace_id, token, solution and text.
    expect(outcome).toEqual({
      exitCode: 0,
      json: expect.objectContaining({
        task_id: taskId,
        status: 'ready',
        token: expect.stringMatching(/^P1_/),
      }),
    });
    expect(forwardedCall(g, 1, TASKS).rawBody).toBe(poll.body);
  });

  gatewayTest(
    'task with an id this client did not create: 404 not_found printed raw, exit 1',
    async ({ gateway: g }) => {
      const res = await send(g, hcaptcha.task('61138bb6-19aa-11ec-a9c8-0242ac110002'));
      expect(res.statusCode).toBe(404);
      expect(res.json().error.code).toBe('not_found');
      expect(cliOutcome(res)).toEqual({ exitCode: 1, printed: `Error: ${res.body}` });
      expect(g.fake.callCount()).toBe(0);
    },
  );

  gatewayTest('--token with an unknown key: "Invalid API token"', async ({ gateway: g }) => {
    const res = await send(g, cli(httpx, 'agw_not_a_key').recognize({ queries: [PNG_1X1] }));
    expect(res.statusCode).toBe(401);
    expect(cliOutcome(res)).toEqual({ exitCode: 1, printed: 'Error: Invalid API token' });
    expect(g.fake.callCount()).toBe(0);
  });

  describe('a client over its rate limit', () => {
    gatewayTest.override('gatewaySettings', {
      limits: { rateLimit: { max: 1, windowSeconds: 60 } },
    });

    gatewayTest(
      'the raw 429 body is printed, with its too_many_requests code',
      async ({ gateway: g }) => {
        expect(cliOutcome(await send(g, hcaptcha.recognize({ queries: [PNG_1X1] }))).exitCode).toBe(
          0,
        );
        const res = await send(g, hcaptcha.recognize({ queries: [PNG_1X1] }));
        expect(res.statusCode).toBe(429);
        const outcome = cliOutcome(res);
        expect(outcome).toEqual({ exitCode: 1, printed: `Error: ${res.body}` });
        expect(res.json().error.code).toBe('too_many_requests');
        expect(g.fake.callCount()).toBe(1);
      },
    );
  });
});
