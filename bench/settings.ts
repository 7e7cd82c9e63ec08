// What each scenario of a run does: the full run (docs/benchmarks.md, about 13 minutes) and the
// smoke run (CI: every scenario and peer in seconds; its numbers mean nothing).

export interface Settings {
  smoke: boolean;
  /** Seconds per measured autocannon run (miss and latency). */
  duration: number;
  /** Seconds per measured autocannon run of the hit scenario (three body sizes). */
  hitDuration: number;
  /** Seconds of unmeasured load per target before the rounds. */
  warmup: number;
  /** Rounds of A B A B …; medians are reported. */
  rounds: number;
  connections: number;
  /** Hit path: JSON body sizes in bytes, each measured against bare Fastify. */
  hitSizes: number[];
  /** Distinct requests at once against a slow upstream, default settings. */
  burst: { requests: number; latencyMs: number; bodyBytes: number };
  merge: { requests: number; latencyMs: number };
  /** Calls started per second at the fake in [windowMs[0], windowMs[1]) of a saturating load. */
  steady: { latencyMs: number; windowMs: [number, number] };
  /**
   * Requests held in flight per body size; the upstream (or bare Fastify) holds them holdMs;
   * memory is read settleMs after the last was held.
   */
  memory: {
    holdMs: number;
    settleMs: number;
    sizes: Array<{ bodyBytes: number; requests: number }>;
  };
  /** Which byte-budget runs: at the defaults, and with a container's budget (4 clients). */
  bytesRuns: Array<'defaults' | 'container'>;
  /** Multi-megabyte distinct bodies at once against a slow upstream. */
  bytes: { requests: number; bodyBytes: number; latencyMs: number; containerBytes: number };
  /** Rounds of such bodies whose clients leave once their calls are upstream (container budget). */
  leaving: {
    rounds: number;
    perRound: number;
    latencyMs: number;
    /** Then small requests, more than the gate starts at once; watched after their clients left. */
    queuedRequests: number;
    watchSeconds: number;
  };
  /** The steady client's rate and the flood's, against an upstream answering after latencyMs. */
  noisy: { latencyMs: number; steadyRate: number; floodRate: number; seconds: number };
  /** Idle RSS of the sources and the compiled build: runs, and seconds after /healthz answers. */
  idle: { runs: number; settleSeconds: number };
  /** Seconds of load while profiling. */
  profileSeconds: number;
}

export interface Context {
  settings: Settings;
  /** Temporary directory of this run. */
  dir: string;
  /** Seconds still allowed for taking disturbed runs again. */
  retryBudgetSeconds: number;
  log(line: string): void;
}

export const FULL: Settings = {
  smoke: false,
  duration: 10,
  hitDuration: 5,
  warmup: 2,
  rounds: 3,
  connections: 50,
  hitSizes: [20_000, 98_000, 133_500],
  burst: { requests: 2_000, latencyMs: 10_000, bodyBytes: 20_000 },
  merge: { requests: 200, latencyMs: 2_000 },
  steady: { latencyMs: 30_000, windowMs: [60_000, 90_000] },
  memory: {
    holdMs: 90_000,
    settleMs: 1_000,
    sizes: [
      { bodyBytes: 20_000, requests: 2_000 },
      { bodyBytes: 133_500, requests: 300 },
    ],
  },
  bytesRuns: ['defaults', 'container'],
  bytes: { requests: 100, bodyBytes: 4_000_000, latencyMs: 20_000, containerBytes: 2 ** 30 },
  leaving: {
    rounds: 3,
    perRound: 30,
    latencyMs: 60_000,
    queuedRequests: 600,
    watchSeconds: 8,
  },
  noisy: { latencyMs: 1_500, steadyRate: 10, floodRate: 600, seconds: 20 },
  idle: { runs: 3, settleSeconds: 15 },
  profileSeconds: 10,
};

export const SMOKE: Settings = {
  smoke: true,
  duration: 0.2,
  hitDuration: 0.2,
  warmup: 0,
  rounds: 1,
  connections: 50,
  hitSizes: [20_000, 133_500],
  burst: { requests: 100, latencyMs: 300, bodyBytes: 20_000 },
  merge: { requests: 20, latencyMs: 200 },
  steady: { latencyMs: 1_000, windowMs: [1_000, 3_000] },
  memory: {
    holdMs: 15_000,
    settleMs: 200,
    sizes: [{ bodyBytes: 20_000, requests: 60 }],
  },
  bytesRuns: ['container'],
  bytes: { requests: 12, bodyBytes: 4_000_000, latencyMs: 2_000, containerBytes: 2 ** 28 },
  leaving: {
    rounds: 2,
    perRound: 6,
    latencyMs: 20_000,
    queuedRequests: 200,
    watchSeconds: 1,
  },
  noisy: { latencyMs: 300, steadyRate: 10, floodRate: 200, seconds: 1 },
  idle: { runs: 1, settleSeconds: 1 },
  profileSeconds: 0.2,
};
