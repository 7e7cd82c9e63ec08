// Child processes of a benchmark run: each server under test runs in its own process, so the load
// generator (this process) never shares an event loop with it. Every child is tracked and killed
// when the run ends, whether it ends normally, by an error, or by a signal.
import { type ChildProcess, type StdioOptions, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MemoryAnswer } from './servers/announce.ts';

const NODE_COMPILE_CACHE = join(tmpdir(), 'agw-bench-compile-cache');
const live = new Set<ChildProcess>();
const children = new Set<Child>();

process.on('exit', () => {
  // Last resort (exit handlers are synchronous): node children also exit when their IPC channel
  // closes; nginx's master stops its workers on SIGTERM.
  for (const child of live) child.kill('SIGTERM');
});
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(signal, () => process.exit(130));
}

export interface Child {
  readonly name: string;
  readonly process: ChildProcess;
  readonly pid: number;
  stop(): Promise<void>;
  /** SIGKILL: for a server whose in-flight requests need no drain (its memory was measured). */
  kill(): Promise<void>;
}

export interface NodeChildOptions {
  env: Record<string, string>;
  /** Extra node flags, e.g. --cpu-prof. */
  execArgv?: string[];
  /** Where the child's stdout goes: a file descriptor, or 'ignore'. */
  stdout?: number | 'ignore';
}

/** Starts `bench/servers/<script>` and resolves with its URL(s) once it listens. */
export async function startNodeServer(
  name: string,
  script: string,
  options: NodeChildOptions,
): Promise<{ child: Child; url: string; adminUrl?: string }> {
  const path = fileURLToPath(new URL(`./servers/${script}`, import.meta.url));
  const stdio: StdioOptions = ['ignore', options.stdout ?? 'ignore', 'inherit', 'ipc'];
  const proc = spawn(process.execPath, [...(options.execArgv ?? []), path], {
    stdio,
    // As the Dockerfile runs the gateway; the parent's own environment is not passed on.
    // The compile cache only shortens start-up (bytecode and stripped TypeScript are reused).
    env: {
      PATH: process.env.PATH ?? '',
      NODE_ENV: 'production',
      NODE_COMPILE_CACHE,
      ...options.env,
    },
  });
  const child = track(name, proc);
  try {
    const { url, adminUrl } = await new Promise<{ url: string; adminUrl?: string }>(
      (resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`${name} did not start within 30 s`)),
          30_000,
        );
        proc.once('message', (message: { url?: string; adminUrl?: string }) => {
          clearTimeout(timer);
          if (typeof message.url === 'string')
            resolve({ url: message.url, adminUrl: message.adminUrl });
          else reject(new Error(`${name} sent an unexpected message`));
        });
        proc.once('exit', (code, signal) => {
          clearTimeout(timer);
          reject(new Error(`${name} exited before listening (code ${code}, signal ${signal})`));
        });
      },
    );
    return { child, url, ...(adminUrl ? { adminUrl } : {}) };
  } catch (error) {
    await child.stop();
    throw error;
  }
}

/** Tracks any child process; `stop()` sends SIGTERM, then SIGKILL after 10 s. */
export function track(name: string, proc: ChildProcess): Child {
  if (proc.pid === undefined) throw new Error(`${name} could not be started`);
  live.add(proc);
  const exited = new Promise<void>((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) resolve();
    else proc.once('exit', () => resolve());
  });
  const child: Child = {
    name,
    process: proc,
    pid: proc.pid,
    async kill() {
      if (live.has(proc)) {
        proc.kill('SIGKILL');
        await exited;
      }
    },
    async stop() {
      if (live.has(proc)) {
        proc.kill('SIGTERM');
        const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
  children.add(child);
  exited.then(() => {
    live.delete(proc);
    children.delete(child);
  });
  return child;
}

/** Stops every child still running. */
export async function stopAll(): Promise<void> {
  await Promise.all([...children].map((child) => child.stop()));
}

/** Resident set size now and at its peak (VmRSS, VmHWM), in bytes. Linux only. */
export function memoryOf(pid: number): { rss: number; peak: number } | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = (field: string) =>
      Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1]);
    return { rss: kib('VmRSS') * 1024, peak: kib('VmHWM') * 1024 };
  } catch {
    return undefined;
  }
}

/** Samples a process's memory every `ms`; `stop()` returns the peak seen (and VmHWM). */
export function pollMemory(pid: number, ms = 100) {
  let maxRss = 0;
  let hwm = 0;
  const sample = () => {
    const m = memoryOf(pid);
    if (m) {
      maxRss = Math.max(maxRss, m.rss);
      hwm = Math.max(hwm, m.peak);
    }
  };
  sample();
  const timer = setInterval(sample, ms);
  return {
    stop() {
      sample();
      clearInterval(timer);
      return { maxRss, hwm };
    },
  };
}

/** A node server child's process.memoryUsage(), asked over IPC; undefined if it does not answer. */
export async function memoryUsageOf(
  child: Child,
  timeoutMs = 1_000,
): Promise<NodeJS.MemoryUsage | undefined> {
  return (await ask(child, 'memoryUsage', timeoutMs))?.memoryUsage;
}

/** A node server child's memory answer: process.memoryUsage() and its stats (e.g. requests held). */
export function memoryAnswerOf(child: Child, timeoutMs = 1_000): Promise<MemoryAnswer | undefined> {
  return ask(child, 'memoryUsage', timeoutMs);
}

/**
 * A full garbage collection in a node server child (started with --expose-gc), then its
 * process.memoryUsage() and stats; `gc` is false when the child could not collect.
 */
export function collectGarbage(
  child: Child,
  timeoutMs = 10_000,
): Promise<MemoryAnswer | undefined> {
  return ask(child, 'gc', timeoutMs);
}

function ask(
  child: Child,
  question: 'memoryUsage' | 'gc',
  timeoutMs: number,
): Promise<MemoryAnswer | undefined> {
  const proc = child.process;
  return new Promise((resolve) => {
    const onMessage = (message: Partial<MemoryAnswer>) => {
      if (message.memoryUsage === undefined) return;
      done(message as MemoryAnswer);
    };
    const done = (answer: MemoryAnswer | undefined) => {
      clearTimeout(timer);
      proc.off('message', onMessage);
      resolve(answer);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    proc.on('message', onMessage);
    if (!proc.connected || !proc.send(question)) done(undefined);
  });
}

/** Clock ticks of CPU time: the machine's busy time, its total, and this process tree's. */
export interface CpuSnapshot {
  busy: number;
  total: number;
  ours: number;
}

/** Reads /proc; undefined where there is no /proc (not Linux). */
export function cpuSnapshot(): CpuSnapshot | undefined {
  try {
    const fields = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '')
      .trim()
      .split(/\s+/)
      .slice(1)
      .map(Number);
    const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] =
      fields;
    const busy = user + nice + system + irq + softirq + steal;
    const parents = new Map<number, number>();
    const ticks = new Map<number, number>();
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
        // Fields after the command name (which may hold spaces): state, ppid, …, utime, stime.
        const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        parents.set(Number(entry), Number(rest[1]));
        ticks.set(Number(entry), Number(rest[11]) + Number(rest[12]));
      } catch {
        // the process ended meanwhile
      }
    }
    let ours = 0;
    for (const [pid, cpu] of ticks) {
      for (let at: number | undefined = pid; at !== undefined && at > 1; at = parents.get(at)) {
        if (at === process.pid) {
          ours += cpu;
          break;
        }
      }
    }
    return { busy, total: busy + idle + iowait, ours };
  } catch {
    return undefined;
  }
}

/** Share of the machine's CPU (0–1) that processes outside this benchmark used between two snapshots. */
export function otherCpuShare(before: CpuSnapshot | undefined, after: CpuSnapshot | undefined) {
  if (!before || !after || after.total <= before.total) return undefined;
  const other = after.busy - before.busy - (after.ours - before.ours);
  return Math.max(0, other / (after.total - before.total));
}
