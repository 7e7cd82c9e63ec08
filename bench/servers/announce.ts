// Shared by the server entry points: report the URL, and never outlive the benchmark.

/**
 * Prints the URL on stdout (for a person running the server alone) and sends it to the parent
 * over IPC. When the parent goes away (its IPC channel closes), or on SIGTERM/SIGINT, `close` runs
 * and the process exits, so a crashed benchmark leaves no server behind.
 */
export function announce(url: string, close: () => Promise<unknown> = async () => {}): void {
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
    process.send({ url });
    process.once('disconnect', stop);
    // The parent samples the heap breakdown while it watches RSS.
    process.on('message', (message) => {
      if (message === 'memoryUsage') process.send?.({ memoryUsage: process.memoryUsage() });
    });
  }
}

/** `http://127.0.0.1:<port>` of a listening server's address. */
export function urlOf(address: unknown): string {
  const port = (address as { port?: number } | null)?.port;
  if (typeof port !== 'number') throw new Error('server has no port');
  return `http://127.0.0.1:${port}`;
}
