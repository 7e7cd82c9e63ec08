// Targets, the console table, and docs/benchmarks.md, all from one results object.
import { existsSync, readFileSync } from 'node:fs';
import type { ProfileSummary } from './profile.ts';
import {
  type ConcurrencyResult,
  type LoadResult,
  type MergeResult,
  NOISY,
  type Settings,
  type TargetResult,
} from './scenarios.ts';

export interface Results {
  date: string;
  command: string;
  /** The commit measured, and files under src/ and dev/ changed from it. */
  revision: { commit: string; changed: string[] };
  smoke: boolean;
  machine: { cpus: number; cpuModel: string; node: string; memoryGiB: number; os: string };
  settings: Settings & { gateway: Record<string, string>; nginxWorkers: number };
  hit?: LoadResult;
  miss?: LoadResult;
  latency?: LoadResult;
  concurrency?: ConcurrencyResult;
  merge?: MergeResult;
  targets: TargetCheck[];
  profiles: { hit?: ProfileSummary; miss?: ProfileSummary };
}

export interface TargetCheck {
  scenario: 'hit' | 'miss' | 'latency' | 'concurrency' | 'merge';
  name: string;
  goal: string;
  measured: string;
  met: boolean;
}

const MB = 1e6;
const find = (r: LoadResult | undefined, name: string): TargetResult | undefined =>
  r?.targets.find((t) => t.name === name);
const int = (n: number) => Math.round(n).toLocaleString('en-US');
const ms = (n: number) => (Number.isFinite(n) ? n.toFixed(3) : 'n/a');
const signedMs = (n: number) => `${n >= 0 ? '+' : ''}${n.toFixed(3)}`;
const pct = (ratio: number) =>
  `${ratio >= 1 ? '+' : '−'}${Math.abs((ratio - 1) * 100).toFixed(0)}%`;

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

export function checkTargets(r: Omit<Results, 'targets'>): TargetCheck[] {
  const checks: TargetCheck[] = [];
  const ratio = (result: LoadResult | undefined, ours: string, peer: string) => {
    const a = find(result, ours);
    const b = find(result, peer);
    return a && b
      ? { a: a.median.rps, b: b.median.rps, ratio: a.median.rps / b.median.rps }
      : undefined;
  };
  const hit = ratio(r.hit, 'gateway', 'bare Fastify');
  if (hit) {
    checks.push({
      scenario: 'hit',
      name: 'hit throughput vs bare Fastify parse floor',
      goal: '≥ 1.0×',
      measured: `${hit.ratio.toFixed(2)}× (${int(hit.a)} vs ${int(hit.b)} req/s, ${pct(hit.ratio)})`,
      met: hit.ratio >= 1.0,
    });
  }
  const miss = ratio(r.miss, 'gateway', '@fastify/http-proxy');
  if (miss) {
    checks.push({
      scenario: 'miss',
      name: 'miss throughput vs @fastify/http-proxy',
      goal: '≥ 0.8×',
      measured: `${miss.ratio.toFixed(2)}× (${int(miss.a)} vs ${int(miss.b)} req/s; ${(miss.ratio / 0.8).toFixed(2)}× the goal)`,
      met: miss.ratio >= 0.8,
    });
  }
  const added = addedLatency(r.latency, 'gateway');
  if (added) {
    checks.push({
      scenario: 'latency',
      name: 'added latency p50 at 1 connection',
      goal: '≤ 0.5 ms',
      measured: `${signedMs(added.p50)} ms (${signedMs(added.p50 - 0.5)} ms vs goal)`,
      met: added.p50 <= 0.5,
    });
    checks.push({
      scenario: 'latency',
      name: 'added latency p99 at 1 connection',
      goal: '≤ 2 ms',
      measured: `${signedMs(added.p99)} ms (${signedMs(added.p99 - 2)} ms vs goal)`,
      met: added.p99 <= 2,
    });
  }
  const c = r.concurrency;
  if (c) {
    checks.push({
      scenario: 'concurrency',
      name: `${int(c.requests)} in flight: all succeed`,
      goal: `${int(c.requests)} × 200`,
      measured: `${int(c.ok)} × 200${c.ok < c.requests ? ` (${JSON.stringify(c.statuses)})` : ''}`,
      met: c.ok === c.requests,
    });
    const peak = Math.max(c.hwmBytes, c.peakRssBytes);
    checks.push({
      scenario: 'concurrency',
      name: `${int(c.requests)} in flight: gateway peak RSS`,
      goal: '≤ 400 MB',
      measured: `${(peak / MB).toFixed(0)} MB (${((100 * peak) / (400 * MB)).toFixed(0)}% of the goal)`,
      met: peak <= 400 * MB,
    });
  }
  if (r.merge) {
    checks.push({
      scenario: 'merge',
      name: `${r.merge.requests} identical concurrent requests`,
      goal: '1 upstream call',
      measured: `${r.merge.upstreamCalls} upstream call(s)`,
      met: r.merge.upstreamCalls === 1,
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

const heapNote = (m: NodeJS.MemoryUsage | undefined) =>
  m
    ? ` (near the peak: V8 heap ${(m.heapUsed / MB).toFixed(0)} MB used of ${(m.heapTotal / MB).toFixed(0)} MB, array buffers ${(m.arrayBuffers / MB).toFixed(0)} MB)`
    : '';

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
  const out = [
    ...loadRows(`hit (${s.connections} conn)`, r.hit, false),
    ...loadRows(`miss (${s.connections} conn)`, r.miss, false),
    ...loadRows('miss (1 conn)', r.latency, true),
  ];
  const c = r.concurrency;
  if (c) {
    out.push({
      scenario: `concurrency (${int(c.requests)} in flight)`,
      server: 'gateway',
      rps: '—',
      p50: '—',
      p99: '—',
      note: `${int(c.ok)}/${int(c.requests)} ok; ${c.inFlightAtUpstream} at the upstream at once, the last arriving ${(c.lastUpstreamArrivalMs / 1000).toFixed(2)} s after the burst began; answers ${(c.firstAnswerMs / 1000).toFixed(2)}–${(c.lastAnswerMs / 1000).toFixed(2)} s; RSS ${(c.rssBeforeBytes / MB).toFixed(0)} MB idle → peak ${(Math.max(c.hwmBytes, c.peakRssBytes) / MB).toFixed(0)} MB${heapNote(c.memoryAtPeak)}`,
    });
  }
  if (r.merge) {
    out.push({
      scenario: `merge (${r.merge.requests} identical)`,
      server: 'gateway',
      rps: '—',
      p50: '—',
      p99: '—',
      note: `${r.merge.upstreamCalls} upstream call(s); cache-status ${Object.entries(
        r.merge.cacheStatuses,
      )
        .map(([k, v]) => `${v} × "${k}"`)
        .join(', ')}`,
    });
  }
  return out;
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

/** How the gateway's memory grew with the requests in flight, when the RSS target was missed. */
function memoryNote(r: Results): string {
  const c = r.concurrency;
  const missed = r.targets.some(
    (t) => t.scenario === 'concurrency' && t.name.includes('RSS') && !t.met,
  );
  if (!c || !missed) return '';
  const peak = Math.max(c.hwmBytes, c.peakRssBytes);
  const perRequest = (peak - c.rssBeforeBytes) / c.requests;
  const m = c.memoryAtPeak;
  return `Memory, ${int(c.requests)} in flight (not a CPU question, so no CPU profile): RSS grew by ${((peak - c.rssBeforeBytes) / MB).toFixed(0)} MB,
about ${(perRequest / 1000).toFixed(0)} KB per request in flight for ~${(c.bodyBytes / 1000).toFixed(0)} KB bodies (${(perRequest / c.bodyBytes).toFixed(1)}× the body).${
    m
      ? ` Near the peak the V8 heap held ${(m.heapUsed / MB).toFixed(0)} MB (of ${(m.heapTotal / MB).toFixed(0)} MB reserved) and array buffers ${(m.arrayBuffers / MB).toFixed(0)} MB.`
      : ''
  }

`;
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
    ...[r.hit, r.miss, r.latency].flatMap((l) =>
      (l?.targets ?? []).flatMap((t) => t.runs.map((run) => run.otherCpu ?? 0)),
    ),
  );
  const quiet =
    noise > NOISY
      ? `- **Disturbed:** processes outside the benchmark used up to ${(noise * 100).toFixed(0)}% of the machine's CPU during a run (see the notes); numbers from a quiet machine will differ`
      : `- Quiet machine: processes outside the benchmark used at most ${(noise * 100).toFixed(0)}% of the CPU during any run`;
  const gw = Object.entries(s.gateway)
    .filter(([name]) => name !== 'LOG_LEVEL')
    .map(([k, v]) => `\`${k}=${v}\``)
    .join(', ');
  const logs = (
    [
      ['hit', r.hit?.gatewayLog],
      ['miss', r.latency?.gatewayLog],
    ] as const
  ).flatMap(([label, l]) =>
    l ? [`${label}: ${int(l.lines)} completion lines for ${int(l.sent)} requests sent`] : [],
  );
  const linesShort = [r.hit?.gatewayLog, r.latency?.gatewayLog].some((l) => l && l.lines < l.sent)
    ? ' Fewer lines than requests: a request that the load generator aborts at the end of a run, while the gateway still waits for the upstream, writes no completion line.'
    : '';
  return `# Benchmarks

Generated by \`npm run bench\` (\`bench/run.ts\`); do not edit by hand, run it again. Raw numbers of
every run: \`bench/results.json\`. The targets are checked by the bench and reported here; the test
suite never asserts them.

## Last run

- Date: ${r.date}
- Command: \`${r.command}\`
- Code: commit ${r.revision.commit}${r.revision.changed.length > 0 ? `, with uncommitted changes to ${r.revision.changed.map((f) => `\`${f}\``).join(', ')}` : ''}
- Machine: ${m.cpus} cores (${m.cpuModel}), ${m.memoryGiB.toFixed(1)} GiB memory, ${m.os}, Node.js ${m.node}
- Runs: ${s.duration} s each, ${s.rounds} rounds taking turns A B A B (medians reported), ${s.warmup} s warm-up per server first, autocannon with ${s.connections} connections unless noted
${quiet}

## Results

${table.join('\n')}

## Targets

${targets.join('\n')}

## How it is measured

- Every server runs in its own process: the fake upstream (\`dev/fake-upstream.ts\`), the gateway
  (\`buildApp\` from \`src/app.ts\`), and each peer. The load generator (autocannon, or undici for the
  bursts) runs in the bench's own process. All listen on 127.0.0.1. With ${m.cpus} cores, the load
  generator, the server and (for misses) the fake upstream share them; every peer meets the same.
- Gateway: \`LOG_LEVEL=info\` (the default: one completion log line per request is part of the
  product), written to a file as stdout (${logs.join('; ') || 'not counted'}; the checks before the
  runs add a few).${linesShort} One client, whose rate limit never binds. ${gw}: the upstream gate's
  defaults (64 in flight, 50 calls/s per token) protect the real upstream and would otherwise be
  what is measured. \`NODE_ENV=production\`, as in the Dockerfile.
- Latency percentiles come from every response's own timing (autocannon's histogram has 1 ms
  resolution), over 2xx responses only.
- **hit**: one real ${int(r.hit?.bodyBytes ?? 0)}-byte JSON body (a ~100 KB noise PNG in Base64), the
  same bytes every time, answered from a warm cache. Peer: bare Fastify, default JSON parser, answering a fixed small JSON
  (the floor for any Node gateway that reads the body). Fastify's default of no logger.
- **miss**: \`CACHE_TTL_SECONDS=0\`, upstream latency 0, ~${int(r.latency?.bodyBytes ?? 0)}-byte bodies
  whose question carries a unique id per request (autocannon \`idReplacement\`), so every request
  reaches the upstream (no cache, no merging). Peers: \`@fastify/http-proxy\` (defaults, no logger,
  body streamed unparsed) and nginx \`proxy_pass\` (\`worker_processes ${s.nginxWorkers}\`, \`access_log off\`,
  HTTP/1.1 keep-alive to the upstream). They pass the caller's authorization through, so they are
  called with the upstream token. The fake upstream's record of calls is reset before every run.
  At 1 connection the added latency is the server's median p50/p99 minus calling the fake upstream
  directly with the same bodies.
- **concurrency**: ${int(r.concurrency?.requests ?? 0)} requests sent at once with undici (one connection each),
  unique ~${int(r.concurrency?.bodyBytes ?? 0)}-byte bodies, upstream latency ${(r.concurrency?.latencyMs ?? 0) / 1000} s, through a
  freshly started gateway. Peak RSS is the gateway process's VmHWM (and VmRSS polled every 100 ms).
- **merge**: ${r.merge?.requests ?? 0} identical requests at once, upstream latency ${(r.merge?.latencyMs ?? 0) / 1000} s; upstream calls
  counted by the fake upstream (\`GET /__fake/calls\`) before and after.

## Profile notes

${memoryNote(r)}${
  r.profiles.hit || r.profiles.miss
    ? `CPU profiles of the gateway process (\`node --cpu-prof\`) under ${s.connections} connections for ${s.profileSeconds} s,
taken in the same run after the measurements; start-up samples are left out. Self time is time
spent in the function itself, not in what it calls; percentages are of the process's busy time.

${[...profileTable('hit (cache on, ~100 KB image)', r.profiles.hit), ...profileTable('miss (cache off, unique ~2 KB bodies)', r.profiles.miss)].join('\n')}`
    : 'Every target was met, so no profile was taken.\n'
}${analysis()}`;
}

/** The hand-written explanation of missed targets (bench/analysis.md), when there is one. */
function analysis(): string {
  const path = new URL('./analysis.md', import.meta.url);
  return existsSync(path) ? `\n${readFileSync(path, 'utf8')}` : '';
}
