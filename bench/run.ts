// npm run bench [-- --smoke] [--only hit,miss,burst,steady,memory,bytes,noisy,idle]
//                 [--duration S] [--rounds N] [--profile | --no-profile] [--render]
//
// Full run: writes bench/results.json and docs/benchmarks.md. --smoke: seconds, every scenario
// and peer, results to a temp file, never fails on a number. --only: results to a temp file, docs
// untouched. Profiles of the gateway are taken for the CPU-bound scenarios (hit, miss) whose
// targets were missed, unless --no-profile (--profile: always). --render: docs again from
// bench/results.json.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, release, tmpdir, totalmem, type } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../src/config.ts';
import { machineMemoryBytes } from '../src/machine.ts';
import { measureBurst, merge, steadyState } from './capacity.ts';
import { buildCompiled, entryEnvironment, startEntryPoint } from './entry.ts';
import { FLOOD, noisyNeighbour, STEADY } from './fairness.ts';
import { idleMemory } from './idle.ts';
import { clientsLeaving } from './leaving.ts';
import { boundedBytes, HELD_SERVERS, heldMemory, startHeld } from './memory.ts';
import {
  type BenchClient,
  GATEWAY_ENV,
  NGINX_WORKERS,
  nginxPath,
  type Server,
  startFake,
  startFloor,
  startGateway,
  startHttpProxy,
  startNginx,
  UPSTREAM_TOKEN,
} from './peers.ts';
import { stopAll } from './processes.ts';
import { checkTargets, consoleReport, markdown, type Results } from './report.ts';
import {
  type Context,
  hit,
  isProfiled,
  miss,
  profile,
  readProfile,
  SCENARIO_ENV,
  startProfiledGateway,
} from './scenarios.ts';
import { FULL, type Settings, SMOKE } from './settings.ts';

const SCENARIOS = ['hit', 'miss', 'burst', 'steady', 'memory', 'bytes', 'noisy', 'idle'] as const;
/** At most this much time goes into taking runs again that other processes disturbed. */
const RETRY_BUDGET_SECONDS = 120;
type Scenario = (typeof SCENARIOS)[number];

const { values: args } = parseArgs({
  options: {
    smoke: { type: 'boolean', default: false },
    only: { type: 'string' },
    duration: { type: 'string' },
    rounds: { type: 'string' },
    profile: { type: 'boolean' },
    render: { type: 'boolean', default: false },
  },
  allowNegative: true,
});

function positive(name: string, raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined;
  const value = Number(raw);
  if (!(value > 0)) throw new Error(`--${name} must be a positive number, got ${raw}`);
  return value;
}

function selected(): Set<Scenario> {
  if (args.only === undefined) return new Set(SCENARIOS);
  const names = args.only.split(',').map((s) => s.trim());
  for (const name of names) {
    if (!SCENARIOS.includes(name as Scenario)) {
      throw new Error(`--only takes ${SCENARIOS.join(', ')} (merge runs with burst); got ${name}`);
    }
  }
  return new Set(names as Scenario[]);
}

const RESULTS = new URL('./results.json', import.meta.url).pathname;
const DOCS = new URL('../docs/benchmarks.md', import.meta.url).pathname;

/** --render: docs/benchmarks.md again from bench/results.json, without measuring. */
function render(): void {
  const results = JSON.parse(readFileSync(RESULTS, 'utf8')) as Results;
  console.log(consoleReport(results));
  writeAtomically(DOCS, markdown(results));
  console.log(`docs: ${DOCS}`);
}

async function main(): Promise<void> {
  if (args.render) return render();
  const base = args.smoke ? SMOKE : FULL;
  // The limits every gateway of the run derives from the defaults on this machine.
  const defaults = loadConfig({ ACEDATA_API_TOKEN: UPSTREAM_TOKEN }).derived;
  const settings: Settings = {
    ...base,
    duration: positive('duration', args.duration) ?? base.duration,
    rounds: positive('rounds', args.rounds) ?? base.rounds,
  };
  const only = selected();
  const started = performance.now();
  const dir = mkdtempSync(join(tmpdir(), 'agw-bench-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  const nginx = nginxPath();
  const log = (line: string) =>
    console.log(`[${((performance.now() - started) / 1000).toFixed(1).padStart(5)} s] ${line}`);
  const retryBudgetSeconds = settings.smoke ? 0 : RETRY_BUDGET_SECONDS;
  const ctx: Context = { settings, dir, log, retryBudgetSeconds };
  const cpu = cpus();
  const command = [
    process.env.npm_lifecycle_event === 'bench' ? 'npm run bench' : 'node bench/run.ts',
    ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : []),
  ].join(' ');
  const partial: Omit<Results, 'targets'> = {
    date: new Date().toISOString(),
    command,
    revision: revision(),
    smoke: settings.smoke,
    machine: {
      cpus: cpu.length,
      cpuModel: cpu[0]?.model.trim() ?? 'unknown',
      node: process.version,
      memoryGiB: totalmem() / 2 ** 30,
      os: `${type()} ${release()}`,
    },
    settings: {
      ...settings,
      gateway: { ...GATEWAY_ENV },
      scenarioEnv: SCENARIO_ENV,
      nginxWorkers: NGINX_WORKERS,
    },
    defaults: { ...defaults, machineMemoryBytes: machineMemoryBytes() },
    profiles: {},
  };
  console.log(
    `bench: ${command} (${settings.smoke ? 'smoke' : `${settings.duration} s × ${settings.rounds} rounds`})`,
  );
  if (!nginx) console.log('bench: nginx is not installed; its rows are skipped');

  try {
    // The CPU-bound scenarios' servers start first, all at once: none starts during their
    // measurements. Every later scenario starts its own fresh gateway (its memory is measured).
    const fake = await startFake(0);
    const gateway = (which: 'hit' | 'miss') =>
      startGateway({ upstreamUrl: fake.url, dir, env: SCENARIO_ENV[which] });
    const fresh = (env: Record<string, string> = {}, clients?: BenchClient[]) =>
      startGateway({ upstreamUrl: fake.url, dir, env, ...(clients ? { clients } : {}) });
    // A smoke run profiles the scenarios' own gateways, so that part of the harness keeps working.
    const profiled = (which: 'hit' | 'miss') => startProfiledGateway(ctx, fake, which);
    const [hitServers, missServers] = await Promise.all([
      only.has('hit')
        ? Promise.all([settings.smoke ? profiled('hit') : gateway('hit'), startFloor()])
        : undefined,
      only.has('miss')
        ? Promise.all([
            settings.smoke ? profiled('miss') : gateway('miss'),
            startHttpProxy(fake.url),
            // nginx is a peer, not the subject: if it cannot start, its rows are skipped.
            nginx
              ? startNginx(nginx, fake.url, dir).catch((error: Error) => error.message)
              : 'not installed (`which nginx` found nothing)',
          ])
        : undefined,
    ]);
    log('servers started');

    if (hitServers) {
      log(
        `hit: warm cache, bodies of ${settings.hitSizes.map((b) => `~${(b / 1000).toFixed(1)} KB`).join(', ')}`,
      );
      partial.hit = await hit(ctx, { gateway: hitServers[0], floor: hitServers[1] });
    }
    if (missServers) {
      log('miss: cache off, unique ~2 KB bodies, upstream latency 0');
      const [missGateway, proxy, nginxServer] = missServers;
      const result = await miss(ctx, { fake, gateway: missGateway, proxy, nginx: nginxServer });
      if (typeof nginxServer === 'string') log(`nginx skipped: ${nginxServer}`);
      partial.miss = result.throughput;
      partial.latency = result.latency;
    }
    if (only.has('burst')) {
      const b = settings.burst;
      log(
        `burst: ${b.requests} distinct ~${b.bodyBytes / 1000} KB requests at once, upstream ${b.latencyMs / 1000} s, default settings; then merge: ${settings.merge.requests} identical`,
      );
      const gateway = await fresh();
      partial.burst = [await measureBurst(ctx, fake, gateway, 'sources')];
      partial.merge = await merge(ctx, fake, gateway);
      await gateway.child.stop();
      // As the image runs it: the compiled entry point (the same build as the idle scenario's).
      const built = buildCompiled(dir);
      if (built.entry) {
        const { cwd, env } = entryEnvironment(dir, fake.url);
        const compiled = await startEntryPoint(built.entry, env, cwd);
        partial.burst.push(await measureBurst(ctx, fake, compiled, 'compiled'));
        await compiled.child.stop();
      } else {
        log(`burst through the compiled entry point skipped: ${built.error}`);
      }
    }
    if (only.has('steady')) {
      const st = settings.steady;
      log(
        `steady: upstream ${st.latencyMs / 1000} s, calls started per second in ${st.windowMs[0] / 1000}–${st.windowMs[1] / 1000} s`,
      );
      partial.steady = await steadyState(
        ctx,
        { fake, gateway: await fresh() },
        defaults.upstreamRatePerSecond,
      );
    }
    if (only.has('memory')) {
      log(
        `memory: requests held in flight, ${settings.memory.sizes.map((s) => `${s.requests} × ~${(s.bodyBytes / 1000).toFixed(1)} KB`).join(', ')}`,
      );
      partial.memory = [];
      for (const size of settings.memory.sizes) {
        // Fresh processes for every size, started together before any is measured.
        const servers = await Promise.all(HELD_SERVERS.map((which) => startHeld(ctx, fake, which)));
        for (const [i, which] of HELD_SERVERS.entries()) {
          const server = servers[i] as Server;
          partial.memory.push(await heldMemory(ctx, fake, server, which, size));
        }
      }
    }
    if (only.has('bytes')) {
      const by = settings.bytes;
      log(
        `bytes: ${by.requests} distinct ~${by.bodyBytes / 1e6} MB bodies at once, upstream ${by.latencyMs / 1000} s`,
      );
      const container = String(Math.floor(by.containerBytes / 8));
      const gib = by.containerBytes / 2 ** 30;
      partial.bytes = [];
      for (const which of settings.bytesRuns) {
        partial.bytes.push(
          which === 'defaults'
            ? await boundedBytes(ctx, fake, { label: 'defaults', env: {}, clients: 1 })
            : await boundedBytes(ctx, fake, {
                label: `${gib < 1 ? gib.toFixed(2) : gib.toFixed(0)} GiB container`,
                env: { INFLIGHT_BYTES_MAX: container },
                clients: 4,
              }),
        );
      }
      const l = settings.leaving;
      log(
        `leaving: ${l.rounds} rounds of ${l.perRound} such bodies, the clients leave once their calls are upstream`,
      );
      partial.leaving = await clientsLeaving(ctx, fake);
    }
    if (only.has('noisy')) {
      const n = settings.noisy;
      log(
        `noisy: steady client at ${n.steadyRate}/s, then under a flood at ${n.floodRate}/s; upstream ${n.latencyMs / 1000} s`,
      );
      partial.noisy = await noisyNeighbour(ctx, {
        fake,
        gateway: await fresh({}, [FLOOD, STEADY]),
      });
    }
    if (only.has('idle')) {
      log(
        `idle: node src/server.ts vs node dist/server.js, RSS ${settings.idle.settleSeconds} s after /healthz answers`,
      );
      partial.idle = await idleMemory(ctx, fake);
    }
    const targets = checkTargets(partial);

    // Profile the CPU-bound scenarios whose targets were missed (all of them with --profile).
    const missed = (...scenarios: string[]) =>
      targets.some((t) => scenarios.includes(t.scenario) && !t.met);
    const wanted = {
      hit: args.profile ?? missed('hit'),
      miss: args.profile ?? missed('miss', 'latency'),
    };
    // The hit profile uses the body size whose ratio to the floor was lowest.
    const ratios = (partial.hit ?? []).map((size) => {
      const rps = (name: string) => size.targets.find((t) => t.name === name)?.median.rps ?? 0;
      return { bytes: size.bodyBytes, ratio: rps('gateway') / rps('bare Fastify') };
    });
    const worstHitSize =
      ratios.sort((a, b) => a.ratio - b.ratio)[0]?.bytes ?? settings.hitSizes.at(-1) ?? 133_500;
    for (const which of ['hit', 'miss'] as const) {
      const scenarioGateway = (which === 'hit' ? hitServers : missServers)?.[0];
      if (scenarioGateway && isProfiled(scenarioGateway)) {
        partial.profiles[which] = await readProfile(scenarioGateway, 0);
      } else if (wanted[which] && only.has(which)) {
        log(`profile: gateway under the ${which} load`);
        partial.profiles[which] = await profile(ctx, await profiled(which), worstHitSize);
        if (which === 'hit') partial.profileHitBytes = worstHitSize;
      }
    }
    const results: Results = { ...partial, targets };

    console.log(`\n${consoleReport(results)}\n`);
    if (settings.smoke)
      console.log('smoke run: tiny runs on cold processes; the numbers mean nothing.');
    const official = !settings.smoke && args.only === undefined;
    const out = official
      ? RESULTS
      : join(tmpdir(), settings.smoke ? 'agw-bench-results.smoke.json' : 'agw-bench-results.json');
    writeAtomically(out, `${JSON.stringify(results, null, 2)}\n`);
    console.log(`results: ${out}`);
    if (official) {
      mkdirSync(dirname(DOCS), { recursive: true });
      writeAtomically(DOCS, markdown(results));
      console.log(`docs: ${DOCS}`);
    }
    console.log(`bench: done in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  } finally {
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The commit measured, and the files under src/ and dev/ that differ from it. */
function revision(): Results['revision'] {
  const git = (...gitArgs: string[]) =>
    spawnSync('git', gitArgs, { encoding: 'utf8' }).stdout?.trimEnd() ?? '';
  const changed = git('status', '--porcelain', '--', 'src', 'dev')
    .split('\n')
    .filter(Boolean)
    .map((line) => line.slice(3));
  return { commit: git('rev-parse', '--short', 'HEAD') || 'unknown', changed };
}

function writeAtomically(path: string, text: string): void {
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
}

main().catch(async (error: unknown) => {
  console.error('bench failed:', error);
  await stopAll();
  process.exit(1);
});
