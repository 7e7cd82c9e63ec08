import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import {
  CLIENT_KEY,
  completionOf,
  gatewayTest,
  OTHER_CLIENT_KEY,
  postJson,
  RECOGNITION,
  TASKS,
  type TestGateway,
  TOKEN,
  validBody,
} from './helpers.ts';
import { describeWithRedis } from './redis-server.ts';
import { replicasSharingRedis } from './replicas.ts';

const tokenBody = (overrides: Record<string, unknown> = {}) => ({
  website_key: 'a5f74b19-9e45-40e0-b45d-47ff91b7a6c2',
  website_url: 'https://accounts.hcaptcha.com/demo',
  ...overrides,
});

const submitToken = (g: TestGateway, key?: string, overrides?: Record<string, unknown>) =>
  postJson(g, { url: TOKEN, key, body: tokenBody(overrides) });

const poll = (g: TestGateway, body: unknown, key?: string) =>
  postJson(g, { url: TASKS, key, body });

describe('POST /captcha/token/hcaptcha', () => {
  gatewayTest(
    'answers sync 200 with a token, forwarding the exact bytes',
    async ({ gateway: g }) => {
      const res = await submitToken(g);
      expect(res.statusCode).toBe(200);
      expect(res.json().token).toMatch(/^P1_/);
      expect(res.headers['cache-status']).toBeUndefined();
      expect(g.fake.callCount(TOKEN)).toBe(1);
      expect(g.fake.calls[0]?.rawBody).toBe(JSON.stringify(tokenBody()));
      expect(completionOf(g, res)).toMatchObject({
        route: TOKEN,
        status: 200,
        client: 'checkout-service',
        billed: true,
      });
      expect(completionOf(g, res)?.cache).toBeUndefined();
    },
  );

  gatewayTest('answers async 201 with a task id', async ({ gateway: g }) => {
    const res = await submitToken(g, undefined, { async: true });
    expect(res.statusCode).toBe(201);
    expect(res.json().task_id).toEqual(expect.any(String));
    const polled = await poll(g, { task_id: res.json().task_id });
    expect(polled.statusCode).toBe(200);
    expect(polled.json()).toMatchObject({ status: 'ready', token: expect.stringMatching(/^P1_/) });
  });

  gatewayTest(
    'never caches or merges: 20 concurrent identical requests make 20 upstream calls',
    async ({ gateway: g }) => {
      const results = await Promise.all(Array.from({ length: 20 }, () => submitToken(g)));
      expect(results.map((r) => r.statusCode)).toEqual(Array(20).fill(200));
      expect(g.fake.callCount(TOKEN)).toBe(20);
      // Every token is single-use: 20 different ones.
      expect(new Set(results.map((r) => r.json().token)).size).toBe(20);
      // A repeat afterwards is not a cache hit either.
      expect((await submitToken(g)).headers['cache-status']).toBeUndefined();
      expect(g.fake.callCount(TOKEN)).toBe(21);
    },
  );

  gatewayTest('needs a client key: 401 and nothing forwarded', async ({ gateway: g }) => {
    for (const authorization of [undefined, 'Bearer agw_unknown_key_xxxxxxxxxxxxxxxxxxxxxxxx']) {
      const res = await g.app.inject({
        method: 'POST',
        url: TOKEN,
        headers: {
          'content-type': 'application/json',
          ...(authorization ? { authorization } : {}),
        },
        payload: JSON.stringify(tokenBody()),
      });
      expect(res.statusCode).toBe(401);
      expect(res.json().error.code).toBe('invalid_token');
    }
    expect(g.fake.callCount()).toBe(0);
  });
});

describe('the token route is rate limited', () => {
  // An override applies to its whole describe block, hence a block of its own.
  const test = gatewayTest.override('gatewaySettings', {
    limits: { rateLimit: { max: 2, windowSeconds: 60 } },
  });

  test('shares the rate limit with the other captcha routes', async ({ gateway: g }) => {
    expect((await submitToken(g)).statusCode).toBe(200);
    expect((await postJson(g)).statusCode).toBe(200);
    const refused = await submitToken(g);
    expect(refused.statusCode).toBe(429);
    expect(refused.json().error.code).toBe('too_many_requests');
    expect(refused.headers['retry-after']).toEqual(expect.any(String));
    expect(completionOf(g, refused)).toMatchObject({ limit: 'rate_limit', status: 429 });
    expect(g.fake.callCount()).toBe(2);
  });
});

describe('the daily quota counts token calls', () => {
  const test = gatewayTest.override('gatewaySettings', {
    limits: { quota: { upstreamCallsPerDay: 2 } },
  });

  test('sync and async token calls each take a unit; polls are free', async ({ gateway: g }) => {
    expect((await submitToken(g)).statusCode).toBe(200);
    const task = await submitToken(g, undefined, { async: true });
    expect(task.statusCode).toBe(201);
    for (let i = 0; i < 3; i++) {
      expect((await poll(g, { task_id: task.json().task_id })).statusCode).toBe(200);
    }
    const refused = await submitToken(g);
    expect(refused.statusCode).toBe(429);
    expect(refused.json().error.message).toMatch(/daily quota of 2 upstream calls used up/);
    expect(completionOf(g, refused)).toMatchObject({ limit: 'quota' });
    // The recognition route shares the quota.
    expect((await postJson(g)).statusCode).toBe(429);
    expect(g.fake.callCount(TOKEN)).toBe(2);
    expect(g.fake.callCount(RECOGNITION)).toBe(0);
    expect(g.fake.callCount(TASKS)).toBe(3);
  });
});

describe('async recognition', () => {
  gatewayTest('answers 201 with a task id and is never cached', async ({ gateway: g }) => {
    const body = validBody({ async: true });
    const a = await postJson(g, { body });
    const b = await postJson(g, { body });
    for (const res of [a, b]) {
      expect(res.statusCode).toBe(201);
      expect(res.headers['cache-status']).toBe('acedata-gateway; fwd=bypass');
      expect(completionOf(g, res)).toMatchObject({ cache: 'bypass', billed: true });
    }
    expect(b.json().task_id).not.toBe(a.json().task_id);
    expect(g.fake.callCount(RECOGNITION)).toBe(2);
    // A sync request with the same question and images is a different request: not a hit.
    expect((await postJson(g)).headers['cache-status']).toBe(
      'acedata-gateway; fwd=uri-miss; stored',
    );
  });
});

describe('a task belongs to the client that created it (in memory)', () => {
  gatewayTest('its owner polls with both shapes, forwarded unchanged', async ({ gateway: g }) => {
    const created = await postJson(g, { body: validBody({ async: true }) });
    const taskId = created.json().task_id as string;
    const shapes = [{ task_id: taskId }, { id: taskId, action: 'retrieve' }];
    for (const shape of shapes) {
      const res = await poll(g, shape);
      expect(res.statusCode).toBe(200);
      expect(res.json()).toMatchObject({ task_id: taskId, status: 'ready', solution: {} });
      expect(res.headers['cache-status']).toBeUndefined();
    }
    expect(g.fake.calls.filter((c) => c.path === TASKS).map((c) => c.rawBody)).toEqual(
      shapes.map((shape) => JSON.stringify(shape)),
    );
  });

  gatewayTest(
    'another client polling it gets 404 not_found and nothing is forwarded',
    async ({ gateway: g }) => {
      const recognition = await postJson(g, { body: validBody({ async: true }) });
      const token = await submitToken(g, undefined, { async: true });
      const before = g.fake.callCount();
      for (const taskId of [recognition.json().task_id, token.json().task_id]) {
        for (const shape of [{ task_id: taskId }, { id: taskId, action: 'retrieve' }]) {
          const res = await poll(g, shape, OTHER_CLIENT_KEY);
          expect(res.statusCode).toBe(404);
          expect(res.json()).toEqual({
            success: false,
            error: {
              code: 'not_found',
              message: 'task not found: no task with this id was created by this client',
            },
            trace_id: res.headers['x-request-id'],
          });
          expect(completionOf(g, res)).toMatchObject({
            client: 'other-service',
            error_code: 'not_found',
          });
        }
      }
      expect(g.fake.callCount()).toBe(before);
      // Its owner still can.
      expect((await poll(g, { task_id: token.json().task_id })).statusCode).toBe(200);
    },
  );

  gatewayTest('an unknown task id gets 404 without forwarding', async ({ gateway: g }) => {
    const res = await poll(g, { task_id: '7f1c5d0e-1111-4222-8333-444455556666' });
    expect(res.statusCode).toBe(404);
    expect(res.json().error.code).toBe('not_found');
    expect(g.fake.callCount()).toBe(0);
  });

  gatewayTest('a failed submission records no owner', async ({ gateway: g }) => {
    g.fake.enqueueFaults({ kind: 'status', status: 400, code: 'bad_request' });
    const failed = await postJson(g, { body: validBody({ async: true }) });
    expect(failed.statusCode).toBe(400);
    expect(await g.app.taskOwners.ownerOf(String(failed.json().task_id))).toBeUndefined();
  });
});

describeWithRedis('a task belongs to the client that created it (replicas sharing Redis)', () => {
  const shared = replicasSharingRedis();

  it('created on one replica, polled on the other by its owner; refused to anyone else', async () => {
    const a = await shared.replica();
    const b = await shared.replica();
    await shared.flush();
    const created = await postJson(a, { body: validBody({ async: true }) });
    expect(created.statusCode).toBe(201);
    const taskId = created.json().task_id as string;
    const token = await submitToken(a, CLIENT_KEY, { async: true });
    expect(token.statusCode).toBe(201);

    // The owner is recorded in Redis (no TTL: agw:tasks:<day>).
    const direct = new Redis(shared.redis.url);
    try {
      const day = new Date().toISOString().slice(0, 10);
      expect(await direct.hget(`agw:tasks:${day}`, taskId)).toBe('checkout-service');
      expect(await direct.ttl(`agw:tasks:${day}`)).toBe(-1);
    } finally {
      direct.disconnect();
    }

    const calls = shared.fake.callCount();
    for (const id of [taskId, token.json().task_id as string]) {
      const stranger = await poll(b, { task_id: id }, OTHER_CLIENT_KEY);
      expect(stranger.statusCode).toBe(404);
      expect(stranger.json().error.code).toBe('not_found');
    }
    expect(shared.fake.callCount()).toBe(calls);

    for (const shape of [{ task_id: taskId }, { id: taskId, action: 'retrieve' }]) {
      const owner = await poll(b, shape);
      expect(owner.statusCode).toBe(200);
      expect(owner.json()).toMatchObject({ task_id: taskId, status: 'ready' });
    }
    expect(shared.fake.callCount(TASKS)).toBe(2);
  });

  it('an unknown task id gets 404 without forwarding on any replica', async () => {
    const a = await shared.replica();
    await shared.flush();
    const res = await poll(a, { id: 'no-such-task', action: 'retrieve' });
    expect(res.statusCode).toBe(404);
    expect(res.json().error.code).toBe('not_found');
    expect(shared.fake.callCount()).toBe(0);
  });
});
