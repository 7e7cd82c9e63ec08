import { z } from 'zod';
import { machineMemoryBytes } from './machine.ts';

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** Decimal digits only: `0x10` or `1e3` in an environment variable is a typo, not a number. */
const intFrom = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z
    .string()
    .trim()
    .regex(/^-?\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().min(min, `must be at least ${min}`).max(max, `must be at most ${max}`));

/** Comma-separated upstream tokens → a non-empty pool. Messages never echo the value. */
const tokenPool = z
  .string()
  .transform((raw) =>
    raw
      .split(',')
      .map((token) => token.trim())
      .filter((token) => token.length > 0),
  )
  .pipe(
    z
      .array(
        z
          .string()
          .regex(/^[\x21-\x7e]+$/, 'tokens must be printable ASCII without spaces')
          // Tokens are masked by value in upstream text: a short one would match ordinary text.
          .min(8, 'each token must be at least 8 characters (real tokens are far longer)'),
      )
      .min(1, 'must hold at least one token')
      // The gate's rate grows with the pool's size: a token listed twice would double it.
      .refine((tokens) => new Set(tokens).size === tokens.length, 'lists the same token twice'),
  );

/**
 * The environment contract (docs/configuration.md). Names stay as the operator writes them, so a
 * log line, the docs and the code all use the same word. Optional settings without a default are
 * derived from others by {@link deriveLimits}.
 */
export const configSchema = z.object({
  ACEDATA_API_TOKEN: tokenPool,
  ACEDATA_BASE_URL: z
    .url({ protocol: /^https?$/, error: 'must be an http(s) URL' })
    .default('https://api.acedata.cloud'),
  HOST: z.string().min(1).default('0.0.0.0'),
  PORT: intFrom(0, 65535).default(8080),
  /** /metrics, /docs, /openapi.json and /usage: private, on loopback unless told otherwise. */
  ADMIN_HOST: z.string().min(1).default('127.0.0.1'),
  ADMIN_PORT: intFrom(0, 65535).default(9091),
  GATEWAY_CLIENTS_FILE: z.string().min(1).default('./data/clients.json'),
  /** How often running gateways look at the clients file for changes (SIGHUP reloads at once). */
  CLIENTS_RELOAD_INTERVAL_MS: intFrom(100, 60_000).default(1_000),
  REDIS_URL: z
    .url({ protocol: /^rediss?$/, error: 'must be a redis:// or rediss:// URL' })
    .optional(),
  CACHE_TTL_SECONDS: intFrom(0).default(3600),
  CACHE_MAX_ENTRIES: intFrom(1).default(10_000),
  /** Bytes of answers the in-memory store may hold (Redis bounds its own memory). */
  CACHE_MAX_BYTES: intFrom(1024).default(64 * 1024 * 1024),
  RATE_LIMIT_MAX: intFrom(1).default(60),
  RATE_LIMIT_WINDOW_SECONDS: intFrom(1).default(60),
  /** What a request gets while the shared limit store (Redis) is unreachable. */
  RATE_LIMIT_ON_STORE_ERROR: z.enum(['allow', 'deny']).default('allow'),

  // Requests: what the gateway accepts.
  BODY_LIMIT_BYTES: intFrom(1024).default(4 * 1024 * 1024),
  /** Largest decoded Base64 image. */
  IMAGE_MAX_BYTES: intFrom(1).default(3 * 1024 * 1024),
  /** Most `queries` items in one request. */
  IMAGES_MAX: intFrom(1, 10_000).default(100),
  /** `deny` refuses image URLs in `queries` (they are never fetched by the gateway either way). */
  IMAGE_URLS: z.enum(['allow', 'deny']).default('allow'),
  /** A client must send its whole request (headers and body) within this; slower ones get 408. */
  REQUEST_TIMEOUT_MS: intFrom(1_000).default(30_000),

  // Capacity: what the gateway holds at once, and each client's share.
  /** Request bodies held at once, in bytes; default one eighth of the machine's memory. */
  INFLIGHT_BYTES_MAX: intFrom(1024).optional(),
  /** One client's share of INFLIGHT_BYTES_MAX; default half of it. */
  CLIENT_INFLIGHT_BYTES_MAX: intFrom(1024).optional(),
  /** One client's requests in flight (clients file `maxInFlight` wins); default half the capacity. */
  CLIENT_MAX_IN_FLIGHT: intFrom(1).optional(),

  // The upstream.
  /** Whole-request deadline: queueing, merging, every attempt and backoff included. */
  UPSTREAM_TIMEOUT_MS: intFrom(100).default(130_000),
  UPSTREAM_MAX_RETRIES: intFrom(0, 10).default(2),
  /** Per token: the pool's rate is this times the number of tokens (upstream allows 60/s). */
  UPSTREAM_RATE_PER_SECOND: intFrom(1).default(60),
  /** Optional caps below the derived capacity (rate × tokens × deadline). */
  UPSTREAM_MAX_CONCURRENCY: intFrom(1).optional(),
  UPSTREAM_QUEUE_MAX: intFrom(0).optional(),
  /** Retries allowed, as a percentage of recent upstream calls (Finagle/Envoy retry budget). */
  RETRY_BUDGET_PERCENT: intFrom(0, 100).default(20),
  /** Retries always allowed per second, whatever the percentage says. */
  RETRY_BUDGET_MIN_PER_SECOND: intFrom(0).default(5),
  CIRCUIT_BREAKER_THRESHOLD: intFrom(1).default(5),
  CIRCUIT_BREAKER_COOLDOWN_MS: intFrom(100).default(30_000),

  // Operations.
  /** Drain budget on SIGTERM; in-flight calls can take up to UPSTREAM_TIMEOUT_MS. */
  SHUTDOWN_TIMEOUT_MS: intFrom(0).default(140_000),
  METRICS_ENABLED: z.stringbool().default(true),
  DOCS_ENABLED: z.stringbool().default(true),
  LOG_LEVEL: z.enum(LOG_LEVELS).default('info'),
});

export type EnvConfig = z.infer<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;

/** The limits the environment may leave unset, worked out from the rest. */
export interface DerivedLimits {
  /** Calls the pool may start per second: UPSTREAM_RATE_PER_SECOND × tokens. */
  upstreamRatePerSecond: number;
  /** Calls in flight upstream at once, and calls waiting for a start slot. */
  upstreamMaxConcurrency: number;
  upstreamQueueMax: number;
  inflightBytesMax: number;
  clientInflightBytesMax: number;
  clientMaxInFlight: number;
}

export type Config = EnvConfig & { derived: DerivedLimits };

/**
 * Rate is the upstream's only real cap; by Little's law it keeps rate × deadline calls busy.
 * Memory, not a count, bounds what a replica holds (INFLIGHT_BYTES_MAX).
 */
export function deriveLimits(env: EnvConfig, memoryBytes = machineMemoryBytes()): DerivedLimits {
  const upstreamRatePerSecond = env.UPSTREAM_RATE_PER_SECOND * env.ACEDATA_API_TOKEN.length;
  const capacity = Math.ceil((upstreamRatePerSecond * env.UPSTREAM_TIMEOUT_MS) / 1000);
  const inflightBytesMax = env.INFLIGHT_BYTES_MAX ?? Math.floor(memoryBytes / 8);
  return {
    upstreamRatePerSecond,
    upstreamMaxConcurrency: env.UPSTREAM_MAX_CONCURRENCY ?? capacity,
    upstreamQueueMax: env.UPSTREAM_QUEUE_MAX ?? capacity,
    inflightBytesMax,
    clientInflightBytesMax: env.CLIENT_INFLIGHT_BYTES_MAX ?? Math.floor(inflightBytesMax / 2),
    clientMaxInFlight: env.CLIENT_MAX_IN_FLIGHT ?? Math.max(1, Math.floor(capacity / 2)),
  };
}

/**
 * Settings that are each valid but do not make sense together. Takes what did parse (a setting
 * that did not is undefined and its checks are skipped), so these are reported together with
 * every other problem.
 */
function crossProblems(env: Partial<EnvConfig>): string[] {
  const problems: string[] = [];
  if (env.ADMIN_PORT !== undefined && env.ADMIN_PORT !== 0 && env.ADMIN_PORT === env.PORT) {
    problems.push('ADMIN_PORT: must differ from PORT (the admin port keeps metrics private)');
  }
  if (
    env.SHUTDOWN_TIMEOUT_MS !== undefined &&
    env.UPSTREAM_TIMEOUT_MS !== undefined &&
    env.SHUTDOWN_TIMEOUT_MS < env.UPSTREAM_TIMEOUT_MS
  ) {
    problems.push(
      'SHUTDOWN_TIMEOUT_MS: must be at least UPSTREAM_TIMEOUT_MS, or a drain cuts in-flight calls short',
    );
  }
  if (env.CLIENT_INFLIGHT_BYTES_MAX !== undefined) {
    const global = env.INFLIGHT_BYTES_MAX ?? Number.POSITIVE_INFINITY;
    if (env.CLIENT_INFLIGHT_BYTES_MAX > global) {
      problems.push('CLIENT_INFLIGHT_BYTES_MAX: must be at most INFLIGHT_BYTES_MAX');
    }
  }
  for (const name of ['INFLIGHT_BYTES_MAX', 'CLIENT_INFLIGHT_BYTES_MAX'] as const) {
    const value = env[name];
    if (value !== undefined && env.BODY_LIMIT_BYTES !== undefined && value < env.BODY_LIMIT_BYTES) {
      problems.push(
        `${name}: must be at least BODY_LIMIT_BYTES, or a full-size body is always refused`,
      );
    }
  }
  return problems;
}

export class ConfigError extends Error {
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/** Only the schema's own names, with empty strings counted as unset (as `.env` files write them). */
function knownSettings(
  env: Readonly<Record<string, string | undefined>>,
  names: readonly string[],
): Record<string, string> {
  const known: Record<string, string> = {};
  for (const name of names) {
    const value = env[name];
    if (value !== undefined && value.trim() !== '') known[name] = value;
  }
  return known;
}

function describeIssues(issues: readonly z.core.$ZodIssue[], known: Record<string, string>) {
  return issues.map((issue) => {
    const name = issue.path.join('.') || '(environment)';
    const missing = issue.code === 'invalid_type' && !(String(issue.path[0]) in known);
    return `${name}: ${missing ? 'is required' : issue.message}`;
  });
}

/**
 * Validates the environment and reports every problem at once, each on its own line, naming the
 * variable and never echoing a token.
 */
export function loadConfig(env: Readonly<Record<string, string | undefined>>): Config {
  const known = knownSettings(env, Object.keys(configSchema.shape));
  const result = configSchema.safeParse(known);
  if (result.success) {
    const problems = crossProblems(result.data);
    if (problems.length > 0) throw new ConfigError(problems);
    return { ...result.data, derived: deriveLimits(result.data) };
  }
  throw new ConfigError([
    ...describeIssues(result.error.issues, known),
    ...crossProblems(parsedFields(known)),
  ]);
}

/** Each setting parsed on its own; those that fail are left out. */
function parsedFields(known: Record<string, string>): Partial<EnvConfig> {
  const values: Record<string, unknown> = {};
  for (const [name, schema] of Object.entries(configSchema.shape)) {
    const result = schema.safeParse(known[name]);
    if (result.success) values[name] = result.data;
  }
  return values as Partial<EnvConfig>;
}

/**
 * A subset of the settings, validated by the same schema: for tools (the clients CLI) that need
 * a few settings and must not demand the upstream token.
 */
export function loadSettings<K extends keyof EnvConfig>(
  env: Readonly<Record<string, string | undefined>>,
  names: readonly K[],
): Pick<EnvConfig, K> {
  const known = knownSettings(env, names as readonly string[]);
  const values: Record<string, unknown> = {};
  const issues: z.core.$ZodIssue[] = [];
  for (const name of names) {
    const result = configSchema.shape[name].safeParse(known[name]);
    if (result.success) values[name] = result.data;
    else issues.push(...result.error.issues.map((issue) => ({ ...issue, path: [name] })));
  }
  if (issues.length > 0) throw new ConfigError(describeIssues(issues, known));
  return values as Pick<EnvConfig, K>;
}

/** Reads `.env` from the working directory when present; real environment variables win. */
export function loadDotEnv(path = '.env'): void {
  try {
    process.loadEnvFile(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
}
