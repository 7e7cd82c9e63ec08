// Who may call: the configured tokens, each its own account unless `sharedAccount` (tasks belong
// to an account), tokens revoked by a test, and an optional per-token rate limit.

import type { UpstreamErrorCode } from './protocol.ts';

/** How a revoked token is refused, as the spec lists the codes (disabled is a 400 there). */
export type RevocationCode =
  | 'invalid_token'
  | 'token_expired'
  | 'used_up'
  | 'disabled'
  | 'token_mismatched';

export type Admission =
  | { ok: true; account: string }
  | { ok: false; code: UpstreamErrorCode & ('no_token' | RevocationCode | 'too_many_requests') };

export interface AccountsOptions {
  tokens: readonly string[];
  sharedAccount: boolean;
  /** Calls per second per token; undefined: no limit. */
  rateLimitPerSecond: number | undefined;
  now: () => number;
}

export class Accounts {
  readonly #tokens: ReadonlySet<string>;
  readonly #options: AccountsOptions;
  readonly #revoked = new Map<string, RevocationCode>();
  readonly #buckets = new Map<string, { level: number; at: number }>();

  constructor(options: AccountsOptions) {
    this.#tokens = new Set(options.tokens);
    this.#options = options;
  }

  revoke(token: string, code: RevocationCode): void {
    this.#revoked.set(token, code);
  }

  /** Auth first (missing, revoked, unknown), then the rate limit: a refused call costs nothing. */
  admit(token: string | undefined): Admission {
    if (token === undefined) return { ok: false, code: 'no_token' };
    const revocation = this.#revoked.get(token);
    if (revocation) return { ok: false, code: revocation };
    if (!this.#tokens.has(token)) return { ok: false, code: 'invalid_token' };
    if (!this.#take(token)) return { ok: false, code: 'too_many_requests' };
    return { ok: true, account: this.#options.sharedAccount ? 'shared' : token };
  }

  /**
   * A token bucket per token holding one second of calls, refilled continuously: a steady rate up
   * to the limit always passes and a burst above it is refused at once. Hand-written because the
   * rate-limit libraries at hand are Fastify plugins and the fake is plain node:http; the map is
   * bounded by the configured tokens.
   */
  #take(token: string): boolean {
    const rate = this.#options.rateLimitPerSecond;
    if (rate === undefined) return true;
    const now = this.#options.now();
    const bucket = this.#buckets.get(token) ?? { level: rate, at: now };
    bucket.level = Math.min(rate, bucket.level + ((now - bucket.at) * rate) / 1000);
    bucket.at = now;
    this.#buckets.set(token, bucket);
    if (bucket.level < 1) return false;
    bucket.level -= 1;
    return true;
  }

  reset(): void {
    this.#revoked.clear();
    this.#buckets.clear();
  }
}
