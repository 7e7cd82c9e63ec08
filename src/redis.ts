import { Redis } from 'ioredis';
import type { CoreLogger } from './upstream/client.ts';

/**
 * Fail-fast settings: a Redis outage must cost a request milliseconds, never hang it.
 * No offline queue (commands fail at once while disconnected), a short connect timeout, a command
 * timeout, and one retry per command; reconnection itself goes on in the background.
 */
export const REDIS_DEFAULTS = {
  connectTimeoutMs: 1_000,
  /** Long enough to survive an event-loop stall on a loaded machine, short enough to fail fast. */
  commandTimeoutMs: 1_000,
  maxRetriesPerRequest: 1,
  /** Reconnect back-off: 100 ms, 200 ms, … capped at 2 s. */
  reconnectMaxDelayMs: 2_000,
} as const;

export interface SharedRedis {
  readonly client: Redis;
  /** True while a connection is up and ready for commands. */
  isReady(): boolean;
  close(): Promise<void>;
}

/**
 * Connects to Redis and logs the connection's state changes once each: loss at warn, recovery at
 * info (ioredis emits `error`/`close` on every failed reconnect attempt; those are collapsed).
 */
export function connectRedis(
  url: string,
  log: CoreLogger & { info(obj: object, msg: string): void },
): SharedRedis {
  const client = new Redis(url, {
    enableOfflineQueue: false,
    connectTimeout: REDIS_DEFAULTS.connectTimeoutMs,
    commandTimeout: REDIS_DEFAULTS.commandTimeoutMs,
    maxRetriesPerRequest: REDIS_DEFAULTS.maxRetriesPerRequest,
    retryStrategy: (attempt) => Math.min(attempt * 100, REDIS_DEFAULTS.reconnectMaxDelayMs),
    lazyConnect: false,
  });
  let state: 'connecting' | 'up' | 'down' = 'connecting';
  let closing = false;
  client.on('ready', () => {
    if (state === 'down') log.info({ redis: 'recovered' }, 'redis connection recovered');
    state = 'up';
  });
  const lost = (reason: string) => {
    if (closing || state === 'down') return;
    state = 'down';
    log.warn({ redis: 'lost', reason }, 'redis connection lost; falling back until it recovers');
  };
  client.on('error', (error: NodeJS.ErrnoException) => lost(error.code ?? error.message));
  client.on('close', () => lost('connection closed'));
  return {
    client,
    isReady: () => client.status === 'ready',
    close: async () => {
      closing = true;
      if (client.status === 'end') return;
      await client.quit().catch(() => client.disconnect());
    },
  };
}
