// What every endpoint handler gets, and the request-checking helper they share.

import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { z } from 'zod';
import { type Parsed, sendError, sendJson } from '../protocol.ts';
import type { TaskResult, TaskStore } from '../tasks.ts';

export interface RouteDeps {
  now: () => number;
  /** Resolves after ms, or never if the fake closes first. */
  sleep: (ms: number) => Promise<void>;
  /** The current answer time of a sync call (setLatency can change it). */
  latencyMs: () => number;
  tasks: TaskStore;
}

/** One authenticated, admitted call to an endpoint. */
export interface ApiCall {
  res: ServerResponse;
  body: Parsed;
  account: string;
  /** A `task_timeout` fault hit this call: a task it creates never finishes. */
  taskTimesOut: boolean;
}

export type RouteHandler = (call: ApiCall) => Promise<void> | void;

/** One line naming each field that is wrong, e.g. `queries: must not be empty`. */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => `${issue.path.length > 0 ? issue.path.join('.') : 'body'}: ${issue.message}`)
    .join('; ');
}

/** The checked body, or undefined after answering 400 bad_request. */
export function checkBody<T>(schema: z.ZodType<T>, call: ApiCall): T | undefined {
  if (!call.body.ok) {
    sendError(call.res, 'bad_request', 'The request body is not valid JSON.');
    return undefined;
  }
  const result = schema.safeParse(call.body.value);
  if (result.success) return result.data;
  sendError(call.res, 'bad_request', describeIssues(result.error));
  return undefined;
}

/** `"async": true`: 201 `{"task_id","trace_id"}` at once (guides), the work continues "server-side". */
export function createTask(deps: RouteDeps, call: ApiCall, result: TaskResult): void {
  const task = deps.tasks.create(call.account, result, { neverReady: call.taskTimesOut });
  sendJson(call.res, 201, { task_id: task.id, trace_id: randomUUID() });
}
