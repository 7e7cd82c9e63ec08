// POST /captcha/recognition/hcaptcha: which tiles to click.

import { z } from 'zod';
import { deriveSolution } from '../answers.ts';
import { sendJson, timing } from '../protocol.ts';
import {
  type ApiCall,
  checkBody,
  createTask,
  type RouteDeps,
  type RouteHandler,
} from './context.ts';

/**
 * The spec marks no field required and sets no limits: `queries` (Base64 images or image URLs,
 * both accepted here as any non-empty strings), `question`, `async`; other fields pass. A body
 * the fake cannot answer — no `queries`, none at all, or an empty one — gets 400 `bad_request`,
 * the spec's code for a bad request (what the real upstream answers there is undocumented).
 * Fields of the wrong JSON type get the same.
 */
const recognitionRequest = z.looseObject({
  queries: z
    .array(z.string().min(1, 'must not contain empty strings'), {
      error: 'required: an array of Base64 images or image URLs',
    })
    .min(1, 'must not be empty'),
  question: z.string({ error: 'must be a string' }).optional(),
  async: z.boolean({ error: 'must be a boolean' }).optional(),
});

export function recognitionRoute(deps: RouteDeps): RouteHandler {
  return async (call: ApiCall) => {
    const request = checkBody(recognitionRequest, call);
    if (!request) return;
    const solution = deriveSolution(request.question, request.queries);
    if (request.async) return createTask(deps, call, { solution });
    const startedAt = deps.now();
    await deps.sleep(deps.latencyMs());
    sendJson(call.res, 200, { solution, ...timing(startedAt, deps.now()) });
  };
}
