// docs/benchmarks.md: one section per capacity, memory and fairness scenario, and how each is
// measured. Numbers only ever come from the results object.

import { int, kb, MB, mb, peakOf, perRequestGoal, seconds, statusList } from './format.ts';
import type { HeldMemory } from './memory.ts';
import type { Results } from './report.ts';
import { shippedNodeFlags } from './shipped.ts';

const gib = (bytes: number) => `${+(bytes / 2 ** 30).toFixed(2)} GiB`;

const heap = (m: NodeJS.MemoryUsage | undefined) =>
  m
    ? `V8 heap ${mb(m.heapUsed)} used of ${mb(m.heapTotal)}, array buffers ${mb(m.arrayBuffers)}`
    : 'not sampled';

function defaultsSection(r: Results): string {
  const d = r.defaults;
  return `### The defaults on this machine

Every gateway below runs at its default settings (\`bench/servers/gateway.ts\` passes a clean
environment), unless a scenario names a setting. What it derives from them here
(\`deriveLimits\` in \`src/config.ts\`; ${mb(d.machineMemoryBytes)} of memory):

| limit | derived from | value |
| --- | --- | ---: |
| calls started per second | \`UPSTREAM_RATE_PER_SECOND\` × tokens | ${int(d.upstreamRatePerSecond)} |
| calls in flight upstream, calls queued | rate × \`UPSTREAM_TIMEOUT_MS\` | ${int(d.upstreamMaxConcurrency)}, ${int(d.upstreamQueueMax)} |
| requests in flight per client | half of that | ${int(d.clientMaxInFlight)} |
| body bytes in flight (\`INFLIGHT_BYTES_MAX\`) | ⅛ of the memory | ${mb(d.inflightBytesMax)} |
| per client (\`CLIENT_INFLIGHT_BYTES_MAX\`) | half of that | ${mb(d.clientInflightBytesMax)} |
`;
}

function burstSection(r: Results): string {
  const runs = r.burst ?? [];
  const b = runs[0];
  if (!b) return '';
  const merge = r.merge
    ? `\nThen, on the first gateway, ${r.merge.requests} identical requests at once (upstream ${seconds(r.merge.latencyMs)}): ${r.merge.upstreamCalls} upstream call(s); cache-status ${Object.entries(
        r.merge.cacheStatuses,
      )
        .map(([k, v]) => `${v} × "${k}"`)
        .join(', ')}.\n`
    : '';
  const row = (label: string, value: (run: (typeof runs)[number]) => string) =>
    `| ${label} | ${runs.map(value).join(' | ')} |`;
  return `### Burst at the default settings

${int(b.requests)} distinct ~${kb(b.bodyBytes)} requests sent at once (one connection each) to a fresh
gateway at its defaults; the upstream answers each call after ${seconds(b.latencyMs)}. First the bench's
gateway server (\`buildApp\` from the sources, as in every other scenario), then the compiled entry point
as the image runs it (\`node dist/server.js\`, a clients file, nothing else set).

| | ${runs.map((run) => run.runAs).join(' | ')} |
| --- | ${runs.map(() => '---').join(' | ')} |
${row('answers', (run) => statusList(run.statuses))}
${row('first, last answer', (run) => `${seconds(run.firstAnswerMs)}, ${seconds(run.lastAnswerMs)}`)}
${row('calls at the upstream', (run) => `${int(run.upstream.calls)}, arriving ${seconds(run.upstream.firstArrivalMs)}–${seconds(run.upstream.lastArrivalMs)} (${run.upstream.startsPerSecond.toFixed(1)}/s on average, at most ${run.upstream.maxInOneSecond} within any one second)`)}
${row('gate (sampled every second)', (run) => `up to ${int(run.upstream.maxRunning)} running, ${int(run.upstream.maxQueued)} queued`)}
${row('gateway RSS idle → peak', (run) => `${mb(run.rssBeforeBytes)} → **${mb(peakOf(run))}**`)}
${row('near the peak', (run) => heap(run.memoryAtPeak))}
${merge}`;
}

function steadySection(r: Results): string {
  const st = r.steady;
  if (!st) return '';
  return `### Steady state: one replica keeps a token's rate busy

${int(st.workers)} senders (15% more than rate × latency), each sending its next distinct ~2 KB request as
soon as its last is answered, against an upstream answering after ${seconds(st.latencyMs)}; calls
counted where they arrive, at the fake upstream, in ${seconds(st.windowMs[0])}–${seconds(st.windowMs[1])} after the
load began.

| | |
| --- | --- |
| calls started | ${int(st.callsInWindow)} in ${seconds(st.windowMs[1] - st.windowMs[0])}: **${st.callsPerSecond.toFixed(1)} per second** (the gate's rate: ${st.ratePerSecond}) |
| per whole second | ${st.perSecond.min}–${st.perSecond.max} |
| gate during the window | ${int(st.running.min)}–${int(st.running.max)} calls running, ${int(st.queued.min)}–${int(st.queued.max)} queued |
| answers before the load stopped | ${statusList(st.statuses)} |
`;
}

function memoryRow(m: HeldMemory, gateway: HeldMemory | undefined): string {
  const per = m.perRequest;
  const vs =
    gateway && m !== gateway && per.rss > 0
      ? `gateway ${(gateway.perRequest.rss / per.rss).toFixed(2)}× this`
      : m.server === 'gateway'
        ? `goal ≤ ${kb(perRequestGoal(m.bodyBytes))}`
        : '';
  return `| ${kb(m.bodyBytes)} | ${m.server} | ${int(m.heldHalf)}, ${int(m.held)} (all after ${seconds(m.rampMs)}) | ${mb(m.idle.rss)} → ${mb(m.half.rss)} → ${mb(m.full.rss)} | **${kb(per.rss)}** (${(per.rss / m.bodyBytes).toFixed(2)}× body) | ${kb(m.perRequestFromIdle.rss)} | ${kb(per.heapUsed + per.external)} (heap ${kb(per.heapUsed)}, array buffers ${kb(per.arrayBuffers)}) | ${mb(m.hwmBytes)} | ${vs} |`;
}

function memorySection(r: Results): string {
  const all = r.memory;
  if (!all || all.length === 0) return '';
  const rowsOut = all.map((m) =>
    memoryRow(
      m,
      all.find((g) => g.server === 'gateway' && g.bodyBytes === m.bodyBytes),
    ),
  );
  return `### Memory per request in flight

Distinct requests held in flight at once by a fresh process (started with \`--expose-gc\`), after a
warm-up of 20 requests of the same size: the gateway at its defaults with every call at the
upstream (which answers after ${seconds(r.settings.memory.holdMs)}, longer than the measurement),
\`@fastify/http-proxy\` in front of the same upstream, and bare Fastify holding each parsed request
itself. Memory after two full garbage collections: idle, with the first half of the requests held,
and with all held (each ${seconds(r.settings.memory.settleMs ?? 1_000)} after the last was held). **Per request** is the difference between the
last two, divided by the requests added: what one more request in flight costs. *From idle* divides
all growth since idle by all requests held, so it also carries what a process grows by with its
first requests (connection pools, compiled code, heap reserved ahead). *Live* is the same
difference of \`heapUsed + external\` (external includes array buffers: body Buffers): the bytes
still referenced, which RSS can hide when the process reuses pages freed earlier.

| body | server | held (half, all) | RSS idle → half → all | RSS per request | RSS per request from idle | live per request (V8 heap + external) | peak RSS | |
| --- | --- | --- | --- | ---: | ---: | --- | ---: | --- |
${rowsOut.join('\n')}
`;
}

function bytesSection(r: Results): string {
  const runs = r.bytes;
  if (!runs || runs.length === 0) return '';
  const lines = runs.map(
    (run) =>
      `| ${run.label}${
        Object.keys(run.env).length > 0
          ? ` (${Object.entries(run.env)
              .map(([k, v]) => `\`${k}=${v}\``)
              .join(', ')})`
          : ''
      } | ${mb(run.budget.bytes)}, ${mb(run.budget.perClient)} | ${run.clients} | ${statusList(run.statuses)} | ${run.refusals.count > 0 ? `${run.refusals.withRetryAfter}/${run.refusals.count} with retry-after; half by ${seconds(run.refusals.medianMs)}, all by ${seconds(run.refusals.lastMs)}` : 'none'} | ${seconds(run.lastAnswerMs)} | ${mb(run.rssBeforeBytes)} → ${mb(peakOf(run))} | ${heap(run.memoryAtPeak)} |`,
  );
  const first = runs[0];
  return `### Bounded bytes in flight

${first ? `${first.requests} distinct ~${mb(first.bodyBytes)} bodies sent at once (the clients share them equally), upstream answering after ${seconds(first.latencyMs)}.` : ''}
At the defaults the budget is ⅛ of this machine's memory; the second run sets \`INFLIGHT_BYTES_MAX\`
to what the default derives inside a container with a ${gib(r.settings.bytes.containerBytes)} memory limit.

| run | budget, per client | clients | answers | refusals | last answer | gateway RSS idle → peak | near the peak |
| --- | --- | ---: | --- | --- | ---: | --- | --- |
${lines.join('\n')}
`;
}

function leavingSection(r: Results): string {
  const l = r.leaving;
  if (!l) return '';
  const rows = l.rounds.map(
    (round, i) =>
      `| ${i + 1} | ${int(round.reachedUpstream ?? l.perRound)}${Object.keys(round.statuses ?? {}).length > 0 ? `; ${statusList(round.statuses)}` : ''} | ${mb(round.countedWhileWaiting)} | ${mb(round.countedAfterLeaving)} | ${int(round.upstreamRunning)} (${mb(round.upstreamRunning * l.bodyBytes)} of bodies) | ${mb(round.rssBytes)} |`,
  );
  return `### Clients that leave

One client, ${Object.entries(l.env)
    .map(([k, v]) => `\`${k}=${v}\``)
    .join(', ')} (the container budget above, all of it
this client's). Each round sends ${l.perRound} distinct ~${mb(l.bodyBytes)} bodies at once; once each has either reached the
upstream (which answers after ${seconds(l.latencyMs)}) or been answered, the clients still waiting disconnect. Peak RSS ${mb(Math.max(l.hwmBytes, l.peakRssBytes))}.

| round | reached the upstream; answers | budget counts, clients waiting | budget counts, clients gone | upstream calls still running | gateway RSS |
| ---: | --- | ---: | ---: | --- | ---: |
${rows.join('\n')}

Then, on the same gateway, ${int(l.queued.requests)} distinct ~2 KB requests at once; 1.5 s after the first call reached
the upstream, with ${int(l.queued.queuedWhenLeft)} calls waiting at the gate, every client disconnects. While the gateway read the
disconnects, ${int(l.queued.callsWhileLeaving ?? 0)} calls started (the gate starts one every 1 s / rate); in the ${l.queued.seconds} s after its
queue was empty, **${int(l.queued.callsAfter)} calls still reached the upstream** for requests nobody was waiting for.
`;
}

function noisySection(r: Results): string {
  const n = r.noisy;
  if (!n) return '';
  const row = (label: string, c: typeof n.alone) =>
    `| ${label} | ${int(c.sent)} | ${statusList(c.statuses)} | ${c.p50.toFixed(0)} | **${c.p99.toFixed(0)}** | ${c.max.toFixed(0)} |`;
  return `### Noisy neighbour

One gateway at its defaults, two clients, upstream answering after ${seconds(n.latencyMs)}. The steady
client sends distinct requests at ${n.steadyRate}/s for ${n.seconds} s, first alone, then while the
other client floods distinct requests at ${n.floodRate}/s (${(n.floodRate / r.defaults.upstreamRatePerSecond).toFixed(0)}× the gate's rate; from a worker thread, started ${seconds(n.floodLeadMs)} earlier, once \`gateway_upstream_queued\` on the admin /metrics was above 0).

| steady client | sent | answers | p50 ms | p99 ms | max ms |
| --- | ---: | --- | ---: | ---: | ---: |
${row('alone', n.alone)}
${row(`under the flood`, n.flooded)}

While measured under the flood the gate had ${int(n.gate.running.min)}–${int(n.gate.running.max)} calls running and
${int(n.gate.queued.min)}–${int(n.gate.queued.max)} queued. The flood's answers: ${statusList(n.flood.statuses)} ("aborted": cut off when it stopped).
Once every client had gone (0.5 s after the flood stopped), ${int(n.afterClientsLeft.calls)} calls still reached the upstream
in ${n.afterClientsLeft.seconds} s: calls queued for requests whose clients had left.
`;
}

function idleSection(r: Results): string {
  const idle = r.idle;
  if (!idle) return '';
  const list = (values: number[]) =>
    values.length > 0
      ? `${values.map((v) => (v / MB).toFixed(1)).join(', ')} MB (mean ${(values.reduce((a, v) => a + v, 0) / values.length / MB).toFixed(1)})`
      : `skipped: ${idle.skipped}`;
  return `### Idle memory: TypeScript sources vs compiled JavaScript

The real entry point with the same environment (\`NODE_ENV=production\`, a clients file with one
client, no Redis, nothing inherited, no \`.env\`), VmRSS ${idle.settleSeconds} s after \`/healthz\` answered; the
two run side by side, ${idle.sources.length} time(s). Compiled with \`tsconfig.build.json\` into a directory
of the run (tsc exit status ${idle.buildStatus ?? 'n/a'}, ${seconds(idle.buildMs ?? 0)}).

| run as | idle RSS |
| --- | --- |
| \`node src/server.ts\` (sources, type stripping) | ${list(idle.sources)} |
| \`node dist/server.js\` (compiled, as in the image) | ${list(idle.compiled)} |
`;
}

/** The capacity, memory and fairness sections, in the order the bench runs them. */
export function sections(r: Results): string {
  const parts = [
    defaultsSection(r),
    burstSection(r),
    steadySection(r),
    memorySection(r),
    bytesSection(r),
    leavingSection(r),
    noisySection(r),
    idleSection(r),
  ].filter(Boolean);
  return `## Capacity, memory and fairness

${parts.join('\n')}`;
}

export function howMeasured(r: Results): string {
  const s = r.settings;
  const m = r.machine;
  const logs = (
    [
      ['hit', r.hit?.at(-1)?.gatewayLog],
      ['miss', r.latency?.gatewayLog],
    ] as const
  ).flatMap(([label, l]) =>
    l ? [`${label}: ${int(l.lines)} completion lines for ${int(l.sent)} requests sent`] : [],
  );
  const env = (which: string) =>
    Object.entries(s.scenarioEnv[which] ?? {})
      .map(([k, v]) => `\`${k}=${v}\``)
      .join(', ') || 'none';
  return `- Every server runs in its own process: the fake upstream (\`dev/fake-upstream.ts\`), the gateway
  (\`buildApp\` from \`src/app.ts\`, API and admin server on 127.0.0.1, port 0), and each peer. The load
  generators (autocannon; undici for bursts and loops; the noisy neighbour's flood in a worker
  thread) run in the bench's own process. With ${m.cpus} cores, the load generator, the server and the
  fake upstream share them; every peer meets the same.
- Gateway: the default of every setting. Its one client (two in the noisy neighbour, four in the
  byte-budget run) has its clients-file rate limit raised so that it never binds. Settings that
  differ per scenario: hit ${env('hit')}; miss ${env('miss')} (the gate's rate would otherwise
  be what is measured); the container byte-budget run \`INFLIGHT_BYTES_MAX\`. \`LOG_LEVEL=info\`
  (one completion line per request is part of the product), written to a file as stdout
  (${logs.join('; ') || 'not counted'}). \`NODE_ENV=production\`, and the Dockerfile's \`NODE_OPTIONS\`
  (${
    shippedNodeFlags()
      .map((f) => `\`${f}\``)
      .join(' ') || 'none'
  }) as Node flags of every gateway process, as in the image.
- Latency percentiles come from every response's own timing (autocannon's histogram has 1 ms
  resolution), over 2xx responses only.
- **hit**: one real JSON body per size (a noise PNG in Base64, sized to ${s.hitSizes.map((b) => `~${kb(b)}`).join(', ')}), the same bytes
  every time, answered from a warm cache. Peer: bare Fastify with its default JSON parser, answering a
  fixed small JSON (the floor for any Node gateway that reads the body). Fastify's default of no logger.
- **miss**: upstream latency 0, ~${int(r.latency?.bodyBytes ?? 0)}-byte bodies whose question carries a unique id per
  request (autocannon \`idReplacement\`), so every request reaches the upstream. Peers:
  \`@fastify/http-proxy\` (defaults, no logger, body streamed unparsed) and nginx \`proxy_pass\`
  (\`worker_processes ${s.nginxWorkers}\`, \`access_log off\`, keep-alive to the upstream) when installed. They pass the
  caller's authorization through, so they are called with the upstream token. The fake's record of
  calls is reset before every run. At 1 connection the added latency is the server's median p50/p99
  minus calling the fake upstream directly with the same bodies.
- **Memory**: VmRSS and VmHWM from \`/proc/<pid>/status\` (RSS polled every 100 ms during bursts);
  heap figures are the process's own \`process.memoryUsage()\`, asked over IPC (after \`gc()\` where
  the scenario says so). MB here is 1,000,000 bytes, KB 1,000.
- **Upstream calls** are counted where they arrive: the fake upstream's record (\`GET /__fake/calls\`,
  arrival times included); the gate's gauges are read from the gateway's admin \`/metrics\`.
`;
}
