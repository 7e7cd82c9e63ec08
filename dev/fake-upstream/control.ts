// Control routes under /__fake/ for other processes (benchmarks, compose checks): list the calls,
// set faults and latency, reset. They are not recorded as calls and need no token.

import type { ServerResponse } from 'node:http';
import { tokenFingerprint } from '../../src/upstream/token-pool.ts';
import { type FaultPlan, faultSettingsSchema } from './faults.ts';
import { type Parsed, sendEnvelope, sendJson } from './protocol.ts';
import type { RecordedCall } from './recorder.ts';
import { describeIssues } from './routes/context.ts';

export const CONTROL_PREFIX = '/__fake';

export interface ControlTarget {
  readonly calls: readonly RecordedCall[];
  readonly faults: FaultPlan;
  setLatency(ms: number): void;
  reset(): void;
}

export function isControlPath(path: string): boolean {
  return path === CONTROL_PREFIX || path.startsWith(`${CONTROL_PREFIX}/`);
}

export function handleControl(
  target: ControlTarget,
  method: string,
  path: string,
  body: Parsed,
  res: ServerResponse,
): void {
  const route = `${method} ${path.slice(CONTROL_PREFIX.length)}`;
  if (route === 'GET /calls') {
    // Fingerprints, never tokens: this list may end up in a benchmark report.
    sendJson(res, 200, {
      count: target.calls.length,
      calls: target.calls.map((c) => ({
        method: c.method,
        path: c.path,
        tokenFingerprint: c.token === undefined ? null : tokenFingerprint(c.token),
        requestId: c.headers['x-request-id'] ?? null,
        at: c.at,
      })),
    });
  } else if (route === 'POST /reset') {
    target.reset();
    sendJson(res, 200, { ok: true });
  } else if (route === 'POST /faults') {
    setFaults(target, body, res);
  } else {
    sendEnvelope(res, 404, 'no_api', `No control route ${method} ${path}.`);
  }
}

/** The same fault schema as the in-process API; nothing is applied unless all of it is valid. */
function setFaults(target: ControlTarget, body: Parsed, res: ServerResponse): void {
  const settings = body.ok ? faultSettingsSchema.safeParse(body.value) : undefined;
  if (!settings?.success) {
    const problem = settings ? describeIssues(settings.error) : 'body: not valid JSON';
    sendEnvelope(res, 400, 'bad_request', problem);
    return;
  }
  target.faults.apply(settings.data);
  if (settings.data.latencyMs !== undefined) target.setLatency(settings.data.latencyMs);
  sendJson(res, 200, { ok: true, queued: target.faults.queued });
}
