/**
 * What the gateway counts per client per UTC day, and how a completed request maps to counts.
 * No Fastify here: the usage plugin feeds completions in.
 */

export const USAGE_KINDS = [
  'requests',
  'billed_calls',
  'cache_hits',
  'merged',
  'rate_limited',
  'quota_refused',
  'refused',
] as const;

export type UsageKind = (typeof USAGE_KINDS)[number];
export type UsageCounts = Record<UsageKind, number>;

/** The fields of a completed request that usage looks at (a plugin Completion fits). */
export interface UsageEvent {
  clientId: string | undefined;
  billed: boolean;
  cache: string | undefined;
  limit: string | undefined;
}

/**
 * The kinds one request counts toward; none without a client id (unauthenticated requests
 * belong to nobody). `refused` covers the in-flight limits (requests and bytes).
 */
export function kindsOf(event: UsageEvent): UsageKind[] {
  if (event.clientId === undefined) return [];
  const kinds: UsageKind[] = ['requests'];
  if (event.billed) kinds.push('billed_calls');
  if (event.cache === 'hit') kinds.push('cache_hits');
  else if (event.cache === 'merged') kinds.push('merged');
  if (event.limit === 'rate_limit') kinds.push('rate_limited');
  else if (event.limit === 'quota') kinds.push('quota_refused');
  else if (event.limit === 'client_in_flight' || event.limit === 'bytes_in_flight') {
    kinds.push('refused');
  }
  return kinds;
}

export function emptyCounts(): UsageCounts {
  return {
    requests: 0,
    billed_calls: 0,
    cache_hits: 0,
    merged: 0,
    rate_limited: 0,
    quota_refused: 0,
    refused: 0,
  };
}

/** One day's counts: field `<client>|<kind>` → count (the Redis hash's layout). */
export type DayCounts = Map<string, number>;

const SEPARATOR = '|';

/** Client ids never contain `|` (CLIENT_ID_PATTERN), so the field splits back unambiguously. */
export function usageField(clientId: string, kind: UsageKind): string {
  return `${clientId}${SEPARATOR}${kind}`;
}

const KIND_SET: ReadonlySet<string> = new Set(USAGE_KINDS);

/** Per-client counts from a day's fields; unknown kinds (a newer writer's) are skipped. */
export function countsByClient(fields: DayCounts): Map<string, UsageCounts> {
  const byClient = new Map<string, UsageCounts>();
  for (const [field, count] of fields) {
    const at = field.lastIndexOf(SEPARATOR);
    const clientId = field.slice(0, at);
    const kind = field.slice(at + 1);
    if (at <= 0 || !KIND_SET.has(kind)) continue;
    let counts = byClient.get(clientId);
    if (!counts) {
      counts = emptyCounts();
      byClient.set(clientId, counts);
    }
    counts[kind as UsageKind] += count;
  }
  return byClient;
}

export function addCounts(into: DayCounts, from: DayCounts): void {
  for (const [field, count] of from) into.set(field, (into.get(field) ?? 0) + count);
}
