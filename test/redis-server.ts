import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { connect, createServer } from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe } from 'vitest';

/**
 * Redis for tests: REDIS_URL if set, else a throwaway `redis-server` on a free port. When neither
 * is available the suites are skipped with a notice, unless REQUIRE_REDIS=1 (CI), which fails them.
 */
const externalUrl = process.env.REDIS_URL;
const hasRedisServer = spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
export const redisAvailable = externalUrl !== undefined || hasRedisServer;
/** Only a server we started can be stopped and restarted (outage tests). */
export const canControlRedis = externalUrl === undefined && hasRedisServer;

export function describeWithRedis(name: string, body: () => void): void {
  if (redisAvailable) {
    describe(name, body);
  } else if (process.env.REQUIRE_REDIS === '1') {
    describe(name, () => {
      throw new Error('REQUIRE_REDIS=1 but neither REDIS_URL nor redis-server is available');
    });
  } else {
    console.warn(`[redis] skipping "${name}": install redis-server or set REDIS_URL to run it`);
    describe.skip(name, body);
  }
}

export interface TestRedis {
  url: string;
  /** Stops the server (simulated outage); only for a server this helper started. */
  stop(): Promise<void>;
  /** Starts it again on the same port. */
  start(): Promise<void>;
  close(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

async function waitForPort(port: number, up: boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const reachable = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (reachable === up) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(
    `redis on port ${port} did not become ${up ? 'reachable' : 'unreachable'} in ${timeoutMs} ms`,
  );
}

class PortTaken extends Error {}

/** The process id the redis-server on `port` reports (INFO server), or undefined. */
function serverPid(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    let received = '';
    const done = (pid: number | undefined) => {
      socket.destroy();
      resolve(pid);
    };
    socket.once('error', () => done(undefined));
    socket.once('close', () => done(undefined));
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('latin1');
      const match = /process_id:(\d+)/.exec(received);
      if (match) done(Number(match[1]));
    });
    socket.once('connect', () => socket.write('INFO server\r\n'));
  });
}

/** Resolves once `child` itself answers on `port`; PortTaken if another server holds the port. */
async function waitForOwnServer(port: number, child: ChildProcess, timeoutMs = 5_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new PortTaken(`redis-server could not listen on port ${port}`);
    }
    const pid = await serverPid(port);
    if (pid === child.pid) return;
    if (pid !== undefined) {
      child.kill('SIGKILL');
      throw new PortTaken(`port ${port} is held by another redis-server (pid ${pid})`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`redis-server on port ${port} did not answer in ${timeoutMs} ms`);
}

export interface RedisServerOptions {
  /**
   * Extra redis-server arguments, e.g. `['--maxmemory', '4mb', '--maxmemory-policy',
   * 'volatile-lru']`. A test that needs them must also need a server it controls
   * (`canControlRedis`): an external REDIS_URL is used as it is.
   */
  args?: readonly string[];
}

/** Starts a redis-server (or wraps REDIS_URL, which cannot be stopped). */
export async function startRedis(options: RedisServerOptions = {}): Promise<TestRedis> {
  if (externalUrl !== undefined) {
    return {
      url: externalUrl,
      stop: async () => {
        throw new Error('cannot stop an external REDIS_URL');
      },
      start: async () => {},
      close: async () => {},
    };
  }
  let port = await freePort();
  let child: ChildProcess | undefined;
  const start = async () => {
    if (child && child.exitCode === null) return;
    const spawned = spawn(
      'redis-server',
      [
        '--port',
        String(port),
        '--bind',
        '127.0.0.1',
        '--save',
        '',
        '--appendonly',
        'no',
        '--loglevel',
        'warning',
        ...(options.args ?? []),
      ],
      { stdio: 'ignore' },
    );
    child = spawned;
    await waitForOwnServer(port, spawned);
  };
  // Another worker's server can take the free port between freePort() and the spawn: then ours
  // fails to bind, and every test would silently share the other server. Try another port.
  for (let attempt = 1; ; attempt++) {
    try {
      await start();
      break;
    } catch (error) {
      if (!(error instanceof PortTaken) || attempt === 5) throw error;
      port = await freePort();
    }
  }
  const stop = async () => {
    const running = child;
    child = undefined;
    if (!running || running.exitCode !== null) return;
    const exited = new Promise((resolve) => running.once('exit', resolve));
    running.kill('SIGKILL');
    await exited;
    await waitForPort(port, false);
  };
  return { url: `redis://127.0.0.1:${port}`, stop, start, close: stop };
}

/**
 * For a describe block: one redis-server for the block and a client to it; with `keyPattern`,
 * the keys matching it are deleted before each test. Read `.redis` / `.server` inside tests.
 */
export function useRedis(keyPattern?: string): {
  readonly redis: Redis;
  readonly server: TestRedis;
} {
  let server: TestRedis | undefined;
  let redis: Redis | undefined;
  beforeAll(async () => {
    server = await startRedis();
    redis = new Redis(server.url, { maxRetriesPerRequest: 1 });
  });
  afterAll(async () => {
    redis?.disconnect();
    await server?.close();
  });
  if (keyPattern !== undefined) {
    beforeEach(async () => {
      const keys = await (redis as Redis).keys(keyPattern);
      if (keys.length > 0) await (redis as Redis).del(...keys);
    });
  }
  return {
    get redis() {
      if (!redis) throw new Error('useRedis: read .redis inside a test');
      return redis;
    },
    get server() {
      if (!server) throw new Error('useRedis: read .server inside a test');
      return server;
    },
  };
}
