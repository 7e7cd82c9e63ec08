// startFakeUpstream: the fake's state and the path of one API call. Each call is recorded, then:
// unknown path → 404 no_api; the call's fault, if any; auth and the rate limit; the endpoint.

import type { IncomingMessage, ServerResponse } from 'node:http';
import { Accounts, type RevocationCode } from './accounts.ts';
import { type ControlTarget, handleControl, isControlPath } from './control.ts';
import { applyFault, type Fault, FaultPlan, type RandomFaults } from './faults.ts';
import { createSleeper, listen } from './http.ts';
import {
  FAKE_UPSTREAM_DEFAULT_TOKEN,
  type FakeUpstreamOptions,
  fakeUpstreamOptionsSchema,
  parseOrThrow,
  UPSTREAM_TASK_DEADLINE_MS,
} from './options.ts';
import {
  type ApiPath,
  bearerToken,
  isApiPath,
  parseJson,
  RECOGNITION_PATH,
  readBody,
  sendError,
  TASKS_PATH,
  TOKEN_PATH,
} from './protocol.ts';
import { CallLog, type RecordedCall } from './recorder.ts';
import type { RouteDeps, RouteHandler } from './routes/context.ts';
import { recognitionRoute } from './routes/recognition.ts';
import { tasksRoute } from './routes/tasks.ts';
import { tokenRoute } from './routes/token.ts';
import { TaskStore } from './tasks.ts';

export interface FakeUpstream {
  readonly url: string;
  readonly calls: RecordedCall[];
  callCount(path?: string): number;
  /** Resolves once the fake has received this many calls (since the last reset). */
  waitForCalls(count: number): Promise<void>;
  /** Throws a RangeError for an invalid fault, as /__fake/faults answers 400. */
  enqueueFaults(...faults: Fault[]): void;
  setDefaultFault(fault: Fault | undefined): void;
  setRandomFaults(opts: RandomFaults | undefined): void;
  setLatency(ms: number): void;
  /** From now on the token is refused with this code (and its documented status). */
  revokeToken(token: string, code: RevocationCode): void;
  /** Forgets calls, faults, revocations, tasks and rate-limit state; restores the latency. */
  reset(): void;
  close(): Promise<void>;
}

interface FakeState {
  now: () => number;
  log: CallLog;
  faults: FaultPlan;
  accounts: Accounts;
  sleep: (ms: number) => Promise<void>;
  routes: Record<ApiPath, RouteHandler>;
  control: ControlTarget;
}

async function handleCall(state: FakeState, req: IncomingMessage, res: ServerResponse) {
  const at = state.now();
  const method = req.method ?? 'GET';
  const path = new URL(req.url ?? '/', 'http://fake.invalid').pathname;
  let raw: Buffer;
  try {
    raw = await readBody(req);
  } catch {
    return; // the client went away mid-body
  }
  const rawBody = raw.toString('utf8');
  const body = parseJson(rawBody);
  if (isControlPath(path)) return handleControl(state.control, method, path, body, res);

  const token = bearerToken(req.headers.authorization);
  state.log.record(req, res, { path, token, rawBody, body: body.ok ? body.value : undefined, at });
  if (method !== 'POST' || !isApiPath(path)) return sendError(res, 'no_api');

  const fault = state.faults.next(path);
  const outcome = fault ? await applyFault(fault, req, res, state.sleep) : 'proceed';
  if (outcome === 'settled' || res.destroyed) return;

  const admission = state.accounts.admit(token);
  if (!admission.ok) return sendError(res, admission.code);
  await state.routes[path]({
    res,
    body,
    account: admission.account,
    taskTimesOut: outcome === 'task_timeout',
  });
}

const checkLatency = (ms: number): void => {
  if (!(Number.isFinite(ms) && ms >= 0)) throw new RangeError('latency must be a number >= 0');
};

/** Start the fake on an ephemeral port (by default) and resolve once it listens. */
export async function startFakeUpstream(options: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const opts = parseOrThrow(fakeUpstreamOptionsSchema, options, 'fake upstream options');
  // Late-bound, so a test that fakes Date (vi.useFakeTimers) moves the fake's clock too.
  const now = opts.now ?? (() => Date.now());
  const initialLatencyMs = opts.latencyMs ?? 0;
  let latencyMs = initialLatencyMs;
  const { sleep, cancelAll } = createSleeper();
  const log = new CallLog();
  const faults = new FaultPlan();
  const accounts = new Accounts({
    tokens: opts.tokens ?? [FAKE_UPSTREAM_DEFAULT_TOKEN],
    sharedAccount: opts.sharedAccount ?? false,
    rateLimitPerSecond: opts.rateLimitPerSecond,
    now,
  });
  const tasks = new TaskStore({
    now,
    readyAfterMs: opts.asyncReadyAfterMs ?? 0,
    deadlineMs: opts.taskDeadlineMs ?? UPSTREAM_TASK_DEADLINE_MS,
  });
  const deps: RouteDeps = { now, sleep, latencyMs: () => latencyMs, tasks };

  const setLatency = (ms: number): void => {
    checkLatency(ms);
    latencyMs = ms;
  };
  const reset = (): void => {
    log.clear();
    faults.clear();
    accounts.reset();
    tasks.clear();
    latencyMs = initialLatencyMs;
  };
  const state: FakeState = {
    now,
    log,
    faults,
    accounts,
    sleep,
    routes: {
      [RECOGNITION_PATH]: recognitionRoute(deps),
      [TOKEN_PATH]: tokenRoute(deps),
      [TASKS_PATH]: tasksRoute(deps),
    },
    control: { calls: log.calls, faults, setLatency, reset },
  };
  const server = await listen(
    (req, res) => handleCall(state, req, res),
    opts.host ?? '127.0.0.1',
    opts.port ?? 0,
  );

  return {
    url: server.url,
    calls: log.calls,
    callCount: (path) => log.count(path),
    waitForCalls: (count) => log.waitFor(count),
    enqueueFaults: (...list) => faults.enqueue(list),
    setDefaultFault: (fault) => faults.setDefault(fault),
    setRandomFaults: (random) => faults.setRandom(random),
    setLatency,
    revokeToken: (token, code) => accounts.revoke(token, code),
    reset,
    close() {
      cancelAll();
      return server.close();
    },
  };
}
