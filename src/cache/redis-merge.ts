import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { GATEWAY_ERRORS, GatewayError, type GatewayErrorCode, toGatewayError } from '../errors.ts';
import {
  InflightMerger,
  type MergeEvent,
  type MergeHooks,
  type MergePayload,
  type MergeResult,
  type MergeRunOptions,
  type RequestMerger,
} from './merge.ts';

export interface RedisMergerOptions extends MergeHooks {
  /** Key/channel prefix: `<prefix>lock:<key>` and `<prefix>done:<key>`. */
  prefix?: string;
  /** Lock lifetime; the owner refreshes it every `lockTtlMs / 3` while its call runs. */
  lockTtlMs?: number;
  /** How often a waiter checks for a vanished owner. */
  pollIntervalMs?: number;
  /** How often the owner extends its lock while its call runs; default `lockTtlMs / 3`. */
  refreshIntervalMs?: number;
}

export const REDIS_MERGE_DEFAULTS = {
  prefix: 'agw:',
  lockTtlMs: 15_000,
  pollIntervalMs: 250,
} as const;

/** KEYS[1] lock, ARGV[1] owner token, ARGV[2] ttl ms: extend only a lock we still own. */
const REFRESH_SCRIPT = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end`;
/**
 * KEYS[1] lock, ARGV[1] owner token, ARGV[2] done channel, ARGV[3] done message: announce the
 * outcome, then release the lock if still ours — atomically, so no waiter can see the lock gone
 * before the message is on its way.
 */
const FINISH_SCRIPT = `redis.call('publish', ARGV[2], ARGV[3]) if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end return 1`;
/** KEYS[1] lock, ARGV[1] owner token: delete only a lock we still own. */
const RELEASE_SCRIPT = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end`;

/**
 * What the owner publishes on `<prefix>done:<key>` (JSON): the answer, with the body in Base64 —
 * `{"v":1,"status":200,"body":"<base64>"}` — or the error every waiter should get —
 * `{"v":1,"error":{"code":"timeout","message":"…","status":504,"headers":{…}}}`.
 */
type DoneMessage =
  | { v: 1; status: number; body: string }
  | {
      v: 1;
      error: { code: string; message: string; status: number; headers?: Record<string, string> };
    };

function encodeDone(outcome: { value: MergePayload } | { error: unknown }): string {
  if ('value' in outcome) {
    const { status, body } = outcome.value;
    return JSON.stringify({ v: 1, status, body: body.toString('base64') } satisfies DoneMessage);
  }
  // Same mapping the error handler applies: a non-gateway error becomes a generic api_error.
  const error = toGatewayError(outcome.error);
  return JSON.stringify({
    v: 1,
    error: {
      code: error.code,
      message: error.message,
      status: error.statusCode,
      ...(Object.keys(error.headers).length > 0 ? { headers: { ...error.headers } } : {}),
    },
  } satisfies DoneMessage);
}

/** Settles a waiter from a done message; undefined when the message is not one of ours. */
function decodeDone(raw: string): { value: MergePayload } | { error: GatewayError } | undefined {
  let message: unknown;
  try {
    message = JSON.parse(raw);
  } catch {
    return undefined;
  }
  if (typeof message !== 'object' || message === null) return undefined;
  const m = message as Record<string, unknown>;
  if (typeof m.status === 'number' && typeof m.body === 'string') {
    return { value: { status: m.status, body: Buffer.from(m.body, 'base64') } };
  }
  if (typeof m.error !== 'object' || m.error === null) return undefined;
  const error = m.error as Record<string, unknown>;
  const code = (
    typeof error.code === 'string' && error.code in GATEWAY_ERRORS ? error.code : 'api_error'
  ) as GatewayErrorCode;
  const headers =
    typeof error.headers === 'object' && error.headers !== null
      ? (error.headers as Record<string, string>)
      : undefined;
  const text = typeof error.message === 'string' ? error.message : 'the merged request failed';
  return { error: new GatewayError(code, text, headers ? { headers } : {}) };
}

/**
 * Merging across replicas through Redis, layered on in-process merging (only one request per key
 * and process takes part in the protocol; the others share its outcome locally).
 *
 * Protocol, per key:
 * 1. `SET <prefix>lock:<key> <token> NX PX lockTtlMs` — whoever sets it is the owner.
 * 2. The owner runs `fn`, refreshing the lock every `lockTtlMs / 3` with a compare-and-set script
 *    (so a live 30 s call keeps it while a dead owner's lock expires within `lockTtlMs`). Then one
 *    script PUBLISHes a done message on `<prefix>done:<key>` — the answer, or the error, which is
 *    never stored — and releases the lock if still its own (compare-and-delete). `fn` should
 *    store a cacheable answer before returning, so it is in the cache before the lock disappears.
 * 3. A waiter SUBSCRIBEs first, then re-checks the cache (`getCached`) and tries the lock again,
 *    then waits for the done message, trying the lock every `pollIntervalMs`: a lock gone without
 *    a message means the owner vanished, and the waiter takes over and runs `fn` itself. Before
 *    running `fn` after any successful lock attempt, it PINGs its subscriber connection: a done
 *    message published before the lock was released is then already delivered, so a late
 *    message never causes a second upstream call.
 * 4. A waiter gives up at its `deadline` with a `timeout` GatewayError. The owner is bounded by
 *    `fn` itself (the upstream deadline), not by `deadline`.
 *
 * Any Redis failure degrades to in-process merging (event `fallback`): Redis never fails a request.
 * An answer that is not cacheable and was announced before a waiter subscribed is missed; that
 * waiter then calls upstream itself (a race outside the "in flight at once" window). Requests that
 * join locally share the first one's wait, including its deadline (theirs are later anyway).
 */
export class RedisMerger implements RequestMerger {
  readonly #redis: Redis;
  readonly #subscriber: Redis;
  readonly #local: InflightMerger;
  readonly #prefix: string;
  readonly #lockTtlMs: number;
  readonly #pollIntervalMs: number;
  readonly #refreshIntervalMs: number;
  readonly #onEvent: (event: MergeEvent) => void;
  readonly #onError: (error: unknown, op: string) => void;
  /** Done-message handlers by channel; local merging allows at most one per channel. */
  readonly #handlers = new Map<string, (message: string) => void>();

  /**
   * `redis` serves commands; a subscriber connection is made with `redis.duplicate()` and owned
   * (closed) by the merger. Use a fail-fast client (no offline queue, a command timeout).
   */
  constructor(redis: Redis, options: RedisMergerOptions = {}) {
    this.#redis = redis;
    this.#prefix = options.prefix ?? REDIS_MERGE_DEFAULTS.prefix;
    this.#lockTtlMs = options.lockTtlMs ?? REDIS_MERGE_DEFAULTS.lockTtlMs;
    this.#pollIntervalMs = options.pollIntervalMs ?? REDIS_MERGE_DEFAULTS.pollIntervalMs;
    this.#refreshIntervalMs =
      options.refreshIntervalMs ?? Math.max(1, Math.floor(this.#lockTtlMs / 3));
    this.#onEvent = options.onEvent ?? (() => {});
    this.#onError = options.onError ?? (() => {});
    this.#local = new InflightMerger({ onEvent: this.#onEvent });
    this.#subscriber = redis.duplicate();
    // Connection state is already reported for the command connection; without a listener
    // ioredis would print every failed reconnect of this one to stderr.
    this.#subscriber.on('error', () => {});
    this.#subscriber.on('message', (channel: string, message: string) => {
      this.#handlers.get(channel)?.(message);
    });
  }

  /** Both connections are up (the command one is shared and not ours to close). */
  isReady(): boolean {
    return this.#redis.status === 'ready' && this.#subscriber.status === 'ready';
  }

  async run<T extends MergePayload>(
    key: string,
    fn: () => Promise<T>,
    options: MergeRunOptions,
  ): Promise<MergeResult<T | MergePayload>> {
    const outcome = await this.#local.run(key, () => this.#distributed(key, fn, options));
    return outcome.shared ? { ...outcome.value, shared: true, source: 'local' } : outcome.value;
  }

  async close(): Promise<void> {
    if (this.#subscriber.status === 'end') return;
    await this.#subscriber.quit().catch(() => this.#subscriber.disconnect());
  }

  async #distributed<T extends MergePayload>(
    key: string,
    fn: () => Promise<T>,
    options: MergeRunOptions,
  ): Promise<MergeResult<T | MergePayload>> {
    const lock = `${this.#prefix}lock:${key}`;
    const token = randomUUID();
    let acquired: boolean;
    try {
      acquired = await this.#acquire(lock, token);
    } catch (error) {
      return this.#fallback(error, 'lock', fn);
    }
    return acquired ? this.#own(key, lock, token, fn) : this.#wait(key, lock, token, fn, options);
  }

  async #acquire(lock: string, token: string): Promise<boolean> {
    return (await this.#redis.set(lock, token, 'PX', this.#lockTtlMs, 'NX')) === 'OK';
  }

  async #fallback<T>(error: unknown, op: string, fn: () => Promise<T>): Promise<MergeResult<T>> {
    this.#onError(error, op);
    this.#onEvent('fallback');
    return { value: await fn(), shared: false, source: 'owner' };
  }

  /** Runs `fn` while holding the lock; announces the outcome; releases the lock. */
  async #own<T extends MergePayload>(
    key: string,
    lock: string,
    token: string,
    fn: () => Promise<T>,
  ): Promise<MergeResult<T>> {
    let running = true;
    const refresh = setInterval(() => {
      this.#redis.eval(REFRESH_SCRIPT, 1, lock, token, this.#lockTtlMs).then(
        (extended) => {
          // Expired (e.g. Redis was unreachable) and maybe taken over: our call goes on and still
          // announces its outcome, but there is nothing left to extend.
          if (extended === 1 || !running) return;
          clearInterval(refresh);
          this.#onEvent('lock_lost');
        },
        (error: unknown) => this.#onError(error, 'refresh'),
      );
    }, this.#refreshIntervalMs);
    refresh.unref();
    let outcome: { value: T } | { error: unknown };
    try {
      outcome = { value: await fn() };
    } catch (error) {
      outcome = { error };
    } finally {
      running = false;
      clearInterval(refresh);
    }
    try {
      await this.#redis.eval(
        FINISH_SCRIPT,
        1,
        lock,
        token,
        `${this.#prefix}done:${key}`,
        encodeDone(outcome),
      );
    } catch (error) {
      // Waiters then learn nothing; they take over once the lock expires (or reach a deadline).
      this.#onError(error, 'publish');
    }
    if ('error' in outcome) throw outcome.error;
    return { value: outcome.value, shared: false, source: 'owner' };
  }

  async #wait<T extends MergePayload>(
    key: string,
    lock: string,
    token: string,
    fn: () => Promise<T>,
    options: MergeRunOptions,
  ): Promise<MergeResult<T | MergePayload>> {
    const channel = `${this.#prefix}done:${key}`;
    let settle!: (outcome: { value: MergePayload } | { error: GatewayError }) => void;
    const done = new Promise<{ value: MergePayload } | { error: GatewayError }>((resolve) => {
      settle = resolve;
    });
    let delivered: { value: MergePayload } | { error: GatewayError } | undefined;
    const handler = (raw: string) => {
      const outcome = decodeDone(raw);
      if (outcome === undefined || delivered !== undefined) return;
      delivered = outcome;
      settle(outcome);
    };
    this.#handlers.set(channel, handler);
    const timers: NodeJS.Timeout[] = [];
    let finished = false;
    /** The lock attempt of a poll in progress: settled before returning, so no lock outlives us. */
    let polling: Promise<boolean> | undefined;
    try {
      try {
        await this.#subscriber.subscribe(channel);
      } catch (error) {
        return await this.#fallback(error, 'subscribe', fn);
      }

      const cached = await this.#cached(options);
      if (cached !== undefined) {
        this.#onEvent('cached');
        return { value: cached, shared: true, source: 'cache' };
      }

      // Besides a done message, the wait ends when a lock attempt succeeds or fails, or at the
      // deadline. The first attempt is the re-check (the owner may have finished before we
      // subscribed); later ones are polls, and a poll finding the lock free means the owner
      // vanished without answering.
      type Turn = { acquired: 'recheck' | 'poll' } | { failed: unknown } | 'timeout';
      let wake!: (turn: Turn) => void;
      const turn = new Promise<Turn>((resolve) => {
        wake = resolve;
      });
      const attempt = async (kind: 'recheck' | 'poll'): Promise<boolean> => {
        try {
          if (!(await this.#acquire(lock, token))) return false;
          // A poll that won the lock after the wait ended (answer, deadline) must not keep it.
          if (finished) await this.#release(lock, token);
          else wake({ acquired: kind });
        } catch (error) {
          wake({ failed: error });
        }
        return true;
      };
      const poll = async () => {
        if (delivered !== undefined || finished) return;
        polling = attempt('poll');
        if (await polling) return;
        timers.push(setTimeout(poll, this.#pollIntervalMs));
      };
      if (!(await attempt('recheck'))) timers.push(setTimeout(poll, this.#pollIntervalMs));
      timers.push(setTimeout(() => wake('timeout'), Math.max(0, options.deadline - Date.now())));

      const next = await Promise.race([done, turn]);
      if (next === 'timeout') {
        this.#onEvent('timeout');
        throw new GatewayError(
          'timeout',
          'no answer before the deadline while waiting for an identical request in flight',
        );
      }
      if ('failed' in next) return await this.#fallback(next.failed, 'poll', fn);
      let outcome: { value: MergePayload } | { error: GatewayError };
      if ('acquired' in next) {
        // A done message published before the lock was released arrives ahead of this PONG.
        await this.#subscriber.ping().catch(() => {});
        if (delivered === undefined) {
          if (next.acquired === 'poll') this.#onEvent('takeover');
          return await this.#own(key, lock, token, fn);
        }
        await this.#release(lock, token);
        outcome = delivered;
      } else {
        outcome = next;
      }
      if ('error' in outcome) throw outcome.error;
      this.#onEvent('remote');
      return { value: outcome.value, shared: true, source: 'remote' };
    } finally {
      finished = true;
      for (const timer of timers) clearTimeout(timer);
      if (this.#handlers.get(channel) === handler) {
        this.#handlers.delete(channel);
        this.#subscriber.unsubscribe(channel).catch(() => {});
      }
      await polling;
    }
  }

  /** Never rejects: a lock left behind only expires a little later. */
  async #release(lock: string, token: string): Promise<void> {
    try {
      await this.#redis.eval(RELEASE_SCRIPT, 1, lock, token);
    } catch (error) {
      this.#onError(error, 'release');
    }
  }

  async #cached(options: MergeRunOptions): Promise<MergePayload | undefined> {
    if (options.getCached === undefined) return undefined;
    try {
      return await options.getCached();
    } catch (error) {
      this.#onError(error, 'cache');
      return undefined;
    }
  }
}
