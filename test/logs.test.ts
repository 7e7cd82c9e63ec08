import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  authHeaders,
  CLIENT_KEY,
  PNG_1X1,
  startGateway,
  type TestGateway,
  UPSTREAM_TOKEN,
  validBody,
} from './helpers.ts';

const RECOGNITION = '/captcha/recognition/hcaptcha';

let gw: TestGateway;
beforeAll(async () => {
  gw = await startGateway({ UPSTREAM_TIMEOUT_MS: '1000', CACHE_TTL_SECONDS: '0' });
});
afterAll(async () => {
  await gw.close();
});

const completionLines = () => gw.logs().filter((line) => line.msg === 'request completed');

describe('completion log line', () => {
  it('writes exactly one line per request with every contract field', async () => {
    const before = completionLines().length;
    const res = await gw.app.inject({
      method: 'POST',
      url: RECOGNITION,
      headers: { ...authHeaders(), 'x-request-id': 'log-test-1' },
      payload: JSON.stringify(validBody({ queries: [PNG_1X1, PNG_1X1] })),
    });
    expect(res.statusCode).toBe(200);
    const lines = completionLines().slice(before);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      trace_id: 'log-test-1',
      client: 'checkout-service',
      route: RECOGNITION,
      status: 200,
      duration_ms: expect.any(Number),
      upstream_status: 200,
      upstream_ms: expect.any(Number),
      retries: 0,
      images: 2,
      body_bytes: Buffer.byteLength(JSON.stringify(validBody({ queries: [PNG_1X1, PNG_1X1] }))),
    });
    // Every line of this request carries the same trace id.
    expect(gw.logs().filter((l) => l.trace_id === 'log-test-1')).toHaveLength(1);
  });

  it("uses the same trace_id in an error body and in the request's log line", async () => {
    const res = await gw.app.inject({ method: 'POST', url: RECOGNITION, payload: '{}' });
    expect(res.statusCode).toBe(401);
    const traceId = res.json().trace_id;
    const line = completionLines().find((l) => l.trace_id === traceId);
    expect(line).toMatchObject({ status: 401, route: RECOGNITION });
    expect(line?.client).toBeUndefined();
  });

  it('labels an unknown route as one value so log and metric labels stay bounded', async () => {
    const res = await gw.app.inject({ method: 'GET', url: '/some/random/path?x=1' });
    const line = completionLines().find((l) => l.trace_id === res.headers['x-request-id']);
    expect(line).toMatchObject({ route: 'unmatched', status: 404 });
  });
});

describe('secrets never reach a log line or an error body', () => {
  it('keeps the upstream token, client keys and image data out of every line, at debug level', async () => {
    expect(gw.config.LOG_LEVEL).toBe('debug');
    const image = Buffer.concat([Buffer.from(PNG_1X1, 'base64'), Buffer.alloc(3000, 7)]).toString(
      'base64',
    );
    const notImage = Buffer.from('plain text that should never be logged '.repeat(5)).toString(
      'base64',
    );
    const bodies: string[] = [];
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
      { kind: 'hang' },
    ] as const;
    for (const fault of faults) {
      if (fault) gw.fake.enqueueFaults(fault);
      for (const { headers, body } of requests) {
        const res = await gw.app.inject({
          method: 'POST',
          url: RECOGNITION,
          headers,
          payload: JSON.stringify(body),
        });
        bodies.push(res.body);
      }
      gw.fake.reset();
    }
    const everything = `${gw.logLines.join('\n')}\n${bodies.join('\n')}`;
    expect(gw.logLines.length).toBeGreaterThan(16);
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
    // The 401 from upstream was logged with the upstream's own trace id, not with its token.
    expect(
      gw.logs().some((l) => l.upstream_status === 401 && typeof l.upstream_trace_id === 'string'),
    ).toBe(true);
  });
});
