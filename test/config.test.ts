import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  ConfigError,
  configSchema,
  deriveLimits,
  loadConfig,
  loadDotEnv,
  loadSettings,
} from '../src/config.ts';

/** Runs `load` and returns the ConfigError it must throw. */
function configError(
  env: Record<string, string | undefined>,
  load: (env: Record<string, string | undefined>) => unknown = loadConfig,
): ConfigError {
  try {
    load(env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

/** The variable a problem line is about: `PORT: …` → PORT. */
const variableOf = (problem: string) => /^([A-Z_]+)[.:]/.exec(problem)?.[1];
const TOKEN = { ACEDATA_API_TOKEN: 'token-one' };

/** Every setting and its default (docs/configuration.md); derived ones have none. */
const DEFAULTS = {
  ACEDATA_BASE_URL: 'https://api.acedata.cloud',
  HOST: '0.0.0.0',
  PORT: 8080,
  ADMIN_HOST: '127.0.0.1',
  ADMIN_PORT: 9091,
  GATEWAY_CLIENTS_FILE: './data/clients.json',
  CLIENTS_RELOAD_INTERVAL_MS: 1_000,
  CACHE_TTL_SECONDS: 3_600,
  CACHE_MAX_ENTRIES: 10_000,
  CACHE_MAX_BYTES: 64 * 1024 * 1024,
  RATE_LIMIT_MAX: 60,
  RATE_LIMIT_WINDOW_SECONDS: 60,
  RATE_LIMIT_ON_STORE_ERROR: 'allow',
  BODY_LIMIT_BYTES: 4 * 1024 * 1024,
  IMAGE_MAX_BYTES: 3 * 1024 * 1024,
  IMAGES_MAX: 100,
  IMAGE_URLS: 'allow',
  REQUEST_TIMEOUT_MS: 30_000,
  UPSTREAM_TIMEOUT_MS: 130_000,
  UPSTREAM_MAX_RETRIES: 2,
  UPSTREAM_RATE_PER_SECOND: 60,
  RETRY_BUDGET_PERCENT: 20,
  RETRY_BUDGET_MIN_PER_SECOND: 5,
  CIRCUIT_BREAKER_THRESHOLD: 5,
  CIRCUIT_BREAKER_COOLDOWN_MS: 30_000,
  SHUTDOWN_TIMEOUT_MS: 140_000,
  METRICS_ENABLED: true,
  DOCS_ENABLED: true,
  LOG_LEVEL: 'info',
};
const UNSET_BY_DEFAULT = [
  'REDIS_URL',
  'INFLIGHT_BYTES_MAX',
  'CLIENT_INFLIGHT_BYTES_MAX',
  'CLIENT_MAX_IN_FLIGHT',
  'UPSTREAM_MAX_CONCURRENCY',
  'UPSTREAM_QUEUE_MAX',
];

describe('configSchema', () => {
  it('has exactly the documented settings', () => {
    expect(Object.keys(configSchema.shape).sort()).toEqual(
      ['ACEDATA_API_TOKEN', ...Object.keys(DEFAULTS), ...UNSET_BY_DEFAULT].sort(),
    );
  });
});

describe('loadConfig: defaults', () => {
  it('applies every default when only ACEDATA_API_TOKEN is set', () => {
    const { derived, ...config } = loadConfig(TOKEN);
    expect(config).toStrictEqual({ ACEDATA_API_TOKEN: ['token-one'], ...DEFAULTS });
    for (const name of UNSET_BY_DEFAULT) expect(config).not.toHaveProperty(name);
    expect(derived).toEqual(deriveLimits(config));
  });

  it('treats empty and blank strings as unset, so defaults apply', () => {
    const config = loadConfig({
      ...TOKEN,
      PORT: '',
      HOST: '',
      LOG_LEVEL: '',
      REDIS_URL: '',
      CACHE_TTL_SECONDS: '  ',
      INFLIGHT_BYTES_MAX: '',
    });
    expect(config).toMatchObject({ PORT: 8080, HOST: '0.0.0.0', LOG_LEVEL: 'info' });
    expect(config.REDIS_URL).toBeUndefined();
    expect(config.CACHE_TTL_SECONDS).toBe(3600);
    expect(config.INFLIGHT_BYTES_MAX).toBeUndefined();
  });

  it('ignores variables outside the schema', () => {
    const config = loadConfig({ ...TOKEN, PATH: '/bin', UNRELATED: 'x' });
    expect(config).not.toHaveProperty('PATH');
    expect(config).not.toHaveProperty('UNRELATED');
  });
});

describe('loadConfig: every setting and its range', () => {
  // [setting, lowest accepted, highest accepted (or undefined: no upper bound)]
  const whole: Array<[string, number, number | undefined]> = [
    ['PORT', 0, 65_535],
    ['ADMIN_PORT', 0, 65_535],
    ['CLIENTS_RELOAD_INTERVAL_MS', 100, 60_000],
    ['CACHE_TTL_SECONDS', 0, undefined],
    ['CACHE_MAX_ENTRIES', 1, undefined],
    ['CACHE_MAX_BYTES', 1024, undefined],
    ['RATE_LIMIT_MAX', 1, undefined],
    ['RATE_LIMIT_WINDOW_SECONDS', 1, undefined],
    ['BODY_LIMIT_BYTES', 1024, undefined],
    ['IMAGE_MAX_BYTES', 1, undefined],
    ['IMAGES_MAX', 1, 10_000],
    ['REQUEST_TIMEOUT_MS', 1_000, undefined],
    ['INFLIGHT_BYTES_MAX', 1024, undefined],
    ['CLIENT_INFLIGHT_BYTES_MAX', 1024, undefined],
    ['CLIENT_MAX_IN_FLIGHT', 1, undefined],
    ['UPSTREAM_TIMEOUT_MS', 100, undefined],
    ['UPSTREAM_MAX_RETRIES', 0, 10],
    ['UPSTREAM_RATE_PER_SECOND', 1, undefined],
    ['UPSTREAM_MAX_CONCURRENCY', 1, undefined],
    ['UPSTREAM_QUEUE_MAX', 0, undefined],
    ['RETRY_BUDGET_PERCENT', 0, 100],
    ['RETRY_BUDGET_MIN_PER_SECOND', 0, undefined],
    ['CIRCUIT_BREAKER_THRESHOLD', 1, undefined],
    ['CIRCUIT_BREAKER_COOLDOWN_MS', 100, undefined],
  ];
  /** Settings the cross-checks tie to others; their boundaries are tested with room around. */
  const room = (name: string): Record<string, string> =>
    name === 'UPSTREAM_TIMEOUT_MS'
      ? { SHUTDOWN_TIMEOUT_MS: String(Number.MAX_SAFE_INTEGER) }
      : name.includes('INFLIGHT_BYTES')
        ? { BODY_LIMIT_BYTES: '1024' }
        : name === 'PORT'
          ? { ADMIN_PORT: '1' }
          : name === 'ADMIN_PORT'
            ? { PORT: '1' }
            : {};

  it.each(whole)('%s accepts %i and refuses one less', (name, min) => {
    const env = { ...TOKEN, ...room(name) };
    expect(loadConfig({ ...env, [name]: String(min) })[name as 'PORT']).toBe(min);
    expect(configError({ ...env, [name]: String(min - 1) }).problems).toEqual([
      `${name}: must be at least ${min}`,
    ]);
  });

  it.each(whole.filter(([, , max]) => max !== undefined))(
    '%s accepts up to %i … and refuses one more',
    (name, _min, max) => {
      const env = { ...TOKEN, ...room(name) };
      expect(loadConfig({ ...env, [name]: String(max) })[name as 'PORT']).toBe(max);
      expect(configError({ ...env, [name]: String(Number(max) + 1) }).problems).toEqual([
        `${name}: must be at most ${max}`,
      ]);
    },
  );

  it('SHUTDOWN_TIMEOUT_MS: a whole number ≥ 0, and in practice ≥ UPSTREAM_TIMEOUT_MS (≥ 100)', () => {
    const env = { ...TOKEN, UPSTREAM_TIMEOUT_MS: '100' };
    expect(loadConfig({ ...env, SHUTDOWN_TIMEOUT_MS: '100' }).SHUTDOWN_TIMEOUT_MS).toBe(100);
    expect(configError({ ...env, SHUTDOWN_TIMEOUT_MS: '99' }).problems.map(variableOf)).toEqual([
      'SHUTDOWN_TIMEOUT_MS',
    ]);
    expect(configError({ ...env, SHUTDOWN_TIMEOUT_MS: '-1' }).problems).toEqual([
      'SHUTDOWN_TIMEOUT_MS: must be at least 0',
    ]);
  });

  it.each(['0x10', '1e3', '12abc', '80.5', '+80', 'ten'])(
    'numbers are decimal digits only: PORT=%j',
    (value) => {
      expect(configError({ ...TOKEN, PORT: value }).problems).toEqual([
        'PORT: must be a whole number',
      ]);
    },
  );

  it.each([
    ['LOG_LEVEL', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'loud'],
    ['RATE_LIMIT_ON_STORE_ERROR', ['allow', 'deny'], 'maybe'],
    ['IMAGE_URLS', ['allow', 'deny'], 'fetch'],
  ] as const)('%s takes one of %j', (name, values, wrong) => {
    for (const value of values) expect(loadConfig({ ...TOKEN, [name]: value })[name]).toBe(value);
    expect(configError({ ...TOKEN, [name]: wrong }).problems.map(variableOf)).toEqual([name]);
  });

  it.each(['METRICS_ENABLED', 'DOCS_ENABLED'] as const)('%s is a boolean', (name) => {
    for (const [text, value] of [
      ['true', true],
      ['false', false],
      ['1', true],
      ['0', false],
      ['no', false],
    ] as const) {
      expect(loadConfig({ ...TOKEN, [name]: text })[name]).toBe(value);
    }
    expect(configError({ ...TOKEN, [name]: 'maybe' }).problems.map(variableOf)).toEqual([name]);
  });

  it('parses URLs, hosts and paths', () => {
    const config = loadConfig({
      ...TOKEN,
      ACEDATA_BASE_URL: 'http://127.0.0.1:9999/prefix',
      REDIS_URL: 'rediss://cache.internal:6380/1',
      HOST: '127.0.0.1',
      ADMIN_HOST: '0.0.0.0',
      GATEWAY_CLIENTS_FILE: '/etc/agw/clients.json',
    });
    expect(config).toMatchObject({
      ACEDATA_BASE_URL: 'http://127.0.0.1:9999/prefix',
      REDIS_URL: 'rediss://cache.internal:6380/1',
      HOST: '127.0.0.1',
      ADMIN_HOST: '0.0.0.0',
      GATEWAY_CLIENTS_FILE: '/etc/agw/clients.json',
    });
    expect(configError({ ...TOKEN, ACEDATA_BASE_URL: 'ftp://x' }).problems).toEqual([
      'ACEDATA_BASE_URL: must be an http(s) URL',
    ]);
    expect(configError({ ...TOKEN, REDIS_URL: 'localhost:6379' }).problems).toEqual([
      'REDIS_URL: must be a redis:// or rediss:// URL',
    ]);
  });
});

describe('ACEDATA_API_TOKEN', () => {
  it('turns a comma-separated list into a trimmed pool, dropping empty entries', () => {
    expect(
      loadConfig({ ACEDATA_API_TOKEN: ' token-a1 , token-b2,,token-c3 , ' }).ACEDATA_API_TOKEN,
    ).toEqual(['token-a1', 'token-b2', 'token-c3']);
  });

  it('is required; empty, blank or a list of nothing counts as missing or empty', () => {
    expect(configError({}).problems).toEqual(['ACEDATA_API_TOKEN: is required']);
    expect(configError({ ACEDATA_API_TOKEN: '  ' }).problems).toEqual([
      'ACEDATA_API_TOKEN: is required',
    ]);
    expect(configError({ ACEDATA_API_TOKEN: ' , ' }).problems).toEqual([
      'ACEDATA_API_TOKEN: must hold at least one token',
    ]);
  });

  it('refuses a token shorter than 8 characters (masked by value, it would match ordinary text)', () => {
    const error = configError({ ACEDATA_API_TOKEN: 'token-ok-1,360' });
    expect(error.problems).toEqual([
      'ACEDATA_API_TOKEN.1: each token must be at least 8 characters (real tokens are far longer)',
    ]);
    expect(error.message).not.toContain('360');
  });

  it('refuses the same token listed twice (it would double the gate rate), never echoing it', () => {
    const error = configError({ ACEDATA_API_TOKEN: 'sk-secret-one,sk-secret-two,sk-secret-one' });
    expect(error.problems).toEqual(['ACEDATA_API_TOKEN: lists the same token twice']);
    expect(error.message).not.toContain('sk-secret');
  });

  it('never echoes a token, bad or good, in any problem', () => {
    for (const env of [
      { ACEDATA_API_TOKEN: 'sk-live-4f9a secretpart-77ce', PORT: 'abc' },
      { ACEDATA_API_TOKEN: 'tok-visible-xyz', PORT: '70000' },
    ]) {
      const error = configError(env);
      for (const text of [error.message, JSON.stringify(error.problems), String(error)]) {
        expect(text).not.toContain('sk-live-4f9a');
        expect(text).not.toContain('secretpart-77ce');
        expect(text).not.toContain('tok-visible-xyz');
      }
    }
  });
});

describe('settings checked against each other', () => {
  it.each([
    [
      { PORT: '9000', ADMIN_PORT: '9000' },
      'ADMIN_PORT: must differ from PORT (the admin port keeps metrics private)',
    ],
    [
      { UPSTREAM_TIMEOUT_MS: '130000', SHUTDOWN_TIMEOUT_MS: '129999' },
      'SHUTDOWN_TIMEOUT_MS: must be at least UPSTREAM_TIMEOUT_MS, or a drain cuts in-flight calls short',
    ],
    [
      { BODY_LIMIT_BYTES: '4096', INFLIGHT_BYTES_MAX: '4095' },
      'INFLIGHT_BYTES_MAX: must be at least BODY_LIMIT_BYTES, or a full-size body is always refused',
    ],
    [
      { BODY_LIMIT_BYTES: '4096', CLIENT_INFLIGHT_BYTES_MAX: '4095' },
      'CLIENT_INFLIGHT_BYTES_MAX: must be at least BODY_LIMIT_BYTES, or a full-size body is always refused',
    ],
    [
      { BODY_LIMIT_BYTES: '1024', INFLIGHT_BYTES_MAX: '5000', CLIENT_INFLIGHT_BYTES_MAX: '5001' },
      'CLIENT_INFLIGHT_BYTES_MAX: must be at most INFLIGHT_BYTES_MAX',
    ],
  ])('refuses %j', (settings, problem) => {
    expect(configError({ ...TOKEN, ...settings }).problems).toEqual([problem]);
  });

  it('accepts the boundaries (and ports of 0, which pick a free port each)', () => {
    expect(() =>
      loadConfig({
        ...TOKEN,
        PORT: '0',
        ADMIN_PORT: '0',
        UPSTREAM_TIMEOUT_MS: '5000',
        SHUTDOWN_TIMEOUT_MS: '5000',
        BODY_LIMIT_BYTES: '4096',
        INFLIGHT_BYTES_MAX: '8192',
        CLIENT_INFLIGHT_BYTES_MAX: '8192',
      }),
    ).not.toThrow();
    // The default drain budget (140 s) already covers the default deadline (130 s) …
    expect(() => loadConfig(TOKEN)).not.toThrow();
    // … but not a longer one.
    expect(
      configError({ ...TOKEN, UPSTREAM_TIMEOUT_MS: '150000' }).problems.map(variableOf),
    ).toEqual(['SHUTDOWN_TIMEOUT_MS']);
  });

  it('reports every problem at once: each setting alone and the settings together', () => {
    const error = configError({
      ACEDATA_API_TOKEN: 'token-one,token-one',
      PORT: '9000',
      ADMIN_PORT: '9000',
      CACHE_TTL_SECONDS: '-1',
      ACEDATA_BASE_URL: 'ftp://x',
      REDIS_URL: 'http://x',
      LOG_LEVEL: 'loud',
      UPSTREAM_MAX_RETRIES: '99',
      UPSTREAM_TIMEOUT_MS: '5000',
      SHUTDOWN_TIMEOUT_MS: '1000',
      BODY_LIMIT_BYTES: '4096',
      INFLIGHT_BYTES_MAX: '2048',
    });
    expect(new Set(error.problems.map(variableOf))).toEqual(
      new Set([
        'ACEDATA_API_TOKEN',
        'ADMIN_PORT',
        'CACHE_TTL_SECONDS',
        'ACEDATA_BASE_URL',
        'REDIS_URL',
        'LOG_LEVEL',
        'UPSTREAM_MAX_RETRIES',
        'SHUTDOWN_TIMEOUT_MS',
        'INFLIGHT_BYTES_MAX',
      ]),
    );
    expect(error.problems).toHaveLength(9);
    expect(error.message.split('\n')[0]).toBe('invalid configuration:');
    for (const problem of error.problems) expect(error.message).toContain(`  - ${problem}`);
  });

  it('skips a check whose setting is itself invalid (one problem per mistake)', () => {
    expect(configError({ ...TOKEN, PORT: 'abc', ADMIN_PORT: '9091' }).problems).toEqual([
      'PORT: must be a whole number',
    ]);
  });
});

describe('derived limits: rate × deadline, memory for bytes', () => {
  const base = () => {
    const { derived: _, ...env } = loadConfig(TOKEN);
    return env;
  };
  const GiB = 1024 ** 3;

  it('by default: capacity = rate × tokens × deadline, bytes an eighth of memory', () => {
    expect(deriveLimits(base(), 8 * GiB)).toEqual({
      upstreamRatePerSecond: 60,
      upstreamMaxConcurrency: 7_800, // 60/s × 130 s
      upstreamQueueMax: 7_800,
      inflightBytesMax: GiB,
      clientInflightBytesMax: GiB / 2,
      clientMaxInFlight: 3_900,
    });
  });

  it('grows with the token pool and the deadline', () => {
    const env = { ...base(), ACEDATA_API_TOKEN: ['a', 'b', 'c'], UPSTREAM_TIMEOUT_MS: 10_000 };
    expect(deriveLimits(env, GiB)).toMatchObject({
      upstreamRatePerSecond: 180,
      upstreamMaxConcurrency: 1_800,
      upstreamQueueMax: 1_800,
      clientMaxInFlight: 900,
    });
  });

  it('rounds a fraction of a call up and never lets a client have none', () => {
    const env = { ...base(), UPSTREAM_RATE_PER_SECOND: 1, UPSTREAM_TIMEOUT_MS: 1_500 };
    expect(deriveLimits(env, GiB)).toMatchObject({
      upstreamMaxConcurrency: 2,
      clientMaxInFlight: 1,
    });
    const tiny = { ...base(), UPSTREAM_RATE_PER_SECOND: 1, UPSTREAM_TIMEOUT_MS: 100 };
    expect(deriveLimits(tiny, GiB)).toMatchObject({
      upstreamMaxConcurrency: 1,
      clientMaxInFlight: 1,
    });
  });

  it('takes explicit settings over derived ones', () => {
    const env = {
      ...base(),
      UPSTREAM_MAX_CONCURRENCY: 64,
      UPSTREAM_QUEUE_MAX: 0,
      INFLIGHT_BYTES_MAX: 100 * 1024 * 1024,
      CLIENT_INFLIGHT_BYTES_MAX: 10 * 1024 * 1024,
      CLIENT_MAX_IN_FLIGHT: 7,
    };
    expect(deriveLimits(env, 8 * GiB)).toEqual({
      upstreamRatePerSecond: 60,
      upstreamMaxConcurrency: 64,
      upstreamQueueMax: 0,
      inflightBytesMax: 100 * 1024 * 1024,
      clientInflightBytesMax: 10 * 1024 * 1024,
      clientMaxInFlight: 7,
    });
    // A client's share defaults to half of an explicit global budget.
    expect(
      deriveLimits({ ...base(), INFLIGHT_BYTES_MAX: 8_000_000 }, GiB).clientInflightBytesMax,
    ).toBe(4_000_000);
  });

  it('loadConfig attaches them', () => {
    const config = loadConfig({
      ...TOKEN,
      UPSTREAM_RATE_PER_SECOND: '2',
      UPSTREAM_TIMEOUT_MS: '5000',
    });
    expect(config.derived).toMatchObject({
      upstreamRatePerSecond: 2,
      upstreamMaxConcurrency: 10,
      upstreamQueueMax: 10,
      clientMaxInFlight: 5,
    });
    expect(config.derived.inflightBytesMax).toBeGreaterThan(0);
    expect(config.derived.clientInflightBytesMax).toBe(
      Math.floor(config.derived.inflightBytesMax / 2),
    );
  });
});

describe('loadSettings: a subset, by the same schema', () => {
  it('needs no upstream token and applies the defaults of the names asked for', () => {
    expect(
      loadSettings({}, ['GATEWAY_CLIENTS_FILE', 'REDIS_URL', 'RATE_LIMIT_MAX', 'ADMIN_PORT']),
    ).toEqual({
      GATEWAY_CLIENTS_FILE: './data/clients.json',
      REDIS_URL: undefined,
      RATE_LIMIT_MAX: 60,
      ADMIN_PORT: 9091,
    });
  });

  it('reads only the names asked for, empty strings as unset', () => {
    const settings = loadSettings(
      { RATE_LIMIT_MAX: '5', RATE_LIMIT_WINDOW_SECONDS: '', PORT: 'not checked' },
      ['RATE_LIMIT_MAX', 'RATE_LIMIT_WINDOW_SECONDS'],
    );
    expect(settings).toEqual({ RATE_LIMIT_MAX: 5, RATE_LIMIT_WINDOW_SECONDS: 60 });
  });

  it('reports every problem of those names at once, the same way loadConfig does', () => {
    const error = configError({ RATE_LIMIT_MAX: '0', REDIS_URL: 'http://x', PORT: 'bad' }, (env) =>
      loadSettings(env, ['RATE_LIMIT_MAX', 'REDIS_URL', 'GATEWAY_CLIENTS_FILE']),
    );
    expect(error.problems).toEqual([
      'RATE_LIMIT_MAX: must be at least 1',
      'REDIS_URL: must be a redis:// or rediss:// URL',
    ]);
  });

  it('a required setting asked for is reported as required', () => {
    expect(configError({}, (env) => loadSettings(env, ['ACEDATA_API_TOKEN'])).problems).toEqual([
      'ACEDATA_API_TOKEN: is required',
    ]);
  });
});

describe('loadDotEnv', () => {
  const NEW = 'AGW_CONFIG_TEST_FROM_FILE';
  const PRESET = 'AGW_CONFIG_TEST_PRESET';
  let dir: string;
  let snapshot: NodeJS.ProcessEnv;

  beforeEach(async () => {
    snapshot = { ...process.env };
    dir = await mkdtemp(join(tmpdir(), 'agw-config-'));
  });

  afterEach(async () => {
    for (const name of Object.keys(process.env)) {
      if (!(name in snapshot)) delete process.env[name];
    }
    Object.assign(process.env, snapshot);
    await rm(dir, { recursive: true, force: true });
  });

  it('reads variables from the file without overriding ones already set', async () => {
    const file = join(dir, '.env');
    await writeFile(file, `${NEW}=from-file\n${PRESET}=from-file\n# a comment\n`);
    process.env[PRESET] = 'from-environment';
    expect(process.env[NEW]).toBeUndefined();

    loadDotEnv(file);

    expect(process.env[NEW]).toBe('from-file');
    expect(process.env[PRESET]).toBe('from-environment');
  });

  it('ignores a missing file', () => {
    const before = { ...process.env };
    expect(() => loadDotEnv(join(dir, 'does-not-exist.env'))).not.toThrow();
    expect(process.env).toEqual(before);
  });

  it('does not silently ignore a path that cannot be read as a file', () => {
    expect(() => loadDotEnv(dir)).toThrow();
  });
});
