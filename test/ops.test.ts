import { describe, expect } from 'vitest';
import {
  CLIENT_KEY,
  gatewayTest,
  listenLocally,
  OTHER_CLIENT_KEY,
  PNG_1X1,
  postJson,
  RECOGNITION,
  scrapeMetrics,
  type TestGateway,
  TOKEN,
  UPSTREAM_TOKEN,
  validBody,
} from './helpers.ts';

// Merge events are counted where they happen: merged (cache-app), remote (cache-redis-app,
// billing), takeover, fallback, timeout and lock_lost (deadlines); token and breaker state
// (readiness); quota and in-flight refusals (limits, admission).

const send = (g: TestGateway, body?: unknown, key?: string) => postJson(g, { body, key });

/** Every metric the gateway registers itself (process_* and nodejs_* come from prom-client). */
const GATEWAY_METRICS = [
  'gateway_requests_total',
  'gateway_request_duration_seconds',
  'gateway_upstream_requests_total',
  'gateway_upstream_duration_seconds',
  'gateway_upstream_billed_total',
  'gateway_cache_events_total',
  'gateway_merge_events_total',
  'gateway_rate_limited_total',
  'gateway_quota_refused_total',
  'gateway_inflight_refused_total',
  'gateway_upstream_retries_total',
  'gateway_upstream_retry_budget_exhausted_total',
  'gateway_upstream_calls_saved_total',
  'gateway_circuit_transitions_total',
  'gateway_upstream_token_transitions_total',
  'gateway_circuit_state',
  'gateway_upstream_tokens_usable',
  'gateway_upstream_tokens',
  'gateway_upstream_in_flight',
  'gateway_upstream_queued',
  'gateway_inflight_bytes',
  'gateway_inflight_requests',
  'gateway_readiness_check',
  'gateway_clients_reload_total',
  'gateway_clients_file_valid',
  'gateway_client_usage_total',
];

describe('GET /metrics (admin server)', () => {
  const test = gatewayTest.override('gatewaySettings', {
    limits: { rateLimit: { max: 4, windowSeconds: 60 } },
  });

  test('exposes every gateway metric with bounded labels and no secrets', async ({
    gateway: g,
  }) => {
    g.fake.enqueueFaults({ kind: 'status', status: 503 });
    await send(g); // a miss, after one retry
    await send(g); // a hit
    await send(g, validBody(), 'agw_unknown_key_xxxxxxxxxxxxxxxxxxxxxxxxxxxxx'); // 401
    await g.app.inject({ method: 'GET', url: `/nope/${PNG_1X1.slice(0, 20)}` }); // 404
    await send(g, validBody({ question: 'other' }));
    await postJson(g, { url: TOKEN, body: { website_key: 'k', website_url: 'https://x.test' } });
    await send(g); // over the limit of 4
    await send(g, validBody(), OTHER_CLIENT_KEY);

    const res = await g.admin.inject({ method: 'GET', url: '/metrics' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    for (const name of GATEWAY_METRICS) expect(res.body, name).toContain(`# TYPE ${name} `);
    const s = await scrapeMetrics(g);
    const requests = (route: string, status: number, client: string) =>
      s.get(`gateway_requests_total{route="${route}",status="${status}",client="${client}"}`);
    expect(requests(RECOGNITION, 200, 'checkout-service')).toBe(3);
    expect(requests(TOKEN, 200, 'checkout-service')).toBe(1);
    expect(requests(RECOGNITION, 429, 'checkout-service')).toBe(1);
    expect(requests(RECOGNITION, 401, 'anonymous')).toBe(1);
    expect(requests('unmatched', 404, 'anonymous')).toBe(1);
    expect(requests(RECOGNITION, 200, 'other-service')).toBe(1);
    expect(s.get(`gateway_request_duration_seconds_count{route="${RECOGNITION}"}`)).toBe(6);
    expect(s.get('gateway_upstream_requests_total{status="503"}')).toBe(1);
    expect(s.get('gateway_upstream_requests_total{status="200"}')).toBe(3);
    expect(s.get('gateway_upstream_duration_seconds_count')).toBe(4);
    expect(s.get('gateway_upstream_billed_total')).toBe(3);
    expect(s.get('gateway_cache_events_total{event="hit"}')).toBe(2);
    expect(s.get('gateway_cache_events_total{event="miss"}')).toBe(2);
    expect(s.get('gateway_rate_limited_total{client="checkout-service"}')).toBe(1);
    expect(s.get('gateway_upstream_retries_total{reason="status_503"}')).toBe(1);
    expect(s.get('gateway_circuit_state')).toBe(0);
    expect(s.get('gateway_upstream_tokens_usable')).toBe(1);
    expect(s.get('gateway_upstream_calls_saved_total')).toBe(2);
    expect(s.get('gateway_inflight_requests')).toBe(0);
    expect(s.get('gateway_inflight_bytes')).toBe(0);
    expect(s.get('gateway_readiness_check{check="draining"}')).toBe(0);
    expect(s.get('process_resident_memory_bytes')).toBeGreaterThan(0);
    for (const secret of [UPSTREAM_TOKEN, CLIENT_KEY, OTHER_CLIENT_KEY, 'agw_unknown']) {
      expect(res.body).not.toContain(secret);
    }
    expect(res.body).not.toContain(PNG_1X1.slice(0, 20));
    // Labels are bounded: routes are patterns, clients known ids or "anonymous".
    const clients = new Set([...res.body.matchAll(/client="([^"]*)"/g)].map((m) => m[1]));
    expect([...clients].sort()).toEqual(['anonymous', 'checkout-service', 'other-service']);
    const routes = new Set([...res.body.matchAll(/route="([^"]*)"/g)].map((m) => m[1]));
    for (const route of routes) expect(route).toMatch(/^(\/captcha\/[a-z/]+|unmatched)$/);
  });

  test('scrapes are not counted as API requests and log at debug', async ({ gateway: g }) => {
    await scrapeMetrics(g);
    const s = await scrapeMetrics(g);
    expect([...s.keys()].some((k) => k.includes('route="/metrics"'))).toBe(false);
    const scrapes = g.logs().filter((l) => l.msg === 'request completed' && l.route === '/metrics');
    expect(scrapes.map((l) => l.level)).toEqual([20, 20]);
  });
});

describe('METRICS_ENABLED=false', () => {
  const test = gatewayTest.override('gatewaySettings', { env: { METRICS_ENABLED: 'false' } });

  test('serves no /metrics anywhere', async ({ gateway: g }) => {
    for (const server of [g.app, g.admin]) {
      const res = await server.inject({ method: 'GET', url: '/metrics' });
      expect(res.statusCode).toBe(404);
      expect(res.json().error.code).toBe('no_api');
    }
    expect((await g.admin.inject({ method: 'GET', url: '/openapi.json' })).statusCode).toBe(200);
  });
});

describe('DOCS_ENABLED=false', () => {
  const test = gatewayTest.override('gatewaySettings', { env: { DOCS_ENABLED: 'false' } });

  test('serves no /docs or /openapi.json anywhere', async ({ gateway: g }) => {
    for (const server of [g.app, g.admin]) {
      for (const url of ['/docs', '/openapi.json']) {
        expect((await server.inject({ method: 'GET', url })).statusCode).toBe(404);
      }
    }
    expect((await g.admin.inject({ method: 'GET', url: '/metrics' })).statusCode).toBe(200);
  });
});

describe('the admin server', () => {
  gatewayTest(
    'listens on its own port: operations there, the API on the API port, never crossed',
    async ({ gateway: g }) => {
      const apiPort = await listenLocally(g);
      await g.admin.listen({ host: '127.0.0.1', port: 0 });
      const address = g.admin.server.address();
      const adminPort = typeof address === 'object' && address ? address.port : 0;
      expect(adminPort).not.toBe(apiPort);
      const get = (port: number, path: string) => fetch(`http://127.0.0.1:${port}${path}`);

      for (const path of ['/metrics', '/openapi.json', '/docs', '/usage']) {
        const api = await get(apiPort, path);
        expect(api.status, path).toBe(404);
        expect(((await api.json()) as { error: { code: string } }).error.code).toBe('no_api');
        const admin = await get(adminPort, path);
        expect(admin.status, path).toBe(200);
        await admin.arrayBuffer();
      }
      const doc = (await (await get(adminPort, '/openapi.json')).json()) as {
        paths: Record<string, unknown>;
      };
      expect(Object.keys(doc.paths)).toEqual(
        expect.arrayContaining([RECOGNITION, TOKEN, '/captcha/tasks', '/healthz', '/readyz']),
      );
      // The operations routes are not part of the API's own document.
      expect(Object.keys(doc.paths)).not.toContain('/metrics');

      const captcha = await fetch(`http://127.0.0.1:${adminPort}${RECOGNITION}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify(validBody()),
      });
      expect(captcha.status).toBe(404);
      await captcha.arrayBuffer();
      expect((await get(apiPort, '/healthz')).status).toBe(200);
      expect((await get(adminPort, '/healthz')).status).toBe(404);
      expect(g.fake.callCount()).toBe(0);
    },
  );
});
