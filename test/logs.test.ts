import { describe, expect } from 'vitest';
import {
  authHeaders,
  CLIENT_KEY,
  completionLines,
  completionOf,
  gatewayTest,
  PNG_1X1,
  postJson,
  RECOGNITION,
  TASKS,
  UPSTREAM_TOKEN,
  validBody,
} from './helpers.ts';

const test = gatewayTest.override('gatewaySettings', {
  env: { UPSTREAM_TIMEOUT_MS: '1000', UPSTREAM_MAX_RETRIES: '0' },
  limits: { quota: { upstreamCallsPerDay: 3 } },
});

describe('the completion log line', () => {
  test('one line per request, with every field of the contract', async ({ gateway: g }) => {
    const body = validBody({ queries: [PNG_1X1, PNG_1X1] });
    const res = await postJson(g, { body, headers: { 'x-request-id': 'log-test-1' } });
    expect(res.statusCode).toBe(200);
    expect(completionLines(g)).toHaveLength(1);
    expect(completionOf(g, res)).toMatchObject({
      level: 30,
      trace_id: 'log-test-1',
      client: 'checkout-service',
      route: RECOGNITION,
      method: 'POST',
      status: 200,
      duration_ms: expect.any(Number),
      cache: 'miss',
      upstream_status: 200,
      upstream_ms: expect.any(Number),
      retries: 0,
      billed: true,
      images: 2,
      body_bytes: Buffer.byteLength(JSON.stringify(body)),
      msg: 'request completed',
    });
    // Every line of this request carries the same trace id, and there is only the one.
    expect(g.logs().filter((l) => l.trace_id === 'log-test-1')).toHaveLength(1);
  });

  test('carries error_code for every error answer, and the limit that refused', async ({
    gateway: g,
  }) => {
    const answers = [
      await g.app.inject({ method: 'POST', url: RECOGNITION, payload: '{}' }),
      await g.app.inject({ method: 'GET', url: '/some/random/path?x=1' }),
      await postJson(g, { body: { queries: [] } }),
      await postJson(g, { url: TASKS, body: { task_id: 'nobody-made-this' } }),
    ];
    g.fake.enqueueFaults({ kind: 'malformed' });
    answers.push(await postJson(g, { body: validBody({ question: 'malformed' }) }));
    for (const question of ['a', 'b']) await postJson(g, { body: validBody({ question }) });
    answers.push(await postJson(g, { body: validBody({ question: 'over quota' }) }));

    expect(answers.map((res) => completionOf(g, res))).toMatchObject([
      { status: 401, error_code: 'invalid_token', route: RECOGNITION },
      { status: 404, error_code: 'no_api', route: 'unmatched' },
      { status: 400, error_code: 'bad_request', client: 'checkout-service' },
      { status: 404, error_code: 'not_found', route: TASKS },
      { status: 502, error_code: 'upstream_error', billed: true },
      { status: 429, error_code: 'too_many_requests', limit: 'quota' },
    ]);
    // The 401's line has no client, and its trace id is the one in the error body.
    const unauthenticated = answers[0] as (typeof answers)[number];
    expect(completionOf(g, unauthenticated)?.client).toBeUndefined();
    expect(completionOf(g, unauthenticated)?.trace_id).toBe(unauthenticated.json().trace_id);
  });

  test("an upstream error passed through names the upstream's code", async ({ gateway: g }) => {
    g.fake.enqueueFaults({ kind: 'status', status: 400, code: 'bad_request' });
    const res = await postJson(g);
    expect(completionOf(g, res)).toMatchObject({
      status: 400,
      upstream_status: 400,
      error_code: 'bad_request',
      level: 30,
    });
  });
});

describe('secrets never reach a log line or an error body', () => {
  test('the upstream token, client keys and image data, at debug level, whatever happens', async ({
    gateway: g,
  }) => {
    expect(g.config.LOG_LEVEL).toBe('debug');
    const image = Buffer.concat([Buffer.from(PNG_1X1, 'base64'), Buffer.alloc(3000, 7)]).toString(
      'base64',
    );
    const notImage = Buffer.from('plain text that should never be logged '.repeat(5)).toString(
      'base64',
    );
    const requests = [
      { headers: authHeaders(), body: validBody({ queries: [image] }) },
      { headers: authHeaders(), body: validBody({ queries: [notImage] }) },
      {
        headers: authHeaders('agw_wrong_key_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'),
        body: validBody({ queries: [image] }),
      },
      {
        headers: { ...authHeaders(), 'content-type': 'text/plain' },
        body: validBody({ queries: [image] }),
      },
    ];
    const faults = [
      undefined,
      { kind: 'status', status: 401 },
      { kind: 'garbage', body: image },
      { kind: 'status', status: 500, message: `echoed ${UPSTREAM_TOKEN} and ${CLIENT_KEY}` },
      { kind: 'hang' },
    ] as const;
    const bodies: string[] = [];
    for (const [n, fault] of faults.entries()) {
      g.fake.reset();
      if (fault) g.fake.enqueueFaults(fault);
      for (const { headers, body } of requests) {
        const res = await g.app.inject({
          method: 'POST',
          url: RECOGNITION,
          headers,
          payload: JSON.stringify({ ...body, question: `round ${n}` }),
        });
        bodies.push(res.body);
      }
    }
    const everything = `${g.logLines.join('\n')}\n${bodies.join('\n')}`;
    expect(g.logLines.length).toBeGreaterThan(20);
    for (const secret of [
      UPSTREAM_TOKEN,
      CLIENT_KEY,
      'agw_wrong_key',
      image.slice(0, 40),
      notImage.slice(0, 40),
      PNG_1X1.slice(0, 30),
    ]) {
      expect(everything).not.toContain(secret);
    }
    expect(everything).not.toMatch(/bearer [A-Za-z0-9_]/i);
    // The upstream's 401 was logged with the upstream's own trace id, and never with its token.
    expect(
      g.logs().some((l) => l.upstream_status === 401 && typeof l.upstream_trace_id === 'string'),
    ).toBe(true);
  });
});
