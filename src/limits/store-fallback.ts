import { GatewayError } from '../errors.ts';

/** What a request gets while the shared store (Redis) fails: `RATE_LIMIT_ON_STORE_ERROR`. */
export type StoreErrorMode = 'allow' | 'deny';

export interface StoreFallback {
  mode: StoreErrorMode;
  onError?: (error: unknown) => void;
}

/**
 * Runs `shared` (a Redis operation) and, when it fails, either runs `local` (per-replica counting,
 * `allow`) or refuses the request with 503 (`deny`). Limits and quotas share this one policy.
 */
export async function sharedOrLocal<T>(
  shared: (() => Promise<T>) | undefined,
  local: () => T | Promise<T>,
  fallback: StoreFallback,
  what: string,
): Promise<T> {
  if (shared) {
    try {
      return await shared();
    } catch (error) {
      fallback.onError?.(error);
      if (fallback.mode === 'deny') {
        throw new GatewayError(
          'upstream_unavailable',
          `the shared ${what} store is unreachable; retry later`,
          {
            headers: { 'retry-after': '1' },
            cause: error,
          },
        );
      }
    }
  }
  return local();
}
