// Injected faults: one zod union defines them, and the same parse checks a fault whether it comes
// from a test (enqueueFaults, setDefaultFault, setRandomFaults) or over HTTP (/__fake/faults).
// A fault is taken per call: first from the queue (FIFO), else at random from a seeded PRNG, else
// the default. A fault with `path` applies only to calls to that endpoint.

import type { IncomingMessage, ServerResponse } from 'node:http';
import { z } from 'zod';
import { mulberry32 } from './answers.ts';
import { parseOrThrow } from './options.ts';
import { API_PATHS, type ApiPath, documentedMessage, sendEnvelope, sendJson } from './protocol.ts';

const httpStatus = z.number().int().min(200).max(599);
const milliseconds = z.number().min(0);
const path = z.enum(API_PATHS).optional();

export const faultSchema = z.discriminatedUnion('kind', [
  /** Delay, then answer normally. */
  z.strictObject({ kind: z.literal('latency'), ms: milliseconds, path }),
  /** An error answer: the envelope, with the documented message of `code` unless one is given. */
  z.strictObject({
    kind: z.literal('status'),
    status: httpStatus,
    code: z.string().min(1).optional(),
    message: z.string().optional(),
    /** The upstream documents no retry-after; only a fault sends one. */
    retryAfter: z.string().optional(),
    /** `error` as a plain string instead of `{code, message}`. */
    plainError: z.boolean().optional(),
    /** Answer only after this many ms (an error can be as slow as a success). */
    afterMs: milliseconds.optional(),
    path,
  }),
  /** Destroy the connection without an answer. */
  z.strictObject({ kind: z.literal('reset'), path }),
  /** Never answer (until the client gives up or the fake closes). */
  z.strictObject({ kind: z.literal('hang'), path }),
  /** A non-JSON body, as a proxy in front of the upstream might send. */
  z.strictObject({
    kind: z.literal('garbage'),
    status: httpStatus.optional(),
    body: z.string().optional(),
    path,
  }),
  /** 200 JSON without `solution`, `token` or `task_id`. */
  z.strictObject({ kind: z.literal('malformed'), path }),
  /**
   * The call proceeds normally, but a task it creates (async) never finishes: reads answer
   * `processing` until the deadline, then the terminal 504. No effect on other calls.
   */
  z.strictObject({ kind: z.literal('task_timeout'), path }),
]);

export type Fault = z.infer<typeof faultSchema>;

export const randomFaultsSchema = z
  .strictObject({
    rate: z.number().min(0).max(1),
    seed: z.number(),
    faults: z.array(faultSchema),
  })
  .refine((r) => r.rate === 0 || r.faults.length > 0, {
    message: 'faults must not be empty when rate > 0',
    path: ['faults'],
  });

export type RandomFaults = z.infer<typeof randomFaultsSchema>;

/** The body of POST /__fake/faults: everything is checked before anything is applied. */
export const faultSettingsSchema = z.strictObject({
  enqueue: z.array(faultSchema).optional(),
  /** null clears the default fault. */
  default: faultSchema.nullable().optional(),
  random: randomFaultsSchema.nullable().optional(),
  latencyMs: milliseconds.optional(),
});

export type FaultSettings = z.infer<typeof faultSettingsSchema>;

const targets = (fault: Fault, apiPath: ApiPath): boolean =>
  fault.path === undefined || fault.path === apiPath;

/** Which fault, if any, each call gets. */
export class FaultPlan {
  readonly #queue: Fault[] = [];
  #default: Fault | undefined;
  #random: { rate: number; faults: Fault[]; next: () => number } | undefined;

  enqueue(faults: readonly unknown[]): void {
    const parsed = parseOrThrow(z.array(faultSchema), faults, 'faults');
    this.#queue.push(...parsed);
  }

  setDefault(fault: unknown): void {
    this.#default = fault === undefined ? undefined : parseOrThrow(faultSchema, fault, 'fault');
  }

  setRandom(opts: unknown): void {
    this.#setParsedRandom(
      opts === undefined ? undefined : parseOrThrow(randomFaultsSchema, opts, 'random faults'),
    );
  }

  #setParsedRandom(opts: RandomFaults | undefined): void {
    this.#random = opts && { rate: opts.rate, faults: opts.faults, next: mulberry32(opts.seed) };
  }

  /** Applies settings the control route already parsed with faultSettingsSchema. */
  apply(settings: FaultSettings): void {
    if (settings.enqueue) this.#queue.push(...settings.enqueue);
    if (settings.default !== undefined) this.#default = settings.default ?? undefined;
    if (settings.random !== undefined) this.#setParsedRandom(settings.random ?? undefined);
  }

  get queued(): number {
    return this.#queue.length;
  }

  /** The fault for the next call to `apiPath`; queued faults for other paths wait their turn. */
  next(apiPath: ApiPath): Fault | undefined {
    const index = this.#queue.findIndex((fault) => targets(fault, apiPath));
    if (index >= 0) return this.#queue.splice(index, 1)[0];
    const random = this.#random;
    // Two draws per hit, as before the split, so a seed gives the same sequence as it did.
    if (random && random.faults.length > 0 && random.next() < random.rate) {
      const picked = random.faults[Math.floor(random.next() * random.faults.length)];
      if (picked && targets(picked, apiPath)) return picked;
    }
    return this.#default && targets(this.#default, apiPath) ? this.#default : undefined;
  }

  clear(): void {
    this.#queue.length = 0;
    this.#default = undefined;
    this.#random = undefined;
  }
}

/** The code a status fault sends when it names none. */
const DEFAULT_CODES: Readonly<Record<number, string>> = {
  400: 'bad_request',
  401: 'invalid_token',
  403: 'forbidden',
  404: 'not_found',
  408: 'timeout',
  429: 'too_many_requests',
  500: 'api_error',
  502: 'api_error',
  503: 'api_error',
  504: 'timeout',
};

/**
 * What a fault did to the call: `settled` (answered, reset or left hanging: the route must not
 * run), `proceed`, or `task_timeout` (proceed; a task the call creates never finishes).
 */
export type FaultOutcome = 'settled' | 'proceed' | 'task_timeout';

export async function applyFault(
  fault: Fault,
  req: IncomingMessage,
  res: ServerResponse,
  sleep: (ms: number) => Promise<void>,
): Promise<FaultOutcome> {
  switch (fault.kind) {
    case 'latency':
      await sleep(fault.ms);
      return 'proceed';
    case 'task_timeout':
      return 'task_timeout';
    case 'status': {
      if (fault.afterMs) await sleep(fault.afterMs);
      const code =
        fault.code ??
        DEFAULT_CODES[fault.status] ??
        (fault.status >= 500 ? 'api_error' : 'bad_request');
      const message =
        fault.message ??
        documentedMessage(code, fault.status) ??
        `Injected fault: HTTP ${fault.status} ${code}.`;
      sendEnvelope(res, fault.status, code, message, {
        plainError: fault.plainError,
        retryAfter: fault.retryAfter,
      });
      return 'settled';
    }
    case 'reset':
      req.socket.destroy();
      return 'settled';
    case 'hang':
      return 'settled';
    case 'garbage': {
      const body = fault.body ?? '<html>oops</html>';
      res.writeHead(fault.status ?? 200, {
        'content-type': 'text/html',
        'content-length': String(Buffer.byteLength(body)),
      });
      res.end(body);
      return 'settled';
    }
    case 'malformed':
      sendJson(res, 200, { elapsed: 1.2 });
      return 'settled';
  }
}
