// POST /captcha/tasks: read an async task (free; reading never advances it).

import { z } from 'zod';
import { sendError, sendJson, TASK_TIMEOUT_DETAIL, timing } from '../protocol.ts';
import type { ApiCall, RouteDeps, RouteHandler } from './context.ts';

/**
 * The spec's body is `{"task_id"}` (the CLI, MCP tools and `captcha.tasks.retrieve` send it). The
 * SDK's generic poller (`tasks.get/wait`) sends `{"id","action":"retrieve"}`; the spec does not
 * list that shape, but the project's brief says the upstream accepts both, so the fake does.
 */
const taskQuery = z.union([
  z.looseObject({ task_id: z.string().min(1) }).transform((body) => body.task_id),
  z
    .looseObject({ id: z.string().min(1), action: z.literal('retrieve').optional() })
    .transform((body) => body.id),
]);

export function tasksRoute(deps: RouteDeps): RouteHandler {
  return ({ res, body, account }: ApiCall) => {
    if (!body.ok) return sendError(res, 'bad_request', 'The request body is not valid JSON.');
    const query = taskQuery.safeParse(body.value);
    if (!query.success) return sendError(res, 'invalid_query');
    const read = deps.tasks.read(query.data, account);
    switch (read.state) {
      case 'not_found':
        // Unknown, forgotten, or another account's: the guides answer all three alike.
        return sendError(res, 'not_found');
      case 'processing':
        return sendJson(res, 200, { success: true, task_id: read.task.id, status: 'processing' });
      case 'ready':
        return sendJson(res, 200, {
          success: true,
          task_id: read.task.id,
          status: 'ready',
          ...timing(read.task.createdAt, read.task.readyAt),
          ...read.task.result,
        });
      case 'timeout':
        // Terminal, on every read: the one error body without the envelope (no trace_id).
        return sendJson(res, 504, {
          detail: TASK_TIMEOUT_DETAIL,
          code: 'timeout',
          success: false,
          task_id: read.task.id,
          status: 'failed',
          ...timing(read.task.createdAt, read.task.deadlineAt),
        });
    }
  };
}
