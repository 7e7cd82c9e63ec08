// Targets, the console report, and docs/benchmarks.md, all from one results object.
import { existsSync, readFileSync } from 'node:fs';
import type { DerivedLimits } from '../src/config.ts';
import type { BurstResult, MergeResult, SteadyResult } from './capacity.ts';
import type { NoisyResult } from './fairness.ts';
import {
  int,
  kb,
  MB,
  mb,
  ms,
  peakOf,
  perRequestGoal,
  RSS_GOAL_2000,
  seconds,
  statusList,
} from './format.ts';
import type { IdleResult } from './idle.ts';
import type { LeavingResult } from './leaving.ts';
import type { BytesRun, HeldMemory } from './memory.ts';
import type { ProfileSummary } from './profile.ts';
import { howMeasured, sections } from './report-sections.ts';
import { type LoadResult, NOISY, type TargetResult } from './scenarios.ts';
import type { Settings } from './settings.ts';

export interface Results {
  date: string;
  command: string;
  /** The commit measured, and files under src/ and dev/ changed from it. */
  revision: { commit: string; changed: string[] };
  smoke: boolean;
  machine: { cpus: number; cpuModel: string; node: string; memoryGiB: number; os: string };
  settings: Settings & {
    gateway: Record<string, string>;
    scenarioEnv: Record<string, Record<string, string>>;
    nginxWorkers: number;
  };
  /** The limits the gateway derives from its default settings on this machine. */
  defaults: DerivedLimits & { machineMemoryBytes: number };
  /** One result per body size. */
  hit?: LoadResult[];
  miss?: LoadResult;
  latency?: LoadResult;
  /** The bench's gateway server (sources), then the compiled entry point. */
  burst?: BurstResult[];
  merge?: MergeResult;
  steady?: SteadyResult;
  memory?: HeldMemory[];
  bytes?: BytesRun[];
  leaving?: LeavingResult;
  noisy?: NoisyResult;
  idle?: IdleResult;
  targets: TargetCheck[];
  profiles: { hit?: ProfileSummary; miss?: ProfileSummary };
  /** The body size the hit profile was taken with (the lowest ratio to the floor). */
  profileHitBytes?: number;
}

export type ScenarioName =
  | 'hit'
  | 'miss'
  | 'latency'
  | 'burst'
  | 'merge'
  | 'steady'
  | 'memory'
  | 'bytes'
  | 'noisy'
  | 'idle';

export interface TargetCheck {
  scenario: ScenarioName;
  name: string;
  goal: string;
  measured: string;
  met: boolean;
}

export const find = (r: LoadResult | undefined, name: string): TargetResult | undefined =>
  r?.targets.find((t) => t.name === name);
const signedMs = (n: number) => `${n >= 0 ? '+' : ''}${n.toFixed(3)}`;
const pct = (ratio: number) =>
  `${ratio >= 1 ? '+' : '−'}${Math.abs((ratio - 1) * 100).toFixed(0)}%`;
export const NOISY_GOAL = 1.2;

/** Added latency through a server: its median p50/p99 minus the direct upstream call's. */
export function addedLatency(latency: LoadResult | undefined, name: string) {
  const direct = find(latency, 'fake upstream (direct)');
  const through = find(latency, name);
  if (!direct || !through) return undefined;
  return {
    p50: through.median.p50 - direct.median.p50,
    p99: through.median.p99 - direct.median.p99,
  };
}

const ratioOf = (result: LoadResult | undefined, ours: string, peer: string) => {
  const a = find(result, ours);
  const b = find(result, peer);
  return a && b
    ? { a: a.median.rps, b: b.median.rps, ratio: a.median.rps / b.median.rps }
    : undefined;
};

export function checkTargets(r: Omit<Results, 'targets'>): TargetCheck[] {
  const checks: TargetCheck[] = [];
  const add = (check: TargetCheck) => checks.push(check);
  for (const size of r.hit ?? []) {
    const hit = ratioOf(size, 'gateway', 'bare Fastify');
    if (!hit) continue;
    add({
      scenario: 'hit',
      name: `hit at ${kb(size.bodyBytes)} vs bare Fastify (default JSON parser)`,
      goal: '≥ 1.0×',
      measured: `${hit.ratio.toFixed(2)}× (${int(hit.a)} vs ${int(hit.b)} req/s, ${pct(hit.ratio)})`,
      met: hit.ratio >= 1.0,
    });
  }
  const miss = ratioOf(r.miss, 'gateway', '@fastify/http-proxy');
  if (miss) {
    add({
      scenario: 'miss',
      name: 'miss throughput vs @fastify/http-proxy',
      goal: '≥ 0.8×',
      measured: `${miss.ratio.toFixed(2)}× (${int(miss.a)} vs ${int(miss.b)} req/s; ${(miss.ratio / 0.8).toFixed(2)}× the goal)`,
      met: miss.ratio >= 0.8,
    });
  }
  const added = addedLatency(r.latency, 'gateway');
  if (added) {
    add({
      scenario: 'latency',
      name: 'added latency p50 at 1 connection',
      goal: '≤ 0.5 ms',
      measured: `${signedMs(added.p50)} ms (${signedMs(added.p50 - 0.5)} ms vs goal)`,
      met: added.p50 <= 0.5,
    });
    add({
      scenario: 'latency',
      name: 'added latency p99 at 1 connection',
      goal: '≤ 2 ms',
      measured: `${signedMs(added.p99)} ms (${signedMs(added.p99 - 2)} ms vs goal)`,
      met: added.p99 <= 2,
    });
  }
  for (const b of r.burst ?? []) {
    add({
      scenario: 'burst',
      name: `${int(b.requests)} distinct requests at once, ${b.latencyMs / 1000} s upstream, defaults (${b.runAs})`,
      goal: `${int(b.requests)} × 200`,
      measured: `${statusList(b.statuses)}; last answer at ${seconds(b.lastAnswerMs)}`,
      met: b.ok === b.requests,
    });
    add({
      scenario: 'burst',
      name: `${int(b.requests)} in flight (~${kb(b.bodyBytes)}, most queued at the gate): peak RSS (${b.runAs})`,
      goal: `≤ ${mb(RSS_GOAL_2000)}`,
      measured: `${mb(peakOf(b))} (${((100 * peakOf(b)) / RSS_GOAL_2000).toFixed(0)}% of the goal; idle ${mb(b.rssBeforeBytes)})`,
      met: peakOf(b) <= RSS_GOAL_2000,
    });
  }
  if (r.merge) {
    add({
      scenario: 'merge',
      name: `${r.merge.requests} identical concurrent requests`,
      goal: '1 upstream call',
      measured: `${r.merge.upstreamCalls} upstream call(s)`,
      met: r.merge.upstreamCalls === 1,
    });
  }
  const st = r.steady;
  if (st) {
    add({
      scenario: 'steady',
      name: `one replica at the defaults, ${st.latencyMs / 1000} s upstream: calls started per second`,
      goal: `95–102% of ${st.ratePerSecond}/s`,
      measured: `${st.callsPerSecond.toFixed(1)}/s (${((100 * st.callsPerSecond) / st.ratePerSecond).toFixed(0)}%), each second ${st.perSecond.min}–${st.perSecond.max}`,
      // Per whole second the count jitters with network and event-loop delays: the mean decides.
      met:
        st.callsPerSecond >= 0.95 * st.ratePerSecond &&
        st.callsPerSecond <= 1.02 * st.ratePerSecond,
    });
  }
  for (const m of (r.memory ?? []).filter((m) => m.server === 'gateway')) {
    const goal = perRequestGoal(m.bodyBytes);
    // The goal holds for every measure: RSS for one more request and since idle, and the live
    // bytes (V8 heap and memory outside it), which RSS can hide when freed pages are reused.
    const live = m.perRequest.heapUsed + m.perRequest.external;
    const worst = Math.max(m.perRequest.rss, m.perRequestFromIdle.rss, live);
    add({
      scenario: 'memory',
      name: `memory per request in flight at ${kb(m.bodyBytes)} (${int(m.held)} held at the upstream)`,
      goal: `≤ 2 × body + 32 KB = ${kb(goal)}`,
      measured: `RSS ${kb(m.perRequest.rss)} per request, ${kb(m.perRequestFromIdle.rss)} from idle; live ${kb(live)} (the largest: ${(worst / m.bodyBytes).toFixed(2)}× the body, ${((100 * worst) / goal).toFixed(0)}% of the goal)`,
      met: worst <= goal,
    });
    if (m.bodyBytes < 50_000) {
      add({
        scenario: 'memory',
        name: `${int(m.held)} held at the upstream (~${kb(m.bodyBytes)}): peak RSS`,
        goal: `≤ ${mb(RSS_GOAL_2000)}`,
        measured: `${mb(m.hwmBytes)} (${((100 * m.hwmBytes) / RSS_GOAL_2000).toFixed(0)}% of the goal)`,
        met: m.hwmBytes <= RSS_GOAL_2000,
      });
    }
  }
  for (const run of r.bytes ?? []) {
    const refused = run.refusals.count;
    const allAnswered = Object.keys(run.statuses).every((s) => ['200', '429', '503'].includes(s));
    const limit = r.settings.bytes.containerBytes;
    const container = Object.keys(run.env).length > 0;
    add({
      scenario: 'bytes',
      name: `${run.requests} × ${mb(run.bodyBytes)} at once (${run.label}, budget ${mb(run.budget.bytes)})`,
      goal: container
        ? `200 or 429/503 with retry-after; peak RSS < ${mb(limit)}`
        : '200 or 429/503 with retry-after; no crash',
      measured: `${statusList(run.statuses)}; ${refused > 0 ? `${run.refusals.withRetryAfter}/${refused} refusals with retry-after, the last at ${seconds(run.refusals.lastMs)}; ` : ''}peak RSS ${mb(peakOf(run))}`,
      met:
        allAnswered &&
        run.refusals.withRetryAfter === refused &&
        (!container || peakOf(run) < limit),
    });
  }
  const l = r.leaving;
  const last = l?.rounds.at(-1);
  if (l && last) {
    const held = last.upstreamRunning * l.bodyBytes;
    add({
      scenario: 'bytes',
      name: `clients that leave: ${l.rounds.length} rounds of ${l.perRound} × ${mb(l.bodyBytes)}, budget ${mb(l.budget.bytes)}`,
      goal: 'bodies held ≤ the budget',
      measured: `${last.upstreamRunning} calls still hold ${mb(held)} of bodies while the budget counts ${mb(last.countedAfterLeaving)}; RSS ${mb(last.rssBytes)}`,
      met: held <= l.budget.bytes,
    });
  }
  if (l) {
    const q = l.queued;
    add({
      scenario: 'bytes',
      name: `clients that leave while their calls wait at the gate (${int(q.requests)} small requests)`,
      goal: 'no call sent for a client that left',
      measured: `${int(q.queuedWhenLeft)} queued when they left; ${int(q.callsWhileLeaving ?? 0)} started while the gateway read the disconnects; ${int(q.callsAfter)} reached the upstream in the ${q.seconds} s after`,
      met: q.callsAfter === 0,
    });
  }
  const n = r.noisy;
  if (n) {
    const ratio = n.flooded.p99 / n.alone.p99;
    add({
      scenario: 'noisy',
      name: `noisy neighbour: steady client's p99 under a ${n.floodRate}/s flood vs alone`,
      goal: `≤ ${NOISY_GOAL}×, gate saturated`,
      measured: `${ratio.toFixed(2)}× (${n.flooded.p99.toFixed(0)} vs ${n.alone.p99.toFixed(0)} ms); gate queue ${int(n.gate.queued.min)}–${int(n.gate.queued.max)} while measured`,
      met: ratio <= NOISY_GOAL && n.gate.queued.min > 0,
    });
  }
  const idle = r.idle;
  if (idle && idle.compiled.length > 0) {
    const mean = (v: number[]) => v.reduce((a, x) => a + x, 0) / v.length;
    const [ts, js] = [mean(idle.sources), mean(idle.compiled)];
    add({
      scenario: 'idle',
      name: 'idle RSS: compiled JavaScript (the image) vs the TypeScript sources',
      goal: 'the image ships the leaner',
      measured: `${(js / MB).toFixed(1)} vs ${(ts / MB).toFixed(1)} MB (${pct(js / ts)})`,
      met: js < ts,
    });
  }
  return checks;
}

interface Row {
  scenario: string;
  server: string;
  rps: string;
  p50: string;
  p99: string;
  note: string;
}

function loadRows(label: string, result: LoadResult | undefined, withAdded: boolean): Row[] {
  if (!result) return [];
  const rows = result.targets.map((t): Row => {
    const added = withAdded ? addedLatency(result, t.name) : undefined;
    const problems = t.runs.reduce((n, run) => n + run.non2xx + run.errors + run.timeouts, 0);
    const rps = t.runs.map((run) => run.rps);
    const other = Math.max(0, ...t.runs.map((run) => run.otherCpu ?? 0));
    const notes = [
      rps.length > 1 ? `rounds ${int(Math.min(...rps))}–${int(Math.max(...rps))} req/s` : '',
      other > NOISY ? `other processes took up to ${(other * 100).toFixed(0)}% of the CPU` : '',
      added && t.name !== 'fake upstream (direct)'
        ? `added p50 ${signedMs(added.p50)} ms, p99 ${signedMs(added.p99)} ms`
        : '',
      problems > 0 ? `${problems} non-2xx/errors` : '',
    ].filter(Boolean);
    return {
      scenario: label,
      server: t.name,
      rps: int(t.median.rps),
      p50: ms(t.median.p50),
      p99: ms(t.median.p99),
      note: notes.join('; '),
    };
  });
  for (const skipped of result.skipped) {
    rows.push({
      scenario: label,
      server: skipped.split(':')[0] ?? '',
      rps: '—',
      p50: '—',
      p99: '—',
      note: `skipped: ${skipped}`,
    });
  }
  return rows;
}

function rows(r: Results): Row[] {
  const s = r.settings;
  return [
    ...(r.hit ?? []).flatMap((size) =>
      loadRows(`hit ${kb(size.bodyBytes)} (${s.connections} conn)`, size, false),
    ),
    ...loadRows(`miss (${s.connections} conn)`, r.miss, false),
    ...loadRows('miss (1 conn)', r.latency, true),
  ];
}

/** The plain-text tables printed at the end of a run. */
export function consoleReport(r: Results): string {
  const header: Row = {
    scenario: 'scenario',
    server: 'server',
    rps: 'req/s',
    p50: 'p50 ms',
    p99: 'p99 ms',
    note: 'notes',
  };
  const all = [header, ...rows(r)];
  const width = (key: keyof Row) => Math.max(...all.map((row) => row[key].length));
  const keys: Array<keyof Row> = ['scenario', 'server', 'rps', 'p50', 'p99', 'note'];
  const line = (row: Row) =>
    keys
      .map((k) =>
        k === 'rps' || k === 'p50' || k === 'p99'
          ? row[k].padStart(width(k))
          : row[k].padEnd(width(k)),
      )
      .join('  ')
      .trimEnd();
  const targets = r.targets.map(
    (t) => `  ${t.met ? 'met   ' : 'MISSED'}  ${t.name}: ${t.goal}, measured ${t.measured}`,
  );
  return [...all.map(line), '', 'Targets:', ...targets].join('\n');
}

function profileTable(title: string, summary: ProfileSummary | undefined): string[] {
  if (!summary) return [];
  const code = (text: string) => `\`${text.replaceAll('|', '\\|')}\``;
  const table = (entries: ProfileSummary['functions'], what: string, via: boolean) => [
    `| ${what} | self ms | % of busy |${via ? ' reached from (nearest src/ frame) |' : ''}`,
    `| --- | ---: | ---: |${via ? ' --- |' : ''}`,
    ...entries.map(
      (e) =>
        `| ${code(e.name)} | ${e.selfMs.toFixed(0)} | ${e.pct.toFixed(1)} |${via ? ` ${e.via ? code(e.via) : ''} |` : ''}`,
    ),
  ];
  return [
    `### ${title}`,
    '',
    `${(summary.totalMs / 1000).toFixed(1)} s sampled under load, ${summary.idlePct.toFixed(0)}% of it idle.`,
    '',
    ...table(summary.functions, 'function (self time)', true),
    '',
    ...table(summary.modules.slice(0, 10), 'module', false),
    '',
  ];
}

/** docs/benchmarks.md. */
export function markdown(r: Results): string {
  const s = r.settings;
  const m = r.machine;
  const table = [
    '| scenario | server | req/s | p50 ms | p99 ms | notes |',
    '| --- | --- | ---: | ---: | ---: | --- |',
    ...rows(r).map(
      (row) =>
        `| ${row.scenario} | ${row.server} | ${row.rps} | ${row.p50} | ${row.p99} | ${row.note} |`,
    ),
  ];
  const targets = [
    '| target | goal | measured | |',
    '| --- | --- | --- | --- |',
    ...r.targets.map(
      (t) => `| ${t.name} | ${t.goal} | ${t.measured} | ${t.met ? 'met' : '**missed**'} |`,
    ),
  ];
  const noise = Math.max(
    0,
    ...[...(r.hit ?? []), r.miss, r.latency].flatMap((l) =>
      (l?.targets ?? []).flatMap((t) => t.runs.map((run) => run.otherCpu ?? 0)),
    ),
  );
  const quiet =
    noise > NOISY
      ? `- **Disturbed:** processes outside the benchmark used up to ${(noise * 100).toFixed(0)}% of the machine's CPU during a throughput run (see the notes); numbers from a quiet machine will differ`
      : `- Quiet machine: processes outside the benchmark used at most ${(noise * 100).toFixed(0)}% of the CPU during any throughput run`;
  const profiles =
    r.profiles.hit || r.profiles.miss
      ? `CPU profiles of the gateway process (\`node --cpu-prof\`) under ${s.connections} connections for ${s.profileSeconds} s,
taken in the same run after the measurements; start-up samples are left out. Self time is time
spent in the function itself, not in what it calls; percentages are of the process's busy time.

${[
  ...profileTable(
    `hit (cache on, ~${kb(r.profileHitBytes ?? s.hitSizes.at(-1) ?? 0)} body)`,
    r.profiles.hit,
  ),
  ...profileTable('miss (cache off, unique ~2 KB bodies)', r.profiles.miss),
].join('\n')}`
      : 'No CPU-bound target (hit, miss, latency) was missed, so no CPU profile was taken.\n';
  return `# Benchmarks

Generated by \`npm run bench\` (\`bench/run.ts\`); do not edit by hand, run it again. Raw numbers of
every run: \`bench/results.json\`. The targets are checked by the bench and reported here; the test
suite never asserts them.

## Last run

- Date: ${r.date}
- Command: \`${r.command}\`
- Code: commit ${r.revision.commit}${r.revision.changed.length > 0 ? `, with uncommitted changes to ${r.revision.changed.map((f) => `\`${f}\``).join(', ')}` : ''}
- Machine: ${m.cpus} cores (${m.cpuModel}), ${m.memoryGiB.toFixed(1)} GiB memory, ${m.os}, Node.js ${m.node}
- Throughput runs: ${s.duration} s each (hit: ${s.hitDuration} s), ${s.rounds} rounds taking turns A B A B (medians reported), ${s.warmup} s warm-up per server first, autocannon with ${s.connections} connections unless noted
${quiet}

## Targets

${targets.join('\n')}

## Throughput and latency

${table.join('\n')}

${sections(r)}
## How it is measured

${howMeasured(r)}

## Profile notes

${profiles}${analysis()}`;
}

/** The hand-written explanation of the results (bench/analysis.md), when there is one. */
function analysis(): string {
  const path = new URL('./analysis.md', import.meta.url);
  return existsSync(path) ? `\n${readFileSync(path, 'utf8')}` : '';
}
