import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { GatewayError } from '../errors.ts';
import {
  InflightMerger,
  type MergeEvent,
  type MergeHooks,
  type MergePayload,
  type MergeResult,
  type MergeRunOptions,
  type RequestMerger,
} from './merge.ts';
import { decodeDone, encodeDone, type MergeOutcome } from './merge-message.ts';

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
 *    `fn` itself, which keeps the owning request's own deadline (a taker-over's and a fallback's
 *    too: `fn` is always the running request's own closure).
 * 5. An owner whose error was its own (`personal`: its quota) publishes "retry": waiters start
 *    over and one of them becomes the owner, paying from its own quota.
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
    if (acquired) return this.#own(key, lock, token, fn);

    const end = await this.#wait(key, lock, token, options);
    switch (end.kind) {
      case 'own':
        if (end.takeover) this.#onEvent('takeover');
        return this.#own(key, lock, token, fn);
      case 'fallback':
        return this.#fallback(end.error, end.op, fn);
      case 'cached':
        this.#onEvent('cached');
        return { value: end.value, shared: true, source: 'cache' };
      case 'timeout':
        this.#onEvent('timeout');
        throw new GatewayError(
          'timeout',
          'no answer before the deadline while waiting for an identical request in flight',
        );
    }
    const { outcome } = end;
    // The owner's error was its own (its quota): start over, as if this request came first.
    if ('retry' in outcome) return this.#distributed(key, fn, options);
    if ('error' in outcome) throw outcome.error;
    this.#onEvent('remote');
    return { value: outcome.value, shared: true, source: 'remote' };
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

  /**
   * Waits for another replica's call: its done message, the answer in the cache, the lock coming
   * free (the owner vanished: take over), a Redis failure (fall back), or the deadline.
   */
  async #wait(
    key: string,
    lock: string,
    token: string,
    options: MergeRunOptions,
  ): Promise<WaitEnd> {
    const channel = `${this.#prefix}done:${key}`;
    const delivered = Promise.withResolvers<MergeOutcome>();
    let received: MergeOutcome | undefined;
    const handler = (raw: string) => {
      const outcome = decodeDone(raw);
      if (outcome === undefined || received !== undefined) return;
      received = outcome;
      delivered.resolve(outcome);
    };
    this.#handlers.set(channel, handler);
    try {
      try {
        await this.#subscriber.subscribe(channel);
      } catch (error) {
        return { kind: 'fallback', error, op: 'subscribe' };
      }
      const cached = await this.#cached(options);
      if (cached !== undefined) return { kind: 'cached', value: cached };

      const watch = this.#watchLock(lock, token, options.deadline, () => received !== undefined);
      try {
        const next = await Promise.race([
          delivered.promise.then((outcome) => ({ delivered: outcome })),
          watch.turn,
        ]);
        if (next === 'timeout') return { kind: 'timeout' };
        if ('delivered' in next) return { kind: 'outcome', outcome: next.delivered };
        if ('failed' in next) return { kind: 'fallback', error: next.failed, op: 'poll' };
        // We hold the lock. A done message published before the owner released it arrives ahead
        // of this PONG, so a late message never causes a second upstream call.
        await this.#subscriber.ping().catch(() => {});
        if (received === undefined) return { kind: 'own', takeover: next.acquired === 'poll' };
        await this.#release(lock, token);
        return { kind: 'outcome', outcome: received };
      } finally {
        await watch.stop();
      }
    } finally {
      if (this.#handlers.get(channel) === handler) {
        this.#handlers.delete(channel);
        this.#subscriber.unsubscribe(channel).catch(() => {});
      }
    }
  }

  /**
   * Tries the lock at once (the owner may have finished before we subscribed), then every
   * `pollIntervalMs` (a lock found free means the owner vanished), until `stop()` or the deadline.
   * A lock won after the wait ended is released again, so none outlives the waiter.
   */
  #watchLock(lock: string, token: string, deadline: number, answered: () => boolean) {
    const turn = Promise.withResolvers<LockTurn>();
    const timers: NodeJS.Timeout[] = [];
    let stopped = false;
    let attempt: Promise<boolean> | undefined;
    const tryLock = async (kind: 'recheck' | 'poll'): Promise<boolean> => {
      try {
        if (!(await this.#acquire(lock, token))) return false;
        if (stopped || answered()) await this.#release(lock, token);
        else turn.resolve({ acquired: kind });
      } catch (error) {
        turn.resolve({ failed: error });
      }
      return true;
    };
    const schedule = (ended: boolean) => {
      if (!ended && !stopped && !answered()) timers.push(setTimeout(poll, this.#pollIntervalMs));
    };
    const poll = () => {
      attempt = tryLock('poll');
      attempt.then(schedule);
    };
    attempt = tryLock('recheck');
    attempt.then(schedule);
    timers.push(setTimeout(() => turn.resolve('timeout'), Math.max(0, deadline - Date.now())));
    return {
      turn: turn.promise,
      stop: async () => {
        stopped = true;
        for (const timer of timers) clearTimeout(timer);
        await attempt;
      },
    };
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

/** How a lock watch ended. */
type LockTurn = { acquired: 'recheck' | 'poll' } | { failed: unknown } | 'timeout';

/** How a waiter's wait ended. */
type WaitEnd =
  | { kind: 'outcome'; outcome: MergeOutcome }
  | { kind: 'cached'; value: MergePayload }
  | { kind: 'own'; takeover: boolean }
  | { kind: 'fallback'; error: unknown; op: string }
  | { kind: 'timeout' };
