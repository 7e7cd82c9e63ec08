import { createHash } from 'node:crypto';

/** First 8 hex characters of SHA-256: enough to tell tokens apart in a log, useless to an attacker. */
export function tokenFingerprint(token: string): string {
  return createHash('sha256').update(token).digest('hex').slice(0, 8);
}

export interface PooledToken {
  readonly token: string;
  readonly fingerprint: string;
  /** Set while the token is out of rotation (the upstream rejected it). */
  disabledAt: number | undefined;
  /** Epoch ms until which the upstream asked us (429 + retry-after) not to use this token. */
  coolUntil: number;
  /** The upstream's last answer with it rejected it (kept in rotation when it is the only one). */
  failing: boolean;
}

export interface PickOptions {
  /** The token the previous attempt used: a retry goes elsewhere when it can. */
  avoid?: PooledToken;
  /** Tokens that already rejected this call: never sent to again within it. */
  exclude?: ReadonlySet<PooledToken>;
  now?: number;
}

/** What a 401/403 did to a token, so the caller logs and counts it once. */
export type Rejection = 'disabled' | 'already_disabled' | 'kept';

/**
 * The upstream tokens, used round-robin. A token the upstream rejects (401/403) leaves rotation;
 * after `recheckMs` one request may use it again as a probe, so a recharged or re-enabled token
 * comes back without a restart. A 429 with `retry-after` cools a token down for that long.
 */
export class TokenPool {
  readonly #entries: PooledToken[];
  readonly #recheckMs: number;
  #cursor = 0;

  constructor(tokens: readonly string[], recheckMs: number) {
    this.#entries = [...new Set(tokens)].map((token) => ({
      token,
      fingerprint: tokenFingerprint(token),
      disabledAt: undefined,
      coolUntil: 0,
      failing: false,
    }));
    this.#recheckMs = recheckMs;
  }

  get size(): number {
    return this.#entries.length;
  }

  /** Tokens the upstream did not reject on their last use. */
  usableCount(): number {
    return this.#entries.filter((entry) => !entry.failing).length;
  }

  /** Milliseconds until a token out of rotation may be tried again (0: one may be now). */
  recheckIn(now = Date.now()): number {
    let soonest = Number.POSITIVE_INFINITY;
    for (const entry of this.#entries) {
      const at = entry.disabledAt === undefined ? now : entry.disabledAt + this.#recheckMs;
      soonest = Math.min(soonest, Math.max(0, at - now));
    }
    return soonest;
  }

  /** Whether pick() could return a token right now (in rotation, or due for a recheck). */
  hasCandidate(exclude?: ReadonlySet<PooledToken>, now = Date.now()): boolean {
    return this.#entries.some((entry) => !exclude?.has(entry) && this.#eligible(entry, now));
  }

  /**
   * The next token to send with, round-robin over tokens in rotation and those due for a
   * recheck (so a recovered token comes back even while others carry the load). Preference, in
   * order: not cooling down, not the one the last attempt used, the soonest cool-down end.
   * undefined when no token may be used.
   */
  pick({ avoid, exclude, now = Date.now() }: PickOptions = {}): PooledToken | undefined {
    const n = this.#entries.length;
    let best: { entry: PooledToken; index: number; rank: number[] } | undefined;
    for (let i = 0; i < n; i++) {
      const index = (this.#cursor + i) % n;
      const entry = this.#entries[index];
      if (entry === undefined || exclude?.has(entry) || !this.#eligible(entry, now)) continue;
      const rank = [
        entry.coolUntil > now ? 1 : 0,
        entry === avoid ? 1 : 0,
        Math.max(entry.coolUntil, now),
      ];
      if (best === undefined || lexicallyLess(rank, best.rank)) best = { entry, index, rank };
    }
    if (best === undefined) return undefined;
    this.#cursor = (best.index + 1) % n;
    // Claim the recheck so concurrent requests do not all probe a dead token at once.
    if (best.entry.disabledAt !== undefined) best.entry.disabledAt = now;
    return best.entry;
  }

  /**
   * The upstream rejected this token (401/403). A pool of one keeps its token: with nothing to
   * rotate to, taking it out would turn one rejection into an outage that only a restart ends,
   * while every further request is a free probe (the upstream bills successes only).
   */
  reject(entry: PooledToken, now = Date.now()): Rejection {
    entry.failing = true;
    if (this.#entries.length === 1) return 'kept';
    const was = entry.disabledAt;
    entry.disabledAt = now;
    return was === undefined ? 'disabled' : 'already_disabled';
  }

  /** The upstream accepted this token. Returns true when that brought it back into rotation. */
  accept(entry: PooledToken): boolean {
    const wasFailing = entry.failing;
    entry.disabledAt = undefined;
    entry.failing = false;
    return wasFailing;
  }

  coolDown(entry: PooledToken, until: number): void {
    entry.coolUntil = until;
  }

  /** Milliseconds until some token usable by this call is out of its cool-down (0: one is now). */
  readyIn(exclude?: ReadonlySet<PooledToken>, now = Date.now()): number {
    let soonest = Number.POSITIVE_INFINITY;
    for (const entry of this.#entries) {
      if (exclude?.has(entry) || !this.#eligible(entry, now)) continue;
      soonest = Math.min(soonest, Math.max(0, entry.coolUntil - now));
    }
    return soonest;
  }

  #eligible(entry: PooledToken, now: number): boolean {
    return entry.disabledAt === undefined || now - entry.disabledAt >= this.#recheckMs;
  }
}

function lexicallyLess(a: readonly number[], b: readonly number[]): boolean {
  for (let i = 0; i < a.length; i++) {
    const x = a[i] ?? 0;
    const y = b[i] ?? 0;
    if (x !== y) return x < y;
  }
  return false;
}
