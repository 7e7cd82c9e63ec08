import { emptyCounts, type UsageCounts } from './counts.ts';
import type { DayUsage } from './recorder.ts';

/** One client's usage today, as GET /usage and `clients usage --json` show it. */
export interface ClientUsage extends UsageCounts {
  id: string;
  /** Upstream calls the cache and request merging saved: cache_hits + merged. */
  calls_saved: number;
  /** The client's daily quota of billed upstream calls (clients file), or null for none. */
  quota_per_day: number | null;
  /** quota_per_day − billed_calls (not below 0), or null for no quota. */
  quota_remaining: number | null;
}

export interface UsageReport {
  /** The UTC day, YYYY-MM-DD. */
  day: string;
  /** `redis`: all replicas; `replica`: only the gateway that answered (no Redis, or it failed). */
  source: DayUsage['source'];
  clients: ClientUsage[];
}

/** Reads today's usage; the usage plugin's `app.usage` and what the admin routes serve. */
export interface UsageReader {
  today(clientId?: string): Promise<UsageReport>;
}

/** What a report needs from the clients (a ClientDirectory or a ClientRegistry). */
export interface KnownClients {
  readonly ids: readonly string[];
  get(id: string): { quota?: { upstreamCallsPerDay: number } } | undefined;
}

/**
 * Every known client (zeros included, in clients-file order), then any other client counted
 * today (removed since) by id; only `only` when given.
 */
export function usageReport(usage: DayUsage, clients: KnownClients, only?: string): UsageReport {
  const counted = [...usage.byClient.keys()].filter((id) => clients.get(id) === undefined).sort();
  const ids = [...clients.ids, ...counted].filter((id) => only === undefined || id === only);
  return {
    day: usage.day,
    source: usage.source,
    clients: ids.map((id) => clientUsage(id, usage.byClient.get(id) ?? emptyCounts(), clients)),
  };
}

function clientUsage(id: string, counts: UsageCounts, clients: KnownClients): ClientUsage {
  const perDay = clients.get(id)?.quota?.upstreamCallsPerDay;
  return {
    id,
    ...counts,
    calls_saved: counts.cache_hits + counts.merged,
    quota_per_day: perDay ?? null,
    quota_remaining: perDay === undefined ? null : Math.max(0, perDay - counts.billed_calls),
  };
}

const COLUMNS: Array<[string, (c: ClientUsage) => string]> = [
  ['client', (c) => c.id],
  ['requests', (c) => String(c.requests)],
  [
    'billed/quota',
    (c) =>
      c.quota_per_day === null ? String(c.billed_calls) : `${c.billed_calls}/${c.quota_per_day}`,
  ],
  ['cache hits', (c) => String(c.cache_hits)],
  ['merged', (c) => String(c.merged)],
  ['saved', (c) => String(c.calls_saved)],
  ['rate limited', (c) => String(c.rate_limited)],
  ['quota refused', (c) => String(c.quota_refused)],
  ['refused', (c) => String(c.refused)],
];

/** The human table of `clients usage`. */
export function formatUsageTable(report: UsageReport): string {
  const where =
    report.source === 'redis'
      ? 'all replicas (Redis)'
      : 'one gateway replica only (no shared Redis counts)';
  const title = `usage on ${report.day} (UTC, so far), ${where}\n`;
  if (report.clients.length === 0) return `${title}no clients\n`;
  const rows = [
    COLUMNS.map(([name]) => name),
    ...report.clients.map((c) => COLUMNS.map(([, cell]) => cell(c))),
  ];
  const widths = COLUMNS.map((_, i) => Math.max(...rows.map((row) => (row[i] ?? '').length)));
  const lines = rows.map((row) =>
    row
      .map((cell, i) => (i === 0 ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0)))
      .join('  ')
      .trimEnd(),
  );
  return `${title}${lines.join('\n')}\n`;
}
