// POST /captcha/token/hcaptcha: a single-use hCaptcha pass token for a site.

import { z } from 'zod';
import { freshPassToken } from '../answers.ts';
import { sendJson, timing } from '../protocol.ts';
import {
  type ApiCall,
  checkBody,
  createTask,
  type RouteDeps,
  type RouteHandler,
} from './context.ts';

/**
 * The spec requires `website_key` and `website_url` (strings; an empty one is refused too, as no
 * site can be solved without it) and allows `rqdata`, `proxy` (strings) and `async` (boolean).
 */
const tokenRequest = z.looseObject({
  website_key: z.string({ error: 'required: a string' }).min(1, 'must not be empty'),
  website_url: z.string({ error: 'required: a string' }).min(1, 'must not be empty'),
  rqdata: z.string({ error: 'must be a string' }).optional(),
  proxy: z.string({ error: 'must be a string' }).optional(),
  async: z.boolean({ error: 'must be a boolean' }).optional(),
});

export function tokenRoute(deps: RouteDeps): RouteHandler {
  return async (call: ApiCall) => {
    const request = checkBody(tokenRequest, call);
    if (!request) return;
    // Every solve yields a new token: a token is single-use, so nothing here is deterministic.
    if (request.async) return createTask(deps, call, { token: freshPassToken() });
    const startedAt = deps.now();
    await deps.sleep(deps.latencyMs());
    sendJson(call.res, 200, { token: freshPassToken(), ...timing(startedAt, deps.now()) });
  };
}
