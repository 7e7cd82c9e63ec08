import { afterEach, describe, expect, it } from 'vitest';
import {
  CLIENT_KEY,
  OTHER_CLIENT_KEY,
  PNG_1X1,
  postJson,
  RECOGNITION,
  startGateway,
  type TestGateway,
  UPSTREAM_TOKEN,
  validBody,
} from './helpers.ts';

let gw: TestGateway | undefined;

afterEach(async () => {
  await gw?.close();
  gw = undefined;
});

const send = (g: TestGateway, body?: unknown, key?: string) => postJson(g, { body, key });

/** `name{labels} value` lines of the exposition text, as a lookup by the part before the value. */
function samples(text: string): Map<string, number> {
  const map = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const at = line.lastIndexOf(' ');
    map.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return map;
}

describe('GET /metrics', () => {
  it('exposes every gateway metric with bounded labels and no secrets', async () => {
    gw = await startGateway({}, { limits: { rateLimit: { max: 4, windowSeconds: 60 } } });
    gw.fake.enqueueFaults({ kind: 'status', status: 503 });
    await send(gw); // miss, after one retry
    await send(gw); // hit
    await send(gw, validBody(), 'agw_unknown_key_xxxxxxxxxxxxxxxxxxxxxxxxxxxxx'); // 401
    await gw.app.inject({ method: 'GET', url: `/nope/${PNG_1X1.slice(0, 20)}` }); // 404
    await send(gw, validBody({ question: 'other' }));
    await send(gw, validBody({ question: 'again' }));
    await send(gw); // over the limit of 4
    await send(gw, validBody(), OTHER_CLIENT_KEY);

    const res = await gw.app.inject({ method: 'GET', url: '/metrics' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    const s = samples(res.body);
    expect(
      s.get(
        `gateway_requests_total{route="${RECOGNITION}",status="200",client="checkout-service"}`,
      ),
    ).toBe(4);
    expect(
      s.get(
        `gateway_requests_total{route="${RECOGNITION}",status="429",client="checkout-service"}`,
      ),
    ).toBe(1);
    expect(
      s.get(`gateway_requests_total{route="${RECOGNITION}",status="401",client="anonymous"}`),
    ).toBe(1);
    expect(s.get('gateway_requests_total{route="unmatched",status="404",client="anonymous"}')).toBe(
      1,
    );
    expect(s.get(`gateway_request_duration_seconds_count{route="${RECOGNITION}"}`)).toBe(7);
    expect(s.get('gateway_upstream_requests_total{status="503"}')).toBe(1);
    expect(s.get('gateway_upstream_requests_total{status="200"}')).toBe(3);
    expect(s.get('gateway_upstream_duration_seconds_count')).toBe(4);
    expect(s.get('gateway_cache_events_total{event="hit"}')).toBe(2);
    expect(s.get('gateway_cache_events_total{event="miss"}')).toBe(3);
    expect(s.get('gateway_rate_limited_total{client="checkout-service"}')).toBe(1);
    expect(s.get('gateway_upstream_retries_total')).toBe(1);
    expect(s.get('gateway_circuit_state')).toBe(0);
    expect(s.get('gateway_upstream_calls_saved_total')).toBe(2);
    expect(s.get('process_resident_memory_bytes')).toBeGreaterThan(0);
    for (const secret of [
      UPSTREAM_TOKEN,
      CLIENT_KEY,
      OTHER_CLIENT_KEY,
      'agw_unknown',
      PNG_1X1.slice(0, 20),
    ]) {
      expect(res.body).not.toContain(secret);
    }
  });

  it('is off with METRICS_ENABLED=false', async () => {
    gw = await startGateway({ METRICS_ENABLED: 'false' });
    const res = await gw.app.inject({ method: 'GET', url: '/metrics' });
    expect(res.statusCode).toBe(404);
    expect(res.json().error.code).toBe('no_api');
  });
});

describe('OpenAPI and /docs', () => {
  it('describes every route, the request and response bodies, the error envelope and the bearer scheme', async () => {
    gw = await startGateway();
    const res = await gw.app.inject({ method: 'GET', url: '/openapi.json' });
    expect(res.statusCode).toBe(200);
    const doc = res.json();
    expect(doc.openapi).toBe('3.0.3');
    expect(Object.keys(doc.paths).sort()).toEqual(
      [
        '/captcha/recognition/hcaptcha',
        '/captcha/tasks',
        '/healthz',
        '/metrics',
        '/openapi.json',
        '/readyz',
      ].sort(),
    );
    expect(doc.components.securitySchemes.clientKey).toEqual(
      expect.objectContaining({ type: 'http', scheme: 'bearer' }),
    );
    const recognition = doc.paths['/captcha/recognition/hcaptcha'].post;
    expect(recognition.security).toEqual([{ clientKey: [] }]);
    const text = JSON.stringify(doc);
    for (const name of ['question', 'queries', 'task_id', 'solution', 'trace_id'])
      expect(text).toContain(`"${name}"`);
    expect(Object.keys(recognition.responses)).toEqual(
      expect.arrayContaining(['200', '400', '401', '413', '415', '429', '502', '503', '504']),
    );
    expect(JSON.stringify(recognition.responses['429'])).toMatch(/ErrorEnvelope|"success"/);
    expect(doc.paths['/healthz'].get.security).toBeUndefined();
  });

  it('serves a documentation UI at /docs', async () => {
    gw = await startGateway();
    const res = await gw.app.inject({ method: 'GET', url: '/docs' });
    expect([200, 302]).toContain(res.statusCode);
    const page =
      res.statusCode === 302
        ? await gw.app.inject({ method: 'GET', url: `/docs/${res.headers.location}` })
        : res;
    expect(page.body).toMatch(/swagger/i);
  });

  it('is off with DOCS_ENABLED=false', async () => {
    gw = await startGateway({ DOCS_ENABLED: 'false' });
    expect((await gw.app.inject({ method: 'GET', url: '/docs' })).statusCode).toBe(404);
    expect((await gw.app.inject({ method: 'GET', url: '/openapi.json' })).statusCode).toBe(404);
  });

  it('moves /metrics, /docs and /openapi.json to ADMIN_PORT', async () => {
    gw = await startGateway({ ADMIN_PORT: '0' });
    for (const url of ['/metrics', '/openapi.json', '/docs']) {
      expect((await gw.app.inject({ method: 'GET', url })).statusCode).toBe(404);
    }
    const admin = gw.app.admin;
    expect(admin).toBeDefined();
    if (!admin) return;
    expect((await admin.inject({ method: 'GET', url: '/metrics' })).body).toContain(
      'gateway_requests_total',
    );
    const doc = (await admin.inject({ method: 'GET', url: '/openapi.json' })).json();
    expect(Object.keys(doc.paths)).toContain('/captcha/recognition/hcaptcha');
    expect(
      (await admin.inject({ method: 'POST', url: RECOGNITION, payload: '{}' })).statusCode,
    ).toBe(404);
    expect((await gw.app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200);
  });
});

describe('/readyz', () => {
  it('reports an open circuit, and recovers', async () => {
    gw = await startGateway({
      CIRCUIT_BREAKER_THRESHOLD: '2',
      CIRCUIT_BREAKER_COOLDOWN_MS: '60000',
      UPSTREAM_MAX_RETRIES: '0',
    });
    gw.fake.setDefaultFault({ kind: 'status', status: 500 });
    await send(gw, validBody({ question: 'a' }));
    await send(gw, validBody({ question: 'b' }));
    const fastFail = await send(gw, validBody({ question: 'c' }));
    expect(fastFail.statusCode).toBe(503);
    expect(fastFail.json().error.code).toBe('upstream_unavailable');
    const ready = await gw.app.inject({ method: 'GET', url: '/readyz' });
    expect(ready.statusCode).toBe(503);
    expect(ready.json()).toEqual({
      status: 'not_ready',
      failed: { upstream_circuit: 'the upstream circuit breaker is open' },
    });
    const metrics = await gw.app.inject({ method: 'GET', url: '/metrics' });
    expect(samples(metrics.body).get('gateway_circuit_state')).toBe(2);
  });

  it('turns 503 while draining; captcha requests get 503 with connection: close; liveness stays 200', async () => {
    gw = await startGateway();
    gw.app.startDraining();
    const ready = await gw.app.inject({ method: 'GET', url: '/readyz' });
    expect(ready.statusCode).toBe(503);
    expect(ready.json().failed).toEqual({ draining: 'the gateway is shutting down' });
    const refused = await send(gw);
    expect(refused.statusCode).toBe(503);
    expect(refused.headers.connection).toBe('close');
    expect(refused.json()).toMatchObject({ error: { code: 'upstream_unavailable' } });
    expect(gw.fake.callCount()).toBe(0);
    expect((await gw.app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200);
  });
});
