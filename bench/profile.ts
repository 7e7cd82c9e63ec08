// Summarises a V8 .cpuprofile (from node --cpu-prof): self time by function and by module.
// Also runnable alone: node bench/profile.ts <file.cpuprofile> [skip-ms]
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface CpuProfile {
  nodes: Array<{ id: number; callFrame: CallFrame; children?: number[] }>;
  samples: number[];
  /** µs since the previous sample (the first: since startTime). */
  timeDeltas: number[];
}

export interface ProfileEntry {
  name: string;
  selfMs: number;
  /** Share of the busy (non-idle) time, in percent. */
  pct: number;
  /** For functions: the gateway's own (src/) frame that most often led to it. */
  via?: string;
}

export interface ProfileSummary {
  /** Time covered by the samples kept, and the share of it the process was idle. */
  totalMs: number;
  idlePct: number;
  functions: ProfileEntry[];
  modules: ProfileEntry[];
}

const ROOT = pathToFileURL(`${process.cwd()}/`).href;

/** Aggregates self time, ignoring samples taken in the first `skipMs` (start-up). */
export function summarise(path: string, skipMs = 0, top = 15): ProfileSummary {
  const profile = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
  const frames = new Map(profile.nodes.map((n) => [n.id, n.callFrame]));
  const parents = new Map<number, number>();
  for (const node of profile.nodes)
    for (const child of node.children ?? []) parents.set(child, node.id);
  const byFunction = new Map<string, number>();
  const vias = new Map<string, Map<string, number>>();
  const byModule = new Map<string, number>();
  let elapsed = 0;
  let total = 0;
  let idle = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    elapsed += profile.timeDeltas[i] ?? 0;
    if (elapsed < skipMs * 1000) continue;
    // A sample stands for the time until the next one.
    const us = profile.timeDeltas[i + 1] ?? 0;
    const frame = frames.get(profile.samples[i] ?? -1);
    if (!frame) continue;
    total += us;
    if (frame.functionName === '(idle)') {
      idle += us;
      continue;
    }
    const fn = label(frame);
    byFunction.set(fn, (byFunction.get(fn) ?? 0) + us);
    const via = ownCaller(profile.samples[i] ?? -1, frames, parents);
    if (via !== undefined && via !== fn) {
      const counts = vias.get(fn) ?? new Map<string, number>();
      counts.set(via, (counts.get(via) ?? 0) + us);
      vias.set(fn, counts);
    }
    const module = moduleOf(frame.url, frame.functionName);
    byModule.set(module, (byModule.get(module) ?? 0) + us);
  }
  const busy = total - idle;
  const entries = (map: Map<string, number>, withVia: boolean): ProfileEntry[] =>
    [...map]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => {
        const via = withVia
          ? [...(vias.get(name) ?? [])].sort((a, b) => b[1] - a[1])[0]
          : undefined;
        return {
          name,
          selfMs: us / 1000,
          pct: busy > 0 ? (100 * us) / busy : 0,
          ...(via ? { via: via[0] } : {}),
        };
      });
  return {
    totalMs: total / 1000,
    idlePct: total > 0 ? (100 * idle) / total : 0,
    functions: entries(byFunction, true),
    modules: entries(byModule, false),
  };
}

function label(frame: CallFrame): string {
  const where = shortUrl(frame.url);
  return `${frame.functionName || '(anonymous)'}${where ? ` ${where}:${frame.lineNumber + 1}` : ''}`;
}

/** The nearest frame up the stack that is the gateway's own code (src/). */
function ownCaller(
  id: number,
  frames: Map<number, CallFrame>,
  parents: Map<number, number>,
): string | undefined {
  for (let at: number | undefined = id; at !== undefined; at = parents.get(at)) {
    const frame = frames.get(at);
    if (frame && shortUrl(frame.url).startsWith('src/')) return label(frame);
  }
  return undefined;
}

function shortUrl(url: string): string {
  if (url === '') return '';
  const local = url.startsWith(ROOT) ? url.slice(ROOT.length) : url;
  return local.replace(/^node_modules\//, '');
}

/** An npm package, a src/ folder, Node's own JavaScript, or V8 (native code, GC). */
function moduleOf(url: string, functionName: string): string {
  if (url === '') return functionName.startsWith('(') ? functionName : '(native / V8 builtins)';
  if (url.startsWith('node:')) return 'node: (Node.js internals)';
  const local = url.startsWith(ROOT) ? url.slice(ROOT.length) : url;
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(local);
  if (pkg) return pkg[1] ?? local;
  const dir = /^((?:src|dev|bench)(?:\/[^/]+(?=\/))?)/.exec(local);
  return dir?.[1] ?? local;
}

if (import.meta.main) {
  const [file, skip] = process.argv.slice(2);
  if (!file) throw new Error('usage: node bench/profile.ts <file.cpuprofile> [skip-ms]');
  console.log(JSON.stringify(summarise(file, Number(skip ?? 0)), null, 2));
}
