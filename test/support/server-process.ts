// The real entry point as a child process: one spawner for every process test. Tests wait on the
// process's own log lines (events), never on sleeps; `within` bounds each wait.
import { type ChildProcess, spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { fileURLToPath } from 'node:url';
import { within } from '../helpers.ts';

const SERVER = fileURLToPath(new URL('../../src/server.ts', import.meta.url));
/** How long a process test waits for one event before failing (a bound, not a timing claim). */
export const PROCESS_BOUND_MS = 20_000;

export type LogLine = Record<string, unknown> & { msg?: string };
export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Settings every test server gets unless the test says otherwise: loopback, free ports. */
export const PROCESS_DEFAULTS = {
  HOST: '127.0.0.1',
  PORT: '0',
  ADMIN_HOST: '127.0.0.1',
  ADMIN_PORT: '0',
  LOG_LEVEL: 'info',
} as const;

const running = new Set<ServerProcess>();

/** Spawns `node src/server.ts` with exactly `env` (nothing inherited, so no ACEDATA_* leaks in). */
export class ServerProcess {
  readonly child: ChildProcess;
  readonly lines: LogLine[] = [];
  readonly exited: Promise<Exit>;
  #stdout = '';
  #stderr = '';
  readonly #events = new EventEmitter();

  constructor(env: Record<string, string>, cwd: string, entry = SERVER) {
    this.child = spawn(process.execPath, [entry], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(this);
    let partial = '';
    this.child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      this.#stdout += chunk;
      partial += chunk;
      const complete = partial.split('\n');
      partial = complete.pop() ?? '';
      for (const text of complete) {
        if (text === '') continue;
        const line = JSON.parse(text) as LogLine;
        this.lines.push(line);
        this.#events.emit('line', line);
      }
    });
    this.child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      this.#stderr += chunk;
    });
    this.exited = new Promise((resolve) => {
      this.child.once('close', (code, signal) => {
        running.delete(this);
        resolve({ code, signal });
      });
    });
  }

  get stdout(): string {
    return this.#stdout;
  }

  get stderr(): string {
    return this.#stderr;
  }

  /** The first log line at index `from` or later that matches, as soon as it is written. */
  waitFor(match: (line: LogLine) => boolean, what: string, from = 0): Promise<LogLine> {
    const found = this.lines.slice(from).find(match);
    if (found) return Promise.resolve(found);
    return within(
      new Promise<LogLine>((resolve, reject) => {
        const onLine = (line: LogLine) => {
          if (!match(line)) return;
          this.#events.off('line', onLine);
          resolve(line);
        };
        this.#events.on('line', onLine);
        this.exited.then(({ code, signal }) =>
          reject(
            new Error(
              `server exited (${code ?? signal}) before ${what}:\n${this.#stderr}${this.#stdout}`,
            ),
          ),
        );
      }),
      PROCESS_BOUND_MS,
      what,
    );
  }

  /** Waits for the "gateway listening" line; resolves the API and admin ports. */
  async listening(): Promise<{ port: number; adminPort: number }> {
    const line = await this.waitFor((l) => l.msg === 'gateway listening', 'the gateway listening');
    return { port: Number(line.port), adminPort: Number(line.admin_port) };
  }

  /** Sends `signal` and waits for the exit. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<Exit> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

/** Kills whatever a failed test left running (call from afterEach/afterAll). */
export async function killServerProcesses(): Promise<void> {
  await Promise.all([...running].map((server) => server.stop('SIGKILL')));
}
