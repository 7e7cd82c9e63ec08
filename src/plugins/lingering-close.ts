import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';

/**
 * After answering early: how much of the unread body the gateway reads at most, and how long after
 * the answer it closes the connection at the latest (nginx's lingering close, bounded).
 */
export const LINGER = { maxBytes: 1024 * 1024, maxMs: 1_000 } as const;

const kLingering = Symbol('lingering');

/**
 * Lingering close for answers given before the body was read (401, 404, 413, 429, …).
 *
 * Left to Node, such an answer either keeps the connection alive and reads the whole body to
 * throw it away — a client can make the gateway read gigabytes — or, with `connection: close`,
 * closes the socket while the client is still sending: the unread data makes the kernel send a
 * reset, and the client may lose the answer before it reads it. Like nginx's lingering close, the
 * gateway instead sends `connection: close`, half-closes after the answer (the client sees the
 * end of the response), reads and discards at most `LINGER.maxBytes`, and closes when the client
 * does or `LINGER.maxMs` after the answer, whichever comes first.
 *
 * Hand-written: Node has no lingering close; it is done by replacing the one socket's
 * `destroySoon`, which Node's HTTP server calls after the last response of a closing connection.
 */
const lingeringClose: FastifyPluginAsync = async (app) => {
  app.addHook('onSend', (request, reply, payload, done) => {
    const socket = request.raw.socket;
    if (!request.raw.complete && socket && hasBody(request.raw.headers)) {
      reply.header('connection', 'close');
      linger(socket, request.raw);
    }
    done(null, payload);
  });
};

function hasBody(headers: Record<string, string | string[] | undefined>): boolean {
  return headers['transfer-encoding'] !== undefined || Number(headers['content-length'] ?? 0) > 0;
}

function linger(socket: Socket & { [kLingering]?: true }, body: Readable): void {
  if (socket[kLingering]) return;
  socket[kLingering] = true;
  // Node's parser reads the socket's handle directly; the body's chunks surface on the request
  // stream. Listening from now on also keeps Node from "dumping" the body after the answer, which
  // would read on without surfacing a single chunk to count.
  let discarded = 0;
  const count = (chunk: Buffer) => {
    discarded += chunk.length;
    if (discarded > LINGER.maxBytes) stopReading();
  };
  // Past the bound the gateway stops reading but does not close yet: closing a socket with unread
  // data sends a reset, which can destroy an answer not yet acknowledged (or, if the bound is
  // crossed while the answer is still being written, not yet sent). A paused request stream
  // makes Node stop reading the socket once its small buffer is full.
  const stopReading = () => {
    body.off('data', count);
    body.pause();
  };
  body.on('data', count);
  // Node calls destroySoon once the answer is handed to the kernel.
  socket.destroySoon = () => {
    const deadline = setTimeout(() => socket.destroy(), LINGER.maxMs);
    deadline.unref();
    socket.once('close', () => {
      clearTimeout(deadline);
      body.off('data', count);
    });
    // The client gets the answer and then the end of the stream; we keep reading meanwhile.
    socket.end();
  };
}

export default fp(lingeringClose, { name: 'lingering-close', fastify: '5.x' });
