/**
 * A retry budget in the style of Finagle's RetryBudget and Envoy's retry_budget: retries may make
 * up at most `percent` of the upstream calls of the last `windowMs`, plus `minPerSecond` retries a
 * second that are always allowed. Per-call retry limits alone multiply load when the upstream is
 * failing (every client's SDK retries too); a budget caps the gateway's share of that storm.
 *
 * Hand-written: cockatiel has no budget, and the rule is a few counters in one-second buckets.
 */
export interface RetryBudgetOptions {
  percent: number;
  minPerSecond: number;
  /** How far back calls and retries count; Finagle's default TTL is 10 s. */
  windowMs?: number;
}

const BUCKET_MS = 1_000;

export class RetryBudget {
  readonly #percent: number;
  readonly #minPerSecond: number;
  readonly #buckets: number;
  /** Per one-second bucket: first calls and retries, indexed by bucket number modulo size. */
  readonly #calls: number[];
  readonly #retries: number[];
  readonly #stamps: number[];

  constructor(options: RetryBudgetOptions) {
    this.#percent = options.percent;
    this.#minPerSecond = options.minPerSecond;
    this.#buckets = Math.max(1, Math.round((options.windowMs ?? 10_000) / BUCKET_MS));
    this.#calls = new Array(this.#buckets).fill(0);
    this.#retries = new Array(this.#buckets).fill(0);
    this.#stamps = new Array(this.#buckets).fill(-1);
  }

  /** A first attempt was sent: deposits into the budget. */
  recordCall(now = Date.now()): void {
    const index = this.#bucket(now);
    this.#calls[index] = (this.#calls[index] ?? 0) + 1;
  }

  /** Takes one retry from the budget; false when it is spent (the retry must not be sent). */
  tryRetry(now = Date.now()): boolean {
    const { calls, retries } = this.#totals(now);
    const allowed = this.#minPerSecond * this.#buckets + (calls * this.#percent) / 100;
    if (retries + 1 > allowed) return false;
    const index = this.#bucket(now);
    this.#retries[index] = (this.#retries[index] ?? 0) + 1;
    return true;
  }

  #bucket(now: number): number {
    const stamp = Math.floor(now / BUCKET_MS);
    const index = stamp % this.#buckets;
    if (this.#stamps[index] !== stamp) {
      this.#stamps[index] = stamp;
      this.#calls[index] = 0;
      this.#retries[index] = 0;
    }
    return index;
  }

  #totals(now: number): { calls: number; retries: number } {
    const current = Math.floor(now / BUCKET_MS);
    let calls = 0;
    let retries = 0;
    for (let i = 0; i < this.#buckets; i++) {
      const stamp = this.#stamps[i] ?? -1;
      if (stamp <= current - this.#buckets || stamp > current) continue;
      calls += this.#calls[i] ?? 0;
      retries += this.#retries[i] ?? 0;
    }
    return { calls, retries };
  }
}
