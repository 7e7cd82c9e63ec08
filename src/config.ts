import { z } from 'zod';

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
      .array(z.string().regex(/^[\x21-\x7e]+$/, 'tokens must be printable ASCII without spaces'))
      .min(1, 'must hold at least one token'),
  );

/**
 * The environment contract (design.md → Configuration). Names stay as the operator writes them
 * so a log line, the README and the code all use the same word.
 */
export const configSchema = z.object({
  ACEDATA_API_TOKEN: tokenPool,
  ACEDATA_BASE_URL: z
    .url({ protocol: /^https?$/, error: 'must be an http(s) URL' })
    .default('https://api.acedata.cloud'),
  HOST: z.string().min(1).default('0.0.0.0'),
  PORT: intFrom(0, 65535).default(8080),
  GATEWAY_CLIENTS_FILE: z.string().min(1).default('./clients.json'),
  REDIS_URL: z
    .url({ protocol: /^rediss?$/, error: 'must be a redis:// or rediss:// URL' })
    .optional(),
  CACHE_TTL_SECONDS: intFrom(0).default(3600),
  CACHE_MAX_ENTRIES: intFrom(1).default(10_000),
  RATE_LIMIT_MAX: intFrom(1).default(60),
  RATE_LIMIT_WINDOW_SECONDS: intFrom(1).default(60),
  UPSTREAM_TIMEOUT_MS: intFrom(100).default(130_000),
  UPSTREAM_MAX_RETRIES: intFrom(0, 10).default(2),
  BODY_LIMIT_BYTES: intFrom(1024).default(4 * 1024 * 1024),
  LOG_LEVEL: z.enum(LOG_LEVELS).default('info'),

  // Beyond the design's table: limits and upstream protection (issue 3).
  /** What a request gets while the shared limit store (Redis) is unreachable. */
  RATE_LIMIT_ON_STORE_ERROR: z.enum(['allow', 'deny']).default('allow'),
  UPSTREAM_MAX_CONCURRENCY: intFrom(1).default(64),
  /** Per token: the pool's rate is this times the number of tokens (upstream allows 60/s per token). */
  UPSTREAM_RATE_PER_SECOND: intFrom(1).default(50),
  UPSTREAM_QUEUE_MAX: intFrom(0).default(1_000),
  /** A client must send its whole request (headers and body) within this; slower ones get 408. */
  REQUEST_TIMEOUT_MS: intFrom(1_000).default(30_000),
  // Resilience (issue 5).
  CIRCUIT_BREAKER_THRESHOLD: intFrom(1).default(5),
  CIRCUIT_BREAKER_COOLDOWN_MS: intFrom(100).default(30_000),
  // Operations (issue 6).
  /** Drain budget on SIGTERM; in-flight calls can take up to UPSTREAM_TIMEOUT_MS. */
  SHUTDOWN_TIMEOUT_MS: intFrom(0).default(140_000),
  /** When set, /metrics, /docs and /openapi.json move to this port (keep it private). */
  ADMIN_PORT: intFrom(0, 65535).optional(),
  METRICS_ENABLED: z.stringbool().default(true),
  DOCS_ENABLED: z.stringbool().default(true),
});

export type Config = z.infer<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;

export class ConfigError extends Error {
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/**
 * Validates the environment and reports every problem at once. Empty strings count as unset,
 * the way `.env` files and compose files commonly write "no value".
 */
export function loadConfig(env: Readonly<Record<string, string | undefined>>): Config {
  const known: Record<string, string> = {};
  for (const name of Object.keys(configSchema.shape)) {
    const value = env[name];
    if (value !== undefined && value.trim() !== '') known[name] = value;
  }
  const result = configSchema.safeParse(known);
  if (result.success) return result.data;
  throw new ConfigError(
    result.error.issues.map((issue) => {
      const name = issue.path.join('.') || '(environment)';
      const missing = issue.code === 'invalid_type' && !(String(issue.path[0]) in known);
      const message = missing ? 'is required' : issue.message;
      return `${name}: ${message}`;
    }),
  );
}

/** Reads `.env` from the working directory when present; real environment variables win. */
export function loadDotEnv(path = '.env'): void {
  try {
    process.loadEnvFile(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
}
