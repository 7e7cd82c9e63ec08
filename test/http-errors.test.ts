import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { authHeaders, startGateway, type TestGateway, validBody } from './helpers.ts';

/** Requests that never reach a route still get the envelope, a trace id and a log line. */
let gw: TestGateway;
let port: number;

beforeAll(async () => {
  gw = await startGateway({ REQUEST_TIMEOUT_MS: '1000' });
  await gw.app.listen({ host: '127.0.0.1', port: 0 });
  const address = gw.app.server.address();
  port = typeof address === 'object' && address ? address.port : 0;
});
afterAll(async () => {
  await gw.close();
});

/** Sends raw bytes and resolves with everything the server wrote before closing. */
function rawExchange(request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let received = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      received += chunk;
    });
    socket.on('close', () => resolve(received));
    socket.on('error', reject);
    socket.write(request);
  });
}

function parse(raw: string) {
  const [head = '', body = ''] = raw.split('\r\n\r\n');
  const [statusLine = '', ...headerLines] = head.split('\r\n');
  const headers = Object.fromEntries(
    headerLines.map((line) => {
      const at = line.indexOf(':');
      return [line.slice(0, at).toLowerCase(), line.slice(at + 1).trim()];
    }),
  );
  return { status: Number(statusLine.split(' ')[1]), headers, body: JSON.parse(body) };
}

describe('errors before routing', () => {
  it('answers a URL that cannot be decoded with the envelope, one log line and one count', async () => {
    const res = await gw.app.inject({ method: 'GET', url: '/%zz' });
    expect(res.statusCode).toBe(400);
    expect(res.json()).toEqual({
      success: false,
      error: { code: 'bad_request', message: 'the request URL is malformed' },
      trace_id: res.headers['x-request-id'],
    });
    const lines = gw.logs().filter((l) => l.trace_id === res.headers['x-request-id']);
    expect(lines).toMatchObject([{ msg: 'request completed', status: 400, route: 'unmatched' }]);
    const metrics = (await gw.app.inject({ method: 'GET', url: '/metrics' })).body;
    expect(metrics).toContain(
      'gateway_requests_total{route="unmatched",status="400",client="anonymous"} 1',
    );
  });

  it.each([
    ['a malformed JSON body', 'application/json', '{'],
    ['a text body', 'text/plain', 'hello'],
    ['an empty JSON body', 'application/json', ''],
  ])(
    'answers an unknown route 404 no_api before reading %s',
    async (_why, contentType, payload) => {
      const res = await gw.app.inject({
        method: 'POST',
        url: '/captcha/recognition/nothing',
        headers: { 'content-type': contentType },
        payload,
      });
      expect(res.statusCode).toBe(404);
      expect(res.json()).toMatchObject({
        error: { code: 'no_api' },
        trace_id: res.headers['x-request-id'],
      });
    },
  );

  it('answers a request the HTTP parser rejects with the envelope and logs it', async () => {
    const raw = await rawExchange('GET /healthz HTTP/1.1\r\nhost: x\r\nx-bad\x01header: 1\r\n\r\n');
    const res = parse(raw);
    expect(res.status).toBe(400);
    expect(res.body).toEqual({
      success: false,
      error: { code: 'bad_request', message: 'malformed HTTP request' },
      trace_id: res.headers['x-request-id'],
    });
    expect(res.headers.connection).toBe('close');
    expect(
      gw.logs().some((l) => l.trace_id === res.body.trace_id && l.msg === 'request completed'),
    ).toBe(true);
  });

  it('cuts off a client that sends its body too slowly with 408, while others are served', async () => {
    const body = JSON.stringify(validBody());
    const headers = Object.entries({ ...authHeaders(), 'content-length': String(body.length) })
      .map(([name, value]) => `${name}: ${value}\r\n`)
      .join('');
    const slow = rawExchange(
      `POST /captcha/recognition/hcaptcha HTTP/1.1\r\nhost: x\r\nx-request-id: slow-1\r\n${headers}\r\n{"quest`,
    );
    const other = await gw.app.inject({ method: 'GET', url: '/healthz' });
    expect(other.statusCode).toBe(200);
    const res = parse(await slow);
    expect(res.status).toBe(408);
    // The request was routed before it stalled: answered and logged as itself, once.
    expect(res.body).toMatchObject({
      success: false,
      error: { code: 'bad_request' },
      trace_id: 'slow-1',
    });
    expect(res.headers['x-request-id']).toBe('slow-1');
    expect(gw.logs().filter((l) => l.trace_id === 'slow-1')).toMatchObject([
      {
        msg: 'request completed',
        status: 408,
        route: '/captcha/recognition/hcaptcha',
        client_error: 'ERR_HTTP_REQUEST_TIMEOUT',
      },
    ]);
    expect(gw.fake.callCount()).toBe(0);
  });
});

describe('a client that leaves before its answer', () => {
  it('gets exactly one completion line (499) and one count, and its paid answer is still cached', async () => {
    gw.fake.setLatency(300);
    const body = JSON.stringify(validBody({ question: 'the client will leave' }));
    const headers = Object.entries({ ...authHeaders(), 'content-length': String(body.length) })
      .map(([name, value]) => `${name}: ${value}\r\n`)
      .join('');
    const socket = connect(port, '127.0.0.1');
    socket.write(`POST /captcha/recognition/hcaptcha HTTP/1.1\r\nhost: x\r\n${headers}\r\n${body}`);
    await expect.poll(() => gw.fake.callCount()).toBe(1);
    socket.destroy();
    await expect.poll(() => gw.logs().filter((l) => l.status === 499).length).toBe(1);
    // The upstream answer arrives after the client left: it is stored, and logs no second line.
    const metricsText = async () => (await gw.app.inject({ method: 'GET', url: '/metrics' })).body;
    await expect.poll(metricsText).toContain('gateway_cache_events_total{event="miss"} 1');
    gw.fake.setLatency(0);
    const lines = gw
      .logs()
      .filter((l) => l.msg === 'request completed' && l.route === '/captcha/recognition/hcaptcha');
    const leaver = lines.filter((l) => l.status === 499);
    expect(leaver).toHaveLength(1);
    expect(lines.filter((l) => l.trace_id === leaver[0]?.trace_id)).toHaveLength(1);
    const repeat = await gw.app.inject({
      method: 'POST',
      url: '/captcha/recognition/hcaptcha',
      headers: authHeaders(),
      payload: body,
    });
    expect(repeat.headers['cache-status']).toBe('acedata-gateway; hit');
    expect(await metricsText()).toContain(
      'gateway_requests_total{route="/captcha/recognition/hcaptcha",status="499",client="checkout-service"} 1',
    );
  });
});
