/**
 * Where `clients usage` reads from: Redis directly when REDIS_URL is set (every replica's
 * counts), else the running gateway's admin port (`GET /usage`).
 */
import { Redis } from 'ioredis';
import { utcDay } from '../days.ts';
import { countsByClient } from './counts.ts';
import { type ClientUsage, type KnownClients, type UsageReport, usageReport } from './report.ts';
import { RedisUsageStore } from './store.ts';

/** Both the CLI and a tool can rely on one bound: an answer, or an error, within this. */
const TIMEOUT_MS = 3_000;

/** `GET /usage/:client`'s body. */
export interface OneClientUsage {
  day: string;
  source: UsageReport['source'];
  client: ClientUsage;
}

/** A usage source could not be read; the message says which and why (no password). */
export class UsageSourceError extends Error {
  override name = 'UsageSourceError';
}

export async function usageFromRedis(
  url: string,
  clients: KnownClients,
  now = new Date(),
): Promise<UsageReport> {
  const redis = new Redis(url, {
    lazyConnect: true,
    connectTimeout: TIMEOUT_MS,
    commandTimeout: TIMEOUT_MS,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => null, // one attempt: a tool reports, it does not wait for a recovery
  });
  // The socket's error (ECONNREFUSED, …) says more than the "Connection is closed." that follows.
  let socketError: unknown;
  redis.on('error', (err) => {
    socketError ??= err;
  });
  try {
    await redis.connect();
    const day = utcDay(now);
    const fields = await new RedisUsageStore(redis).read(day);
    return usageReport({ day, source: 'redis', byClient: countsByClient(fields) }, clients);
  } catch (err) {
    throw new UsageSourceError(`Redis at ${safeRedisAddress(url)}: ${reason(socketError ?? err)}`);
  } finally {
    redis.disconnect();
  }
}

/** Today's usage from a gateway's admin port; `client` for one client (404 → undefined). */
export async function usageFromAdmin(baseUrl: string): Promise<UsageReport>;
export async function usageFromAdmin(
  baseUrl: string,
  client: string,
): Promise<OneClientUsage | undefined>;
export async function usageFromAdmin(
  baseUrl: string,
  client?: string,
): Promise<UsageReport | OneClientUsage | undefined> {
  const url = `${baseUrl}/usage${client === undefined ? '' : `/${encodeURIComponent(client)}`}`;
  let response: Response;
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(TIMEOUT_MS) });
  } catch (err) {
    throw new UsageSourceError(`no gateway answered at ${url}: ${reason(err)}`);
  }
  if (client !== undefined && response.status === 404) return undefined;
  if (!response.ok) {
    throw new UsageSourceError(`${url} answered ${response.status} (is that the admin port?)`);
  }
  try {
    return (await response.json()) as UsageReport | OneClientUsage;
  } catch {
    throw new UsageSourceError(`${url} did not answer with JSON (is that the admin port?)`);
  }
}

/** The admin port's URL as seen from this machine: a wildcard bind is reached on loopback. */
export function adminBaseUrl(host: string, port: number): string {
  const reachable = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return `http://${reachable.includes(':') ? `[${reachable}]` : reachable}:${port}`;
}

/** host:port of a Redis URL, never its password. */
export function safeRedisAddress(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.protocol}//${parsed.host}`;
  } catch {
    return 'REDIS_URL';
  }
}

function reason(err: unknown): string {
  // fetch wraps the socket error (ECONNREFUSED, …) in `cause`.
  const cause = err instanceof Error && err.cause instanceof Error ? err.cause : err;
  const code = (cause as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code === 'string') return code;
  if (err instanceof Error && err.name === 'TimeoutError')
    return `no answer within ${TIMEOUT_MS} ms`;
  return err instanceof Error ? err.message : String(err);
}
