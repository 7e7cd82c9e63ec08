/**
 * UTC days. Quotas reset at UTC midnight, so usage and task owners are kept per UTC day too, in
 * keys named `…:<YYYY-MM-DD>…`.
 */

/** `YYYY-MM-DD` of `date` in UTC. */
export function utcDay(date: Date): string {
  return date.toISOString().slice(0, 10);
}

/** The UTC day `days` before `day`. */
export function dayBefore(day: string, days: number): string {
  const date = new Date(`${day}T00:00:00Z`);
  date.setUTCDate(date.getUTCDate() - days);
  return utcDay(date);
}

/**
 * Days back whose keys a writer deletes (the keys carry no TTL, so that cache pressure never
 * evicts them): yesterday's stay (still read; clock skew around midnight), and a week more is
 * swept so that a gateway idle for a few days leaves nothing behind.
 */
export const SWEPT_DAYS_BACK: readonly number[] = [2, 3, 4, 5, 6, 7, 8];
