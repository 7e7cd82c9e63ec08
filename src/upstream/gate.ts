import { GatewayError } from '../errors.ts';
import { secondsFromMs } from './retry-after.ts';

export interface UpstreamGateOptions {
  /** Calls started per second across the whole token pool (the upstream's limit is per token). */
  ratePerSecond: number;
  /** Calls in flight upstream at once. */
  maxConcurrency: number;
  /** Calls waiting for a start slot; beyond it a call is refused at once. */
  maxQueued: number;
  /** A call starts only if at least this much of its deadline is left (ms). */
  minAttemptMs: number;
}

export interface GateTicket {
  /** Whose queue the call waits in: a client's burst queues behind itself. */
  clientId: string;
  /** Epoch ms by which the call must have started (with minAttemptMs to spare). */
  deadline: number;
  signal: AbortSignal;
}

interface Waiter {
  ticket: GateTicket;
  start: () => void;
  refuse: (error: GatewayError) => void;
}

const WINDOW_MS = 1_000;

/**
 * Admission of upstream calls:
 * - a strict sliding-window rate: no call starts while `rate` others started within the last
 *   second (the upstream counts per second); a call that finds no queue starts at once;
 * - queued calls paced evenly, one every 1 s / rate from the previous slot's scheduled time (so a
 *   timer firing a little late does not lower the rate). A window alone lets a saturated gate
 *   start its calls in one clump a second, and a request arriving just after a clump waits up to
 *   a second however fair the order (found by the bench's noisy neighbour);
 * - a cap on calls in flight;
 * - fair queueing: one FIFO per client, served in turn, so a client's burst waits behind itself
 *   and never in front of another client's request;
 * - a call that cannot start before its deadline is answered 504 at once, not at the deadline.
 *
 * Hand-written: p-queue (used before) has one FIFO and no per-key fairness or deadline estimate,
 * and bottleneck's fairness is by priority levels, not by key.
 */
export class UpstreamGate {
  readonly #options: UpstreamGateOptions;
  /** Start times of the last `rate` calls, oldest first (a ring would save little at 60/s). */
  readonly #starts: number[] = [];
  /** Per-client FIFOs; Map order is the round-robin order (a served client moves to the back). */
  readonly #queues = new Map<string, Waiter[]>();
  #rate: number;
  /** When the last call was due to start: queued calls are paced one interval apart from it. */
  #lastSlot = 0;
  #queued = 0;
  #running = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(options: UpstreamGateOptions) {
    this.#options = options;
    this.#rate = options.ratePerSecond;
  }

  /** Calls running upstream and waiting, for metrics. */
  get load(): { running: number; queued: number; clients: number } {
    return { running: this.#running, queued: this.#queued, clients: this.#queues.size };
  }

  /** The pool's rate changes when a token leaves or rejoins rotation. */
  setRate(ratePerSecond: number): void {
    this.#rate = Math.max(1, ratePerSecond);
    this.#pump();
  }

  /** Runs `send` once a slot is free, or refuses: 503 (queue full) or 504 (cannot start in time). */
  async run<T>(ticket: GateTicket, send: () => Promise<T>): Promise<T> {
    if (ticket.signal.aborted) throw this.#tooLate(ticket);
    const now = Date.now();
    // Too little deadline left to be worth a start, even with a free slot.
    if (now + this.#options.minAttemptMs > ticket.deadline) throw this.#tooLate(ticket);
    if (this.#queued === 0 && this.#canStart(now, false)) {
      this.#admit(now);
      return this.#runAdmitted(send);
    }
    if (this.#queued >= this.#options.maxQueued) {
      throw new GatewayError(
        'upstream_unavailable',
        'the gateway is at its upstream capacity; retry later',
        {
          headers: { 'retry-after': '1' },
        },
      );
    }
    const expectedStart = this.#expectedStart(ticket.clientId, now);
    if (expectedStart + this.#options.minAttemptMs > ticket.deadline) {
      throw new GatewayError(
        'timeout',
        'the upstream queue is too long for this request to start before its deadline; retry later',
        { headers: { 'retry-after': secondsFromMs(expectedStart - now) } },
      );
    }
    await new Promise<void>((resolve, reject) =>
      this.#enqueue({ ticket, start: resolve, refuse: reject }),
    );
    return this.#runAdmitted(send);
  }

  /** Takes a slot: counted at once, so the next admission sees it taken. */
  #admit(now: number, slot = now): void {
    this.#running++;
    this.#lastSlot = slot;
    this.#starts.push(now);
    if (this.#starts.length > this.#rate) this.#starts.splice(0, this.#starts.length - this.#rate);
  }

  async #runAdmitted<T>(send: () => Promise<T>): Promise<T> {
    try {
      return await send();
    } finally {
      this.#running--;
      this.#pump();
    }
  }

  #canStart(now: number, paced: boolean): boolean {
    return this.#running < this.#options.maxConcurrency && this.#slotFreeAt(now, paced) <= now;
  }

  /** Milliseconds between starts at the current rate. */
  get #interval(): number {
    return WINDOW_MS / this.#rate;
  }

  /** When the rate window — and, for a queued call, the pace — next let a call start. */
  #slotFreeAt(now: number, paced: boolean): number {
    const pace = paced ? this.#lastSlot + this.#interval : now;
    if (this.#starts.length < this.#rate) return Math.max(now, pace);
    const oldest = this.#starts[this.#starts.length - this.#rate] ?? 0;
    return Math.max(now, pace, oldest + WINDOW_MS);
  }

  /**
   * When a new call from `clientId` would start, counting only what the gate knows for sure: the
   * calls the round robin serves before it, and the rate window (a busy concurrency cap can only
   * delay it further). Round robin serves every waiting client once per turn, in Map order; the
   * new call is its client's (own + 1)-th, so a client before it in the order gets up to own + 1
   * starts first, one after it up to own.
   */
  #expectedStart(clientId: string, now: number): number {
    const own = this.#queues.get(clientId)?.length ?? 0;
    let ahead = own + 1;
    let before = true;
    for (const [id, queue] of this.#queues) {
      if (id === clientId) before = false;
      else ahead += Math.min(queue.length, before ? own + 1 : own);
    }
    return this.#nthStartAt(ahead, now);
  }

  /**
   * The earliest time the n-th call from now (1-based) may start: paced, one interval after the
   * one before; and under the sliding window, the j-th next start waits for the start `rate`
   * places before it to leave the window, and every further `rate` starts take one more window.
   */
  #nthStartAt(n: number, now: number): number {
    const rate = this.#rate;
    const turns = Math.floor((n - 1) / rate);
    const j = ((n - 1) % rate) + 1;
    const blocking = this.#starts[this.#starts.length - 1 + j - rate];
    const first = blocking === undefined ? now : Math.max(now, blocking + WINDOW_MS);
    const paced = this.#lastSlot + n * this.#interval;
    return Math.max(first + turns * WINDOW_MS, paced);
  }

  #enqueue(waiter: Waiter): void {
    const { clientId, signal, deadline } = waiter.ticket;
    let queue = this.#queues.get(clientId);
    if (!queue) {
      queue = [];
      this.#queues.set(clientId, queue);
    }
    queue.push(waiter);
    this.#queued++;
    const giveUp = () => {
      const list = this.#queues.get(clientId);
      const index = list?.indexOf(waiter) ?? -1;
      if (!list || index < 0) return;
      list.splice(index, 1);
      if (list.length === 0) this.#queues.delete(clientId);
      this.#queued--;
      clearTimeout(lateTimer);
      waiter.refuse(this.#tooLate(waiter.ticket));
    };
    // Past this point the call could not start with minAttemptMs left: give up now, not later.
    // A slot that frees at this very moment goes to it first (timers due together fire in any order).
    const lateTimer = setTimeout(
      () => {
        this.#pump();
        giveUp();
      },
      Math.max(0, deadline - this.#options.minAttemptMs - Date.now()),
    );
    lateTimer.unref();
    signal.addEventListener('abort', giveUp, { once: true });
    const start = waiter.start;
    waiter.start = () => {
      clearTimeout(lateTimer);
      signal.removeEventListener('abort', giveUp);
      start();
    };
    this.#pump();
  }

  /** Starts every call that may start now, one client at a time; re-arms for the next slot. */
  #pump(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const now = Date.now();
    while (this.#queued > 0 && this.#canStart(now, true)) {
      const [clientId, queue] = this.#queues.entries().next().value as [string, Waiter[]];
      const waiter = queue.shift() as Waiter;
      this.#queues.delete(clientId);
      if (queue.length > 0) this.#queues.set(clientId, queue); // to the back of the turn order
      this.#queued--;
      // The slot it was due at, not now: a timer firing a little late does not push later slots
      // back; after a longer wait the schedule restarts from now (catching up would be a clump).
      this.#admit(now, Math.max(this.#lastSlot + this.#interval, now - this.#interval / 10));
      waiter.start();
    }
    if (this.#queued > 0 && this.#running < this.#options.maxConcurrency) {
      const next = this.#slotFreeAt(now, true);
      this.#timer = setTimeout(() => this.#pump(), Math.max(1, next - now));
      this.#timer.unref();
    }
  }

  #tooLate(ticket: GateTicket): GatewayError {
    return new GatewayError('timeout', 'no upstream slot freed up before the request deadline', {
      headers: { 'retry-after': '1' },
      cause: ticket.signal.reason,
    });
  }
}
