// The node:http plumbing: listening, closing promptly (open connections and pending timers
// included), and sleeps that close() cancels.

import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { sendError } from './protocol.ts';

/** Sleeps that never resolve once cancelAll() ran, so a closed fake leaves no timer behind. */
export function createSleeper() {
  const timers = new Set<NodeJS.Timeout>();
  const sleep = (ms: number): Promise<void> => {
    if (ms <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        timers.delete(timer);
        resolve();
      }, ms);
      timers.add(timer);
    });
  };
  const cancelAll = (): void => {
    for (const timer of timers) clearTimeout(timer);
    timers.clear();
  };
  return { sleep, cancelAll };
}

export interface Listening {
  url: string;
  /** Stops listening and drops every connection, answered or not. Idempotent. */
  close(): Promise<void>;
}

export async function listen(
  handler: (req: IncomingMessage, res: ServerResponse) => Promise<void>,
  host: string,
  port: number,
): Promise<Listening> {
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    handler(req, res).catch((err: unknown) => {
      if (res.headersSent || res.destroyed) {
        res.destroy();
        return;
      }
      sendError(res, 'api_error', `Fake upstream bug: ${(err as Error).message}`);
    });
  });
  // Timeouts set explicitly: a test decides how long a call may hang, not the server.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 0;
  server.requestTimeout = 0;
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  let closing: Promise<void> | undefined;
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${address.port}`,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        for (const socket of sockets) socket.destroy();
      });
      return closing;
    },
  };
}
