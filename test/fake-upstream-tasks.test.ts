// The fake's async tasks (guides "captcha_tasks", spec POST /captcha/tasks): 201 on creation,
// `processing` → `ready`, the terminal 504 after the deadline, both poll shapes, ownership. Time is
// the fake's injected clock, so nothing here waits on the wall clock.

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  callFake,
  deriveSolution,
  type FakeCallOptions,
  type FakeReply,
  type FakeUpstream,
  RECOGNITION_PATH,
  startFakeUpstream,
  TASKS_PATH,
  TOKEN_PATH,
  UPSTREAM_TASK_DEADLINE_MS,
} from '../dev/fake-upstream.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const BODY = { question: 'Please click each image containing a bus', queries: ['aGk='] };
const SITE = { website_key: 'k', website_url: 'https://x.test' };
const T0 = 1_784_885_653_000;
const READY_AFTER_MS = 12_400;

let fake: FakeUpstream;
let clock = T0;

/** Token 'a' unless opts say otherwise. */
const poll = (body: unknown, opts?: FakeCallOptions) =>
  callFake(fake.url, TASKS_PATH, body, { token: 'a', ...opts });

async function submit(path: string, body: unknown, opts?: FakeCallOptions): Promise<string> {
  const reply = await callFake(fake.url, path, { ...(body as object), async: true }, opts);
  expect(reply.status).toBe(201);
  return (reply.json as { task_id: string }).task_id;
}

function expectError(reply: FakeReply, status: number, code: string, message: string): void {
  expect(reply.status).toBe(status);
  expect(reply.json).toEqual({
    success: false,
    error: { code, message },
    trace_id: expect.stringMatching(UUID),
  });
}

const processing = (taskId: string) => ({ success: true, task_id: taskId, status: 'processing' });

beforeAll(async () => {
  fake = await startFakeUpstream({
    tokens: ['a', 'b'],
    asyncReadyAfterMs: READY_AFTER_MS,
    now: () => clock,
  });
});
afterAll(async () => {
  await fake.close();
});
afterEach(() => {
  fake.reset();
  clock = T0;
});

describe('a recognition task', () => {
  it('is processing until asyncReadyAfterMs, then ready with the sync solution', async () => {
    const taskId = await submit(RECOGNITION_PATH, BODY, { token: 'a' });
    expect((await poll({ task_id: taskId }, { token: 'a' })).json).toEqual(processing(taskId));
    clock = T0 + READY_AFTER_MS - 1;
    const still = await poll({ task_id: taskId }, { token: 'a' });
    expect(still.status).toBe(200);
    expect(still.json).toEqual(processing(taskId));
    clock = T0 + READY_AFTER_MS;
    const ready = await poll({ task_id: taskId }, { token: 'a' });
    expect(ready.status).toBe(200);
    expect(ready.json).toEqual({
      success: true,
      task_id: taskId,
      status: 'ready',
      started_at: T0 / 1000,
      finished_at: (T0 + READY_AFTER_MS) / 1000,
      elapsed: 12.4,
      solution: deriveSolution(BODY.question, BODY.queries),
    });
    // Reading never changes a task: later reads, even past the deadline, say the same.
    clock = T0 + UPSTREAM_TASK_DEADLINE_MS * 2;
    expect((await poll({ task_id: taskId }, { token: 'a' })).text).toBe(ready.text);
  });
});

describe('a token task', () => {
  it('becomes ready with one token, the same on every read', async () => {
    const taskId = await submit(TOKEN_PATH, SITE, { token: 'a' });
    expect((await poll({ task_id: taskId }, { token: 'a' })).json).toEqual(processing(taskId));
    clock = T0 + READY_AFTER_MS;
    const ready = await poll({ task_id: taskId }, { token: 'a' });
    expect(ready.json).toEqual({
      success: true,
      task_id: taskId,
      status: 'ready',
      started_at: T0 / 1000,
      finished_at: (T0 + READY_AFTER_MS) / 1000,
      elapsed: 12.4,
      token: expect.stringMatching(/^P1_/),
    });
    expect((await poll({ task_id: taskId }, { token: 'a' })).text).toBe(ready.text);
  });
});

describe('poll shapes', () => {
  it("accepts {task_id} and the SDK's generic {id, action: 'retrieve'} alike", async () => {
    const taskId = await submit(RECOGNITION_PATH, BODY, { token: 'a' });
    clock = T0 + READY_AFTER_MS;
    const bySpec = await poll({ task_id: taskId }, { token: 'a' });
    const bySdk = await poll({ id: taskId, action: 'retrieve' }, { token: 'a' });
    const byId = await poll({ id: taskId }, { token: 'a' });
    expect(bySpec.status).toBe(200);
    expect(bySdk.text).toBe(bySpec.text);
    expect(byId.text).toBe(bySpec.text);
  });

  it('answers 400 invalid_query "no task_id specified" without a task id', async () => {
    for (const body of [
      {},
      { task_id: '' },
      { task_id: 42 },
      { id: 7, action: 'retrieve' },
      { id: 'x', action: 'delete' },
      { taskId: 'x' },
      ['x'],
    ]) {
      expectError(await poll(body), 400, 'invalid_query', 'no task_id specified');
    }
    const raw = await poll(undefined, { raw: 'not json' });
    expect(raw.status).toBe(400);
    expect((raw.json as { error: { code: string } }).error.code).toBe('bad_request');
  });

  it('answers 404 not_found "task not found" for an unknown task', async () => {
    expectError(
      await poll({ task_id: 'unknown' }, { token: 'a' }),
      404,
      'not_found',
      'task not found',
    );
    expectError(
      await poll({ id: 'unknown', action: 'retrieve' }),
      404,
      'not_found',
      'task not found',
    );
  });
});

describe('ownership', () => {
  it("answers 404 not_found for another account's task", async () => {
    const taskId = await submit(RECOGNITION_PATH, BODY, { token: 'a' });
    clock = T0 + READY_AFTER_MS;
    expectError(
      await poll({ task_id: taskId }, { token: 'b' }),
      404,
      'not_found',
      'task not found',
    );
    expect((await poll({ task_id: taskId }, { token: 'a' })).status).toBe(200);
  });

  it('sharedAccount: every token reads every task', async () => {
    const shared = await startFakeUpstream({ tokens: ['a', 'b'], sharedAccount: true });
    try {
      const created = await callFake(
        shared.url,
        TOKEN_PATH,
        { ...SITE, async: true },
        { token: 'a' },
      );
      const taskId = (created.json as { task_id: string }).task_id;
      const read = await callFake(shared.url, TASKS_PATH, { task_id: taskId }, { token: 'b' });
      expect(read.status).toBe(200);
      expect((read.json as { status: string }).status).toBe('ready');
    } finally {
      await shared.close();
    }
  });

  it('reset forgets tasks', async () => {
    const taskId = await submit(RECOGNITION_PATH, BODY, { token: 'a' });
    fake.reset();
    expectError(
      await poll({ task_id: taskId }, { token: 'a' }),
      404,
      'not_found',
      'task not found',
    );
  });
});

describe('the deadline', () => {
  const timeoutBody = (taskId: string, deadlineMs: number) => ({
    detail: 'The captcha task timed out.',
    code: 'timeout',
    success: false,
    task_id: taskId,
    status: 'failed',
    started_at: T0 / 1000,
    finished_at: (T0 + deadlineMs) / 1000,
    elapsed: deadlineMs / 1000,
  });

  it('a task_timeout fault: processing until 120 s, then a terminal flat 504 on every read', async () => {
    fake.enqueueFaults({ kind: 'task_timeout' });
    const taskId = await submit(RECOGNITION_PATH, BODY, { token: 'a' });
    clock = T0 + UPSTREAM_TASK_DEADLINE_MS - 1;
    expect((await poll({ task_id: taskId }, { token: 'a' })).json).toEqual(processing(taskId));
    clock = T0 + UPSTREAM_TASK_DEADLINE_MS;
    for (let read = 0; read < 2; read++) {
      const failed = await poll({ task_id: taskId }, { token: 'a' });
      expect(failed.status).toBe(504);
      expect(failed.headers.get('content-type')).toBe('application/json');
      expect(failed.json).toEqual(timeoutBody(taskId, UPSTREAM_TASK_DEADLINE_MS));
      clock += 60_000;
    }
    // The fault hit only that call: the next task finishes.
    const next = await submit(RECOGNITION_PATH, BODY, { token: 'a' });
    clock += READY_AFTER_MS;
    expect((await poll({ task_id: next }, { token: 'a' })).status).toBe(200);
  });

  it('taskDeadlineMs shorter than asyncReadyAfterMs: every task times out, token tasks too', async () => {
    let now = T0;
    const slow = await startFakeUpstream({
      asyncReadyAfterMs: 5_000,
      taskDeadlineMs: 2_000,
      now: () => now,
    });
    try {
      for (const [path, body] of [
        [RECOGNITION_PATH, BODY],
        [TOKEN_PATH, SITE],
      ] as const) {
        now = T0;
        const created = await callFake(slow.url, path, { ...body, async: true });
        const taskId = (created.json as { task_id: string }).task_id;
        now = T0 + 1_999;
        const early = await callFake(slow.url, TASKS_PATH, { task_id: taskId });
        expect(early.json).toEqual(processing(taskId));
        now = T0 + 2_000;
        const failed = await callFake(slow.url, TASKS_PATH, { id: taskId, action: 'retrieve' });
        expect(failed.status).toBe(504);
        expect(failed.json).toEqual(timeoutBody(taskId, 2_000));
      }
    } finally {
      await slow.close();
    }
  });

  it('a task_timeout fault on a sync call changes nothing', async () => {
    fake.enqueueFaults({ kind: 'task_timeout' });
    expect((await callFake(fake.url, RECOGNITION_PATH, BODY, { token: 'a' })).status).toBe(200);
  });
});
