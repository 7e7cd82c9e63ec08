import { dayBefore, utcDay } from '../days.ts';
import {
  addCounts,
  countsByClient,
  type DayCounts,
  kindsOf,
  type UsageCounts,
  type UsageEvent,
  type UsageKind,
  usageField,
} from './counts.ts';
import { MemoryUsageStore, type UsageStore } from './store.ts';

export interface UsageRecorderOptions {
  /** The store every replica shares (Redis); absent → this replica's memory only. */
  shared?: UsageStore;
  /** How long counts wait in memory before one batched write to the shared store. */
  flushIntervalMs?: number;
  /** A shared-store failure; requests are never affected. */
  onError?: (error: unknown) => void;
  now?: () => Date;
}

/** One day's usage by client, and where it was read from. */
export interface DayUsage {
  day: string;
  /** `redis`: every replica's counts; `replica`: this process's own (no Redis, or it failed). */
  source: 'redis' | 'replica';
  byClient: Map<string, UsageCounts>;
}

export const DEFAULT_USAGE_FLUSH_MS = 1_000;

/**
 * Counts usage per client per UTC day. Recording is synchronous and never fails: counts go to
 * this replica's memory at once, and (with a shared store) into a pending batch that is written
 * with one round trip per flush interval rather than one per request. A failed write is kept and
 * tried again with the next batch (days before yesterday are dropped); a write that timed out
 * after Redis applied it is counted twice, the price of never losing counts to a blip.
 */
export class UsageRecorder {
  readonly #local = new MemoryUsageStore();
  readonly #shared: UsageStore | undefined;
  readonly #flushIntervalMs: number;
  readonly #onError: (error: unknown) => void;
  readonly #now: () => Date;
  #pending = new Map<string, DayCounts>();
  #timer: NodeJS.Timeout | undefined;
  #flushing: Promise<void> = Promise.resolve();
  #closed = false;

  constructor(options: UsageRecorderOptions = {}) {
    this.#shared = options.shared;
    this.#flushIntervalMs = options.flushIntervalMs ?? DEFAULT_USAGE_FLUSH_MS;
    this.#onError = options.onError ?? (() => {});
    this.#now = options.now ?? (() => new Date());
  }

  /** Counts one completed request; returns the kinds it counted toward (none without a client). */
  record(event: UsageEvent): UsageKind[] {
    const kinds = kindsOf(event);
    const { clientId } = event;
    if (clientId === undefined || kinds.length === 0) return kinds;
    const day = utcDay(this.#now());
    const counts: DayCounts = new Map(kinds.map((kind) => [usageField(clientId, kind), 1]));
    this.#local.addNow(day, counts);
    if (this.#shared) this.#addPending(day, counts);
    return kinds;
  }

  /** Today's usage: every replica's when the shared store answers, else this replica's. */
  async today(): Promise<DayUsage> {
    const day = utcDay(this.#now());
    if (this.#shared) {
      try {
        const fields = await this.#shared.read(day);
        // This replica's counts that are still waiting for the next batch.
        addCounts(fields, this.#pending.get(day) ?? new Map());
        return { day, source: 'redis', byClient: countsByClient(fields) };
      } catch (error) {
        this.#onError(error);
      }
    }
    return { day, source: 'replica', byClient: countsByClient(await this.#local.read(day)) };
  }

  /** Writes the pending batch now. */
  flush(): Promise<void> {
    this.#flushing = this.#flushing.then(() => this.#flushNow());
    return this.#flushing;
  }

  /** Stops the timer and writes what is pending (one try). */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.flush();
  }

  #addPending(day: string, counts: DayCounts): void {
    let fields = this.#pending.get(day);
    if (!fields) {
      fields = new Map();
      this.#pending.set(day, fields);
    }
    addCounts(fields, counts);
    this.#schedule();
  }

  #schedule(): void {
    if (this.#timer || this.#closed) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.flush();
    }, this.#flushIntervalMs);
    this.#timer.unref();
  }

  async #flushNow(): Promise<void> {
    const shared = this.#shared;
    if (!shared || this.#pending.size === 0) return;
    const batch = this.#pending;
    this.#pending = new Map();
    for (const [day, counts] of batch) {
      try {
        await shared.add(day, counts);
      } catch (error) {
        this.#onError(error);
        // Kept for the next batch, unless the day is already gone from every report.
        if (day >= dayBefore(utcDay(this.#now()), 1)) this.#addPending(day, counts);
      }
    }
  }
}
