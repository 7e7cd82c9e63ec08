// Number formats and goals shared by the console report and docs/benchmarks.md.

export const MB = 1e6;
export const int = (n: number) => Math.round(n).toLocaleString('en-US');
export const ms = (n: number) => (Number.isFinite(n) ? n.toFixed(3) : 'n/a');
export const mb = (bytes: number) => `${(bytes / MB).toFixed(0)} MB`;
export const kb = (bytes: number) => `${(bytes / 1000).toFixed(1)} KB`;
export const seconds = (milliseconds: number) => `${(milliseconds / 1000).toFixed(2)} s`;
export const statusList = (statuses: Record<string, number>) =>
  Object.entries(statuses)
    .sort((a, b) => b[1] - a[1])
    .map(([status, count]) => `${int(count)} × ${status}`)
    .join(', ');

/** Per request in flight, the goal: twice the body plus 32 KB. */
export const perRequestGoal = (bodyBytes: number) => 2 * bodyBytes + 32_000;
/** Peak RSS with 2,000 requests in flight (~20 KB bodies). */
export const RSS_GOAL_2000 = 300 * MB;

/** The higher of the kernel's VmHWM and the highest VmRSS sampled. */
export const peakOf = (r: { hwmBytes: number; peakRssBytes?: number }) =>
  Math.max(r.hwmBytes, r.peakRssBytes ?? 0);
