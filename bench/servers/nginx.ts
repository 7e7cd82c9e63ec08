// Runs nginx (NGINX_BIN -p NGINX_PREFIX -c NGINX_CONF, listening on NGINX_PORT) under a node
// process, so that it gets the same lifecycle as every other server: it stops with the benchmark,
// even when the benchmark itself is killed (nginx's master would otherwise outlive it).
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { waitForPort } from '../net.ts';
import { announce } from './announce.ts';

const { NGINX_BIN, NGINX_PREFIX, NGINX_CONF, NGINX_PORT } = process.env;
if (!NGINX_BIN || !NGINX_PREFIX || !NGINX_CONF || !NGINX_PORT) {
  throw new Error('NGINX_BIN, NGINX_PREFIX, NGINX_CONF and NGINX_PORT are required');
}

const nginx = spawn(
  NGINX_BIN,
  ['-p', NGINX_PREFIX, '-c', NGINX_CONF, '-e', join(NGINX_PREFIX, 'error.log')],
  { stdio: ['ignore', 'inherit', 'inherit'] },
);
let stopping = false;
const exited = new Promise<void>((resolve) => nginx.once('exit', () => resolve()));
exited.then(() => {
  if (!stopping) process.exit(1); // nginx failed (its error is on stderr)
});

await waitForPort(Number(NGINX_PORT));
announce(`http://127.0.0.1:${NGINX_PORT}`, async () => {
  stopping = true;
  nginx.kill('SIGTERM'); // fast shutdown: the master stops its workers
  await exited;
});
