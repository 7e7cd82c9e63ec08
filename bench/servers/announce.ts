// Shared by the server entry points: report the URL, answer the parent's memory questions, and
// never outlive the benchmark.

export interface AnnounceOptions {
  /** The admin server's URL (the gateway's /metrics), sent to the parent with the URL. */
  adminUrl?: string;
  /** Extra numbers sent with every memory answer (e.g. requests a server holds). */
  stats?: () => Record<string, number>;
}

/** What a server answers to 'memoryUsage' and 'gc' over IPC. */
export interface MemoryAnswer {
  memoryUsage: NodeJS.MemoryUsage;
  /** True when a full garbage collection ran first (the process was started with --expose-gc). */
  gc: boolean;
  stats: Record<string, number>;
}

/**
 * Prints the URL on stdout (for a person running the server alone) and sends it to the parent
 * over IPC. When the parent goes away (its IPC channel closes), or on SIGTERM/SIGINT, `close` runs
 * and the process exits, so a crashed benchmark leaves no server behind.
 */
export function announce(
  url: string,
  close: () => Promise<unknown> = async () => {},
  options: AnnounceOptions = {},
): void {
  process.stdout.write(`${url}\n`);
  let closing = false;
  const stop = () => {
    if (closing) return;
    closing = true;
    // exit() (not a signal's default action) lets --cpu-prof write its profile.
    const force = setTimeout(() => process.exit(0), 2_000);
    force.unref();
    close().finally(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  if (process.send) {
    process.send({ url, adminUrl: options.adminUrl });
    process.once('disconnect', stop);
    // The parent samples the heap breakdown while it watches RSS; 'gc' first collects garbage
    // (only when started with --expose-gc), so that what is left is what the process holds.
    process.on('message', (message) => {
      if (message !== 'memoryUsage' && message !== 'gc') return;
      const collect = message === 'gc' ? (globalThis as { gc?: () => void }).gc : undefined;
      collect?.();
      const answer: MemoryAnswer = {
        memoryUsage: process.memoryUsage(),
        gc: collect !== undefined,
        stats: options.stats?.() ?? {},
      };
      process.send?.(answer);
    });
  }
}

/** `http://127.0.0.1:<port>` of a listening server's address. */
export function urlOf(address: unknown): string {
  const port = (address as { port?: number } | null)?.port;
  if (typeof port !== 'number') throw new Error('server has no port');
  return `http://127.0.0.1:${port}`;
}
