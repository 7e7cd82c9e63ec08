import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError, configSchema, loadConfig, loadDotEnv } from '../src/config.ts';

/** Runs loadConfig and returns the ConfigError it must throw. */
function configError(env: Record<string, string | undefined>): ConfigError {
  try {
    loadConfig(env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error('expected loadConfig to throw a ConfigError');
}

/** The variable a problem line is about: `PORT: …` → PORT, `ACEDATA_API_TOKEN.0: …` → ACEDATA_API_TOKEN. */
const variableOf = (problem: string) => /^([A-Z_]+)[.:]/.exec(problem)?.[1];

/** Variables added beyond the design's table by later issues (documented in the README). */
const ADDED_VARIABLES = {
  RATE_LIMIT_ON_STORE_ERROR: 'allow',
  UPSTREAM_MAX_CONCURRENCY: 64,
  UPSTREAM_RATE_PER_SECOND: 50,
  UPSTREAM_QUEUE_MAX: 1_000,
  REQUEST_TIMEOUT_MS: 30_000,
  CIRCUIT_BREAKER_THRESHOLD: 5,
  CIRCUIT_BREAKER_COOLDOWN_MS: 30_000,
  SHUTDOWN_TIMEOUT_MS: 140_000,
  METRICS_ENABLED: true,
  DOCS_ENABLED: true,
};

describe('configSchema', () => {
  it('covers exactly the variables of the configuration table, plus the documented additions', () => {
    expect(Object.keys(configSchema.shape).sort()).toEqual(
      [
        ...Object.keys(ADDED_VARIABLES),
        'ADMIN_PORT',
        'ACEDATA_API_TOKEN',
        'ACEDATA_BASE_URL',
        'HOST',
        'PORT',
        'GATEWAY_CLIENTS_FILE',
        'REDIS_URL',
        'CACHE_TTL_SECONDS',
        'CACHE_MAX_ENTRIES',
        'RATE_LIMIT_MAX',
        'RATE_LIMIT_WINDOW_SECONDS',
        'UPSTREAM_TIMEOUT_MS',
        'UPSTREAM_MAX_RETRIES',
        'BODY_LIMIT_BYTES',
        'LOG_LEVEL',
      ].sort(),
    );
  });
});

describe('loadConfig', () => {
  it('applies every default from the design when only ACEDATA_API_TOKEN is set', () => {
    expect(loadConfig({ ACEDATA_API_TOKEN: 'tok-1' })).toStrictEqual({
      ACEDATA_API_TOKEN: ['tok-1'],
      ACEDATA_BASE_URL: 'https://api.acedata.cloud',
      HOST: '0.0.0.0',
      PORT: 8080,
      GATEWAY_CLIENTS_FILE: './clients.json',
      CACHE_TTL_SECONDS: 3600,
      CACHE_MAX_ENTRIES: 10_000,
      RATE_LIMIT_MAX: 60,
      RATE_LIMIT_WINDOW_SECONDS: 60,
      UPSTREAM_TIMEOUT_MS: 130_000,
      UPSTREAM_MAX_RETRIES: 2,
      BODY_LIMIT_BYTES: 4_194_304,
      LOG_LEVEL: 'info',
      ...ADDED_VARIABLES,
    });
  });

  it('leaves REDIS_URL unset by default', () => {
    const config = loadConfig({ ACEDATA_API_TOKEN: 'tok-1' });
    expect(config.REDIS_URL).toBeUndefined();
  });

  it('parses explicit values and coerces numbers', () => {
    const config = loadConfig({
      ACEDATA_API_TOKEN: 'tok-1',
      ACEDATA_BASE_URL: 'http://127.0.0.1:9999',
      HOST: '127.0.0.1',
      PORT: '0',
      GATEWAY_CLIENTS_FILE: '/etc/agw/clients.json',
      REDIS_URL: 'rediss://cache.internal:6380/1',
      CACHE_TTL_SECONDS: '0',
      CACHE_MAX_ENTRIES: '5',
      RATE_LIMIT_MAX: '120',
      RATE_LIMIT_WINDOW_SECONDS: '30',
      UPSTREAM_TIMEOUT_MS: '5000',
      UPSTREAM_MAX_RETRIES: '0',
      BODY_LIMIT_BYTES: '2048',
      LOG_LEVEL: 'debug',
    });
    expect(config).toMatchObject({
      ACEDATA_BASE_URL: 'http://127.0.0.1:9999',
      HOST: '127.0.0.1',
      PORT: 0,
      GATEWAY_CLIENTS_FILE: '/etc/agw/clients.json',
      REDIS_URL: 'rediss://cache.internal:6380/1',
      CACHE_TTL_SECONDS: 0,
      CACHE_MAX_ENTRIES: 5,
      RATE_LIMIT_MAX: 120,
      RATE_LIMIT_WINDOW_SECONDS: 30,
      UPSTREAM_TIMEOUT_MS: 5000,
      UPSTREAM_MAX_RETRIES: 0,
      BODY_LIMIT_BYTES: 2048,
      LOG_LEVEL: 'debug',
    });
  });

  it('ignores variables outside the schema', () => {
    const config = loadConfig({ ACEDATA_API_TOKEN: 'tok-1', PATH: '/bin', UNRELATED: 'x' });
    expect(config).not.toHaveProperty('PATH');
    expect(config).not.toHaveProperty('UNRELATED');
  });

  describe('ACEDATA_API_TOKEN', () => {
    it('turns a comma-separated list into a trimmed pool, dropping empty entries', () => {
      const config = loadConfig({ ACEDATA_API_TOKEN: ' tok-a , tok-b,,tok-c , ' });
      expect(config.ACEDATA_API_TOKEN).toEqual(['tok-a', 'tok-b', 'tok-c']);
    });

    it('rejects a list with no token in it', () => {
      const error = configError({ ACEDATA_API_TOKEN: ' , ' });
      expect(error.problems).toHaveLength(1);
      expect(variableOf(error.problems[0] ?? '')).toBe('ACEDATA_API_TOKEN');
      expect(error.problems[0]).not.toBe('ACEDATA_API_TOKEN: is required');
    });

    it('reports a missing token as required', () => {
      const error = configError({});
      expect(error.problems).toEqual(['ACEDATA_API_TOKEN: is required']);
      expect(error.name).toBe('ConfigError');
      expect(error.message).toContain('ACEDATA_API_TOKEN: is required');
    });

    it('treats an empty or blank token as missing', () => {
      expect(configError({ ACEDATA_API_TOKEN: '' }).problems).toEqual([
        'ACEDATA_API_TOKEN: is required',
      ]);
      expect(configError({ ACEDATA_API_TOKEN: '   ' }).problems).toEqual([
        'ACEDATA_API_TOKEN: is required',
      ]);
    });

    it('never echoes the token value in the error', () => {
      const secret = 'sk-live-4f9a secretpart-77ce';
      const error = configError({ ACEDATA_API_TOKEN: secret, PORT: 'abc' });
      expect(error.problems.map(variableOf)).toContain('ACEDATA_API_TOKEN');
      for (const text of [error.message, JSON.stringify(error.problems), String(error)]) {
        expect(text).not.toContain(secret);
        expect(text).not.toContain('sk-live-4f9a');
        expect(text).not.toContain('secretpart-77ce');
      }
    });

    it('does not echo a valid token when another variable is wrong', () => {
      const error = configError({ ACEDATA_API_TOKEN: 'tok-visible-xyz', PORT: '70000' });
      expect(error.message).not.toContain('tok-visible-xyz');
    });
  });

  it('treats empty strings as unset, so defaults apply', () => {
    const config = loadConfig({
      ACEDATA_API_TOKEN: 'tok-1',
      PORT: '',
      HOST: '',
      LOG_LEVEL: '',
      REDIS_URL: '',
      CACHE_TTL_SECONDS: '  ',
    });
    expect(config.PORT).toBe(8080);
    expect(config.HOST).toBe('0.0.0.0');
    expect(config.LOG_LEVEL).toBe('info');
    expect(config.REDIS_URL).toBeUndefined();
    expect(config.CACHE_TTL_SECONDS).toBe(3600);
  });

  it('reports every bad variable together in one ConfigError', () => {
    const error = configError({
      ACEDATA_API_TOKEN: 'tok-1',
      PORT: 'abc',
      CACHE_TTL_SECONDS: '-1',
      ACEDATA_BASE_URL: 'ftp://x',
      REDIS_URL: 'http://x',
      LOG_LEVEL: 'loud',
      UPSTREAM_MAX_RETRIES: '99',
    });
    const named = error.problems.map(variableOf);
    expect(new Set(named)).toEqual(
      new Set([
        'PORT',
        'CACHE_TTL_SECONDS',
        'ACEDATA_BASE_URL',
        'REDIS_URL',
        'LOG_LEVEL',
        'UPSTREAM_MAX_RETRIES',
      ]),
    );
    expect(error.problems).toHaveLength(6);
    for (const problem of error.problems) {
      expect(error.message).toContain(problem);
      expect(problem).not.toMatch(/is required$/);
    }
    expect(error.problems).toContain('ACEDATA_BASE_URL: must be an http(s) URL');
    expect(error.problems).toContain('REDIS_URL: must be a redis:// or rediss:// URL');
    expect(error.problems).toContain('PORT: must be a whole number');
    expect(error.problems).toContain('CACHE_TTL_SECONDS: must be at least 0');
    expect(error.problems).toContain('UPSTREAM_MAX_RETRIES: must be at most 10');
  });

  it.each(['0x10', '1e3', '12abc'])('rejects the non-decimal number PORT=%s', (value) => {
    expect(configError({ ACEDATA_API_TOKEN: 'tok-1', PORT: value }).problems).toEqual([
      'PORT: must be a whole number',
    ]);
  });

  it.each([
    ['PORT', '65536'],
    ['PORT', '80.5'],
    ['PORT', '-1'],
    ['CACHE_MAX_ENTRIES', '0'],
    ['RATE_LIMIT_MAX', '0'],
    ['RATE_LIMIT_WINDOW_SECONDS', '0'],
    ['UPSTREAM_TIMEOUT_MS', '99'],
    ['UPSTREAM_MAX_RETRIES', '11'],
    ['BODY_LIMIT_BYTES', '1023'],
    ['ACEDATA_BASE_URL', 'not a url'],
    ['REDIS_URL', 'localhost:6379'],
  ])('rejects %s=%s', (name, value) => {
    const error = configError({ ACEDATA_API_TOKEN: 'tok-1', [name]: value });
    expect(error.problems.map(variableOf)).toEqual([name]);
  });

  it.each([
    ['PORT', '65535', 65535],
    ['UPSTREAM_MAX_RETRIES', '10', 10],
    ['UPSTREAM_TIMEOUT_MS', '100', 100],
    ['BODY_LIMIT_BYTES', '1024', 1024],
  ])('accepts the boundary %s=%s', (name, value, expected) => {
    const config = loadConfig({ ACEDATA_API_TOKEN: 'tok-1', [name]: value });
    expect(config[name as keyof typeof config]).toBe(expected);
  });

  it.each(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])(
    'accepts LOG_LEVEL=%s',
    (level) => {
      expect(loadConfig({ ACEDATA_API_TOKEN: 'tok-1', LOG_LEVEL: level }).LOG_LEVEL).toBe(level);
    },
  );
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
