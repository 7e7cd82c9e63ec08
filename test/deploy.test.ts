/**
 * Deployment files (Dockerfile, .dockerignore, docker-compose.yml, deploy/) checked without a
 * container engine: each is parsed, the compose file is validated against the Compose
 * Specification's JSON schema (vendored in test/vendor), and every name, port, path and metric they
 * mention is compared with the code. The image's CMD and HEALTHCHECK are run for real, as plain
 * processes, in a directory laid out the way the Dockerfile's COPY lines lay out the image.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { cp, mkdir, mkdtemp, rm, symlink } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, dirname, join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv, type SchemaObject } from 'ajv';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { hashClientKey, writeClientsFile } from '../src/clients/registry.ts';
import { loadConfig } from '../src/config.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const read = (path: string) => readFileSync(join(ROOT, path), 'utf8');
const BOUND_MS = 10_000;

/** The gateway's metrics (src/metrics.ts). A dashboard query may use only these. */
const GATEWAY_METRICS = [
  'gateway_requests_total',
  'gateway_request_duration_seconds',
  'gateway_upstream_requests_total',
  'gateway_upstream_duration_seconds',
  'gateway_cache_events_total',
  'gateway_rate_limited_total',
  'gateway_upstream_retries_total',
  'gateway_upstream_calls_saved_total',
  'gateway_circuit_state',
] as const;
const HISTOGRAMS = ['gateway_request_duration_seconds', 'gateway_upstream_duration_seconds'];
const QUERYABLE = new Set<string>([
  ...GATEWAY_METRICS,
  ...HISTOGRAMS.flatMap((name) => [`${name}_bucket`, `${name}_count`, `${name}_sum`]),
]);

/** SHA-256 of the vendored schema's compact JSON (see test/vendor/README.md). */
const COMPOSE_SCHEMA_SHA256 = 'b2dc5daa8ce86f3b6a82dfe17afa0b5428b21d51a18bfb6e1ef304cf88e933ae';

// ---------------------------------------------------------------------------------------------
// Dockerfile

interface Instruction {
  keyword: string;
  args: string;
  stage: number;
}

/** Instructions with continuation lines joined and comments dropped (Dockerfile rules). */
function parseDockerfile(text: string): Instruction[] {
  const instructions: Instruction[] = [];
  let pending = '';
  let stage = -1;
  for (const line of text.split('\n')) {
    if (/^\s*#/.test(line)) continue; // comments, also inside a continuation
    if (pending === '' && line.trim() === '') continue;
    const continued = /\\\s*$/.test(line);
    pending += `${continued ? line.replace(/\\\s*$/, '') : line} `;
    if (continued) continue;
    const match = /^\s*([A-Za-z]+)\s+(.*?)\s*$/.exec(pending);
    pending = '';
    if (!match?.[1] || match[2] === undefined) continue;
    const keyword = match[1].toUpperCase();
    if (keyword === 'FROM') stage += 1;
    instructions.push({ keyword, args: match[2], stage });
  }
  return instructions;
}

/** Exec form (`["a","b"]`) only: the shell form would need a shell the check cannot see into. */
function execForm(args: string): string[] {
  const parsed: unknown = JSON.parse(args);
  if (!Array.isArray(parsed) || !parsed.every((part) => typeof part === 'string')) {
    throw new Error(`not an exec-form array: ${args}`);
  }
  return parsed;
}

/** `--from=x --chown=y src... dest` → flags and paths. */
function copyArgs(args: string): { from?: string; sources: string[]; dest: string } {
  const words = args.split(/\s+/);
  const flags = words.filter((word) => word.startsWith('--'));
  const paths = words.filter((word) => !word.startsWith('--'));
  const dest = paths.pop();
  if (dest === undefined || paths.length === 0) throw new Error(`COPY without source: ${args}`);
  const from = flags.find((flag) => flag.startsWith('--from='))?.slice('--from='.length);
  return { from, sources: paths, dest };
}

const dockerfile = parseDockerfile(read('Dockerfile'));
const finalStage = Math.max(...dockerfile.map((instruction) => instruction.stage));
const runtime = dockerfile.filter((instruction) => instruction.stage === finalStage);
const one = (keyword: string, instructions = runtime): string => {
  const found = instructions.filter((instruction) => instruction.keyword === keyword);
  expect(found, `exactly one ${keyword} in the final stage`).toHaveLength(1);
  return found[0]?.args ?? '';
};
const workdir = () => one('WORKDIR');
const healthcheckCommand = () => {
  const match = /^(?:--\S+\s+)*CMD\s+(.*)$/.exec(one('HEALTHCHECK'));
  if (!match?.[1]) throw new Error('HEALTHCHECK has no CMD');
  return execForm(match[1]);
};

// ---------------------------------------------------------------------------------------------
// .dockerignore (moby/patternmatcher semantics: last match wins; a match on a parent counts)

function globToRegExp(pattern: string): RegExp {
  let source = '';
  for (let i = 0; i < pattern.length; i += 1) {
    const char = pattern[i] as string;
    if (char === '*' && pattern[i + 1] === '*') {
      i += 1;
      if (pattern[i + 1] === '/') {
        i += 1;
        source += '(?:.*/)?';
      } else source += '.*';
    } else if (char === '*') source += '[^/]*';
    else if (char === '?') source += '[^/]';
    else source += char.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${source}$`);
}

function dockerignored(path: string, text: string): boolean {
  const rules = text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => {
      const negated = line.startsWith('!');
      const pattern = posix
        .normalize((negated ? line.slice(1) : line).trim())
        .replace(/^\/|\/$/g, '');
      return { negated, regex: globToRegExp(pattern) };
    });
  const parts = path.split('/');
  const prefixes = parts.map((_, i) => parts.slice(0, i + 1).join('/'));
  let excluded = false;
  for (const rule of rules) {
    if (prefixes.some((prefix) => rule.regex.test(prefix))) excluded = !rule.negated;
  }
  return excluded;
}

// ---------------------------------------------------------------------------------------------
// Compose

interface Healthcheck {
  test?: string | string[];
}
interface ComposeService {
  image?: string;
  build?: string | { context?: string; dockerfile?: string };
  user?: string;
  profiles?: string[];
  environment?: Record<string, string | number | boolean | null> | string[];
  ports?: (string | number | { target: number | string })[];
  volumes?: (string | { type: string; source?: string; target: string; read_only?: boolean })[];
  depends_on?: string[] | Record<string, { condition: string }>;
  healthcheck?: Healthcheck;
  stop_grace_period?: string;
  stop_signal?: string;
  read_only?: boolean;
  tmpfs?: string | string[];
  restart?: string;
}
interface ComposeFile {
  services: Record<string, ComposeService>;
}

/**
 * Compose's variable substitution with no variable set, as on a machine with only the defaults:
 * `${X:-d}` and `${X-d}` → d, `${X}`/`$X`/`${X:+y}` → '', `$$` → `$`, `${X:?msg}` fails.
 */
function interpolate(value: unknown): unknown {
  if (typeof value === 'string') {
    return value.replace(
      /\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
      (
        whole,
        name: string | undefined,
        operator: string | undefined,
        operand: string | undefined,
      ) => {
        if (whole === '$$') return '$';
        if (operator === ':-' || operator === '-') return operand ?? '';
        if (operator === ':?' || operator === '?') {
          throw new Error(`compose needs \${${name}} set: ${operand}`);
        }
        return '';
      },
    );
  }
  if (Array.isArray(value)) return value.map(interpolate);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, interpolate(item)]));
  }
  return value;
}

const composeRaw: unknown = parseYaml(read('docker-compose.yml'));
const compose = interpolate(composeRaw) as ComposeFile;
const services = compose.services;
const service = (name: string): ComposeService => {
  const found = services[name];
  if (!found) throw new Error(`no compose service ${name}`);
  return found;
};
/** The service built from this repository's Dockerfile. */
const gatewayName = Object.entries(services).find(([, svc]) => svc.build !== undefined)?.[0] ?? '';
const byImage = (prefix: string) => {
  const name = Object.entries(services).find(([, svc]) => svc.image?.startsWith(prefix))?.[0];
  if (!name) throw new Error(`no compose service runs ${prefix}`);
  return name;
};

function environment(svc: ComposeService): Record<string, string> {
  const env = svc.environment ?? {};
  if (Array.isArray(env)) {
    return Object.fromEntries(
      env.map((entry) => {
        const at = entry.indexOf('=');
        return at === -1 ? [entry, ''] : [entry.slice(0, at), entry.slice(at + 1)];
      }),
    );
  }
  return Object.fromEntries(Object.entries(env).map(([key, value]) => [key, String(value ?? '')]));
}

function containerPorts(svc: ComposeService): number[] {
  return (svc.ports ?? []).map((port) => {
    if (typeof port === 'object') return Number(port.target);
    const last = String(port).split(':').pop() ?? '';
    return Number(last.split('/')[0]);
  });
}

/** Bind mounts as `{ source, target, readOnly }`, short and long syntax. */
function binds(svc: ComposeService): { source: string; target: string; readOnly: boolean }[] {
  return (svc.volumes ?? []).flatMap((volume) => {
    if (typeof volume === 'object') {
      return volume.type === 'bind' && volume.source !== undefined
        ? [{ source: volume.source, target: volume.target, readOnly: volume.read_only === true }]
        : [];
    }
    const [source = '', target = '', mode = ''] = volume.split(':');
    if (!/^[./~]/.test(source)) return []; // a named volume
    return [{ source, target, readOnly: mode.split(',').includes('ro') }];
  });
}

function dependsOn(svc: ComposeService): Record<string, string> {
  const deps = svc.depends_on ?? {};
  if (Array.isArray(deps)) return Object.fromEntries(deps.map((name) => [name, 'service_started']));
  return Object.fromEntries(Object.entries(deps).map(([name, dep]) => [name, dep.condition]));
}

/** Compose durations: `150s`, `1m30s`, `500ms`. */
function durationMs(value: string): number {
  const units: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  const parts = [...value.matchAll(/(\d+(?:\.\d+)?)(us|ms|s|m|h)/g)];
  expect(parts.map((part) => part[0]).join(''), `duration ${value}`).toBe(value);
  return parts.reduce(
    (sum, [, amount, unit]) => sum + Number(amount) * (units[unit ?? ''] ?? 0),
    0,
  );
}

const hostPort = (url: string) => {
  const parsed = new URL(url.includes('://') ? url : `http://${url}`);
  return { host: parsed.hostname, port: Number(parsed.port) };
};

// ---------------------------------------------------------------------------------------------
// PromQL

const PROMQL_KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan']);

/** Metric names in a PromQL expression: identifiers that are not functions, keywords or labels. */
function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\b/g, ' ')
    .replace(/(?<![A-Za-z_:])\d[\w.]*/g, ' ');
  const names: string[] = [];
  for (const match of stripped.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const after = stripped.slice((match.index ?? 0) + match[0].length);
    if (/^\s*\(/.test(after) || PROMQL_KEYWORDS.has(match[0].toLowerCase())) continue;
    names.push(match[0]);
  }
  return names;
}

interface Panel {
  id?: number;
  type: string;
  title?: string;
  datasource?: { uid?: string; type?: string };
  gridPos?: { x: number; y: number; w: number; h: number };
  targets?: { expr?: string; datasource?: { uid?: string } }[];
  panels?: Panel[];
}
const allPanels = (panels: Panel[]): Panel[] =>
  panels.flatMap((panel) => [panel, ...allPanels(panel.panels ?? [])]);

// =============================================================================================

describe('docker-compose.yml', () => {
  it('is valid under the Compose Specification schema, which catches a misspelt key', () => {
    const raw = read('test/vendor/compose-spec.json');
    const schema = JSON.parse(raw) as SchemaObject;
    expect(createHash('sha256').update(JSON.stringify(schema)).digest('hex')).toBe(
      COMPOSE_SCHEMA_SHA256,
    );
    // The schema names its meta-schema by the https URL; ajv knows draft-07 by the http one.
    const draft07 = createRequire(import.meta.url)('ajv/dist/refs/json-schema-draft-07.json');
    const ajv = new Ajv({ allErrors: true, allowUnionTypes: true, strictTypes: false });
    ajv.addMetaSchema({ ...draft07, $id: schema.$schema });
    const validate = ajv.compile(schema);

    const valid = validate(compose);
    expect(valid ? [] : ajv.errorsText(validate.errors, { separator: '\n' }).split('\n')).toEqual(
      [],
    );

    const typo = structuredClone(compose) as unknown as Record<string, Record<string, object>>;
    typo.services = {
      ...typo.services,
      [gatewayName]: { ...service(gatewayName), stop_grace: '1s' },
    };
    expect(validate(typo)).toBe(false);
  });

  it('has a gateway built from this Dockerfile, a Redis, and only known services', () => {
    expect(gatewayName).toBe('gateway');
    expect(Object.keys(services).sort()).toEqual(['gateway', 'grafana', 'prometheus', 'redis']);
    const build = service('gateway').build;
    expect(typeof build === 'string' ? build : build?.context).toBe('.');
    expect(service('redis').image).toMatch(/^(valkey\/valkey|redis):/);
  });

  it('waits only for services that have a health check, and never on an optional profile', () => {
    const dockerfileHasHealthcheck = runtime.some((i) => i.keyword === 'HEALTHCHECK');
    for (const [name, svc] of Object.entries(services)) {
      for (const [dependency, condition] of Object.entries(dependsOn(svc))) {
        const target = service(dependency);
        expect(['service_started', 'service_healthy', 'service_completed_successfully']).toContain(
          condition,
        );
        if (condition === 'service_healthy') {
          const hasCheck =
            target.healthcheck?.test !== undefined ||
            (target.build !== undefined && dockerfileHasHealthcheck);
          expect(hasCheck, `${name} waits for ${dependency} to be healthy`).toBe(true);
        }
        // A service that always runs cannot wait for one that only runs with a profile.
        if (svc.profiles === undefined)
          expect(target.profiles, `${name} → ${dependency}`).toBeUndefined();
      }
    }
    expect(dependsOn(service('gateway'))).toEqual({ redis: 'service_healthy' });
    expect(service('redis').healthcheck?.test).toEqual(
      expect.arrayContaining([expect.stringMatching(/(valkey|redis)-cli ping/)]),
    );
  });

  it('starts prometheus and grafana only with the monitoring profile', () => {
    expect(service(byImage('prom/prometheus')).profiles).toEqual(['monitoring']);
    expect(service(byImage('grafana/grafana')).profiles).toEqual(['monitoring']);
    expect(service('gateway').profiles).toBeUndefined();
    expect(service('redis').profiles).toBeUndefined();
  });

  it('points the gateway at the redis service and mounts the clients file read-only where it reads it', () => {
    const gateway = service('gateway');
    const env = environment(gateway);
    const redisUrl = new URL(env.REDIS_URL ?? '');
    expect(redisUrl.protocol).toBe('redis:');
    expect(Object.keys(services)).toContain(redisUrl.hostname);
    expect(redisUrl.port === '' ? 6379 : Number(redisUrl.port)).toBe(6379);

    const clients = binds(gateway).find((bind) => bind.target === env.GATEWAY_CLIENTS_FILE);
    expect(clients, 'a bind mount at GATEWAY_CLIENTS_FILE').toBeDefined();
    expect(clients?.source).toBe('./clients.json');
    expect(clients?.readOnly).toBe(true);
    // The whole environment the compose file sets is one the gateway accepts.
    expect(() => loadConfig({ ...env, ACEDATA_API_TOKEN: 'x' })).not.toThrow();
    expect(gateway.build).toBeDefined();
  });

  it('publishes the port the gateway listens on, and outlasts its drain on stop', () => {
    const gateway = service('gateway');
    const config = loadConfig({ ...environment(gateway), ACEDATA_API_TOKEN: 'x' });
    expect(config.HOST).toBe('0.0.0.0');
    expect(containerPorts(gateway)).toEqual([config.PORT]);
    expect(Number(one('EXPOSE'))).toBe(config.PORT);

    const shutdownMs = loadConfig({ ACEDATA_API_TOKEN: 'x' }).SHUTDOWN_TIMEOUT_MS;
    expect(durationMs(gateway.stop_grace_period ?? '10s')).toBeGreaterThan(shutdownMs);
    expect(gateway.stop_signal ?? one('STOPSIGNAL')).toBe('SIGTERM');
    expect(gateway.restart).toBe('unless-stopped');
    expect(gateway.read_only).toBe(true);
    expect([gateway.tmpfs].flat()).toContain('/tmp');
    const user = gateway.user ?? one('USER');
    expect(user.split(':')[0]).not.toMatch(/^(root|0)$/);
  });

  it('mounts only files that exist in the repository (apart from the operator’s clients.json)', () => {
    for (const [name, svc] of Object.entries(services)) {
      for (const bind of binds(svc)) {
        if (bind.source === './clients.json') continue;
        expect(existsSync(join(ROOT, bind.source)), `${name}: ${bind.source}`).toBe(true);
      }
    }
  });
});

describe('Prometheus and Grafana provisioning', () => {
  const prometheusName = byImage('prom/prometheus');
  const grafanaName = byImage('grafana/grafana');
  const mountedAt = (svc: string, target: string) => {
    const bind = binds(service(svc)).find((b) => b.target === target);
    if (!bind) throw new Error(`${svc} mounts nothing at ${target}`);
    return bind.source;
  };
  const provisioning = mountedAt(grafanaName, '/etc/grafana/provisioning');
  const datasources = (
    parseYaml(read(`${provisioning}/datasources/prometheus.yml`)) as {
      datasources: { uid: string; type: string; url: string }[];
    }
  ).datasources;

  it('scrapes the gateway service on its container port every 15 s', () => {
    const source = mountedAt(prometheusName, '/etc/prometheus/prometheus.yml');
    const prometheus = parseYaml(read(source)) as {
      global?: { scrape_interval?: string };
      scrape_configs: {
        job_name: string;
        metrics_path?: string;
        scrape_interval?: string;
        static_configs: { targets: string[] }[];
      }[];
    };
    const job = prometheus.scrape_configs.find((config) => config.job_name === 'acedata-gateway');
    expect(job).toBeDefined();
    expect(job?.metrics_path ?? '/metrics').toBe('/metrics');
    expect(job?.scrape_interval ?? prometheus.global?.scrape_interval).toBe('15s');
    const targets = job?.static_configs.flatMap((config) => config.targets) ?? [];
    // /metrics is on ADMIN_PORT when the compose file sets one, else on PORT.
    const config = loadConfig({ ...environment(service(gatewayName)), ACEDATA_API_TOKEN: 'x' });
    const metricsPort = config.ADMIN_PORT ?? config.PORT;
    expect(targets.map(hostPort)).toEqual([{ host: gatewayName, port: metricsPort }]);
    expect(containerPorts(service(gatewayName))).toContain(config.PORT);
  });

  it('provisions a datasource at the prometheus service, and dashboards from the mounted folder', () => {
    expect(datasources).toHaveLength(1);
    const prometheus = datasources[0];
    expect(prometheus?.type).toBe('prometheus');
    expect(hostPort(prometheus?.url ?? '')).toEqual({
      host: prometheusName,
      port: containerPorts(service(prometheusName))[0],
    });

    const providers = parseYaml(read(`${provisioning}/dashboards/dashboards.yml`)) as {
      providers: { type: string; options: { path: string } }[];
    };
    const path = providers.providers[0]?.options.path ?? '';
    const dashboardsSource = mountedAt(grafanaName, path);
    expect(readdirSync(join(ROOT, dashboardsSource))).toContain('acedata-gateway.json');
    const home = environment(service(grafanaName)).GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH;
    expect(home).toBe(`${path}/acedata-gateway.json`);
    // Admin password from the environment with a default; anonymous users may only look.
    expect(environment(service(grafanaName))).toMatchObject({
      GF_SECURITY_ADMIN_PASSWORD: 'admin',
      GF_AUTH_ANONYMOUS_ORG_ROLE: 'Viewer',
    });
    expect(JSON.stringify(composeRaw)).toContain('${GRAFANA_ADMIN_PASSWORD:-');
  });

  it('finds metric names in PromQL (the helper the dashboard check relies on)', () => {
    expect(
      metricNames(
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{x="y z"}[5m]))) / ignoring(q) b offset 1h',
      ),
    ).toEqual(['a_bucket', 'b']);
  });

  describe('the dashboard', () => {
    const dashboard = JSON.parse(read('deploy/grafana/dashboards/acedata-gateway.json')) as {
      uid: string;
      schemaVersion: number;
      panels: Panel[];
    };
    const panels = allPanels(dashboard.panels);
    const queryPanels = panels.filter((panel) => panel.type !== 'row');
    const exprs = queryPanels.flatMap((panel) => (panel.targets ?? []).map((t) => t.expr ?? ''));

    it('is a Grafana dashboard whose every query uses the provisioned datasource', () => {
      const uid = datasources[0]?.uid;
      expect(uid).toBe('prometheus');
      expect(dashboard.uid).toBe('acedata-gateway');
      expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
      const ids = panels.map((panel) => panel.id);
      expect(new Set(ids).size).toBe(ids.length);
      for (const panel of queryPanels) {
        expect(panel.datasource?.uid, panel.title).toBe(uid);
        expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
        for (const target of panel.targets ?? []) expect(target.datasource?.uid).toBe(uid);
        const grid = panel.gridPos;
        expect(grid && grid.x >= 0 && grid.w > 0 && grid.x + grid.w <= 24, panel.title).toBe(true);
      }
    });

    it('queries only the gateway’s metrics, and every one of them', () => {
      const used = new Set(exprs.flatMap(metricNames));
      expect([...used].filter((name) => !QUERYABLE.has(name))).toEqual([]);
      const base = (name: string) => name.replace(/_(bucket|count|sum)$/, '');
      const covered = new Set([...used].map((name) => (QUERYABLE.has(name) ? base(name) : name)));
      expect(GATEWAY_METRICS.filter((name) => !covered.has(name))).toEqual([]);
    });

    it('shows the panels an operator looks for', () => {
      const expected = [
        'sum by (status) (rate(gateway_requests_total[5m]))',
        'sum by (client) (rate(gateway_requests_total[5m]))',
        'sum(rate(gateway_cache_events_total{event="hit"}[5m])) / sum(rate(gateway_cache_events_total[5m]))',
        'histogram_quantile(0.5, sum by (le) (rate(gateway_upstream_duration_seconds_bucket[5m])))',
        'histogram_quantile(0.95, sum by (le) (rate(gateway_upstream_duration_seconds_bucket[5m])))',
        'histogram_quantile(0.99, sum by (le) (rate(gateway_upstream_duration_seconds_bucket[5m])))',
        'sum by (client) (rate(gateway_rate_limited_total[5m]))',
        'sum(increase(gateway_upstream_calls_saved_total[1h]))',
        'sum(rate(gateway_upstream_calls_saved_total[5m]))',
        'sum by (status) (rate(gateway_upstream_requests_total[5m]))',
        'sum(rate(gateway_upstream_retries_total[5m]))',
        'gateway_circuit_state',
      ];
      expect(expected.filter((expr) => !exprs.includes(expr))).toEqual([]);
      expect(exprs.some((expr) => expr.includes('gateway_request_duration_seconds_bucket'))).toBe(
        true,
      );
    });
  });
});

describe('Dockerfile', () => {
  it('builds on Node 24 in stages, installing production dependencies only', () => {
    const froms = dockerfile.filter((i) => i.keyword === 'FROM').map((i) => i.args.split(/\s+/)[0]);
    expect(froms.length).toBeGreaterThanOrEqual(2);
    for (const image of froms) expect(image).toMatch(/^node:24(?:[.-]|$)/);
    const runs = dockerfile.filter((i) => i.keyword === 'RUN').map((i) => i.args);
    expect(runs.some((run) => /\bnpm ci\b.*--omit=dev/.test(run))).toBe(true);
    expect(
      runs.filter((run) => /\bnpm (ci|install)\b/.test(run) && !run.includes('--omit=dev')),
    ).toEqual([]);
  });

  it('runs src/server.ts as a non-root user in production mode', () => {
    expect(execForm(one('CMD'))).toEqual(['node', 'src/server.ts']);
    expect(existsSync(join(ROOT, 'src/server.ts'))).toBe(true);
    expect(one('USER')).not.toMatch(/^(root|0)(:|$)/);
    const userAt = runtime.findIndex((i) => i.keyword === 'USER');
    expect(userAt).toBeLessThan(runtime.findIndex((i) => i.keyword === 'CMD'));
    expect(one('ENV')).toMatch(/\bNODE_ENV=production\b/);
    expect(one('STOPSIGNAL')).toBe('SIGTERM');
  });

  it('exposes the default PORT and checks the /healthz route the app serves', () => {
    expect(Number(one('EXPOSE'))).toBe(loadConfig({ ACEDATA_API_TOKEN: 'x' }).PORT);
    expect(healthcheckCommand().join(' ')).toContain("'/healthz'");
    expect(read('src/plugins/health.ts')).toContain("'/healthz'");
  });

  it('copies only sources that exist, are sent in the build context, and come from earlier stages', () => {
    const ignore = read('.dockerignore');
    const stageNames = dockerfile
      .filter((i) => i.keyword === 'FROM')
      .map((i) => /\bAS\s+(\S+)/i.exec(i.args)?.[1]);
    for (const instruction of dockerfile.filter((i) => i.keyword === 'COPY')) {
      const { from, sources } = copyArgs(instruction.args);
      if (from !== undefined) {
        expect(stageNames.slice(0, instruction.stage)).toContain(from);
        continue;
      }
      for (const source of sources) {
        expect(existsSync(join(ROOT, source)), source).toBe(true);
        // A directory: every TypeScript file under it must reach the build.
        const files = statSync(join(ROOT, source)).isDirectory()
          ? readdirSync(join(ROOT, source), { recursive: true, encoding: 'utf8' })
              .filter((file) => file.endsWith('.ts'))
              .map((file) => posix.join(source, file.split('\\').join('/')))
          : [source];
        expect(files.length, source).toBeGreaterThan(0);
        const excluded = files.filter((file) => dockerignored(posix.normalize(file), ignore));
        expect(excluded, `${source}: left out of the build context`).toEqual([]);
      }
    }
  });
});

describe('.dockerignore', () => {
  const ignore = read('.dockerignore');

  it('keeps secrets, dependencies and history out of the build context', () => {
    for (const path of [
      'node_modules',
      'node_modules/fastify/package.json',
      '.env',
      'clients.json',
      '.git',
      '.git/HEAD',
      'test/app.test.ts',
      'src/.env',
      'src/node_modules/x',
    ]) {
      expect(dockerignored(path, ignore), path).toBe(true);
    }
  });

  it('sends what the image needs', () => {
    for (const path of [
      'package.json',
      'package-lock.json',
      'src/server.ts',
      'src/plugins/health.ts',
    ]) {
      expect(dockerignored(path, ignore), path).toBe(false);
    }
  });
});

describe('the image, run as processes', () => {
  let dir: string;
  let child: ChildProcess | undefined;
  let stdout = '';
  let stderr = '';
  let port = 0;

  /** Lays out WORKDIR the way the final stage's COPY lines do; the deps stage's output is linked. */
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'agw-image-'));
    const app = join(dir, workdir().replace(/^\//, ''));
    await mkdir(app, { recursive: true });
    for (const instruction of runtime.filter((i) => i.keyword === 'COPY')) {
      const { from, sources, dest } = copyArgs(instruction.args);
      for (const source of sources) {
        const into = dest.endsWith('/') ? join(app, dest, basename(source)) : join(app, dest);
        await mkdir(dirname(into), { recursive: true });
        if (from !== undefined) await symlink(join(ROOT, basename(source)), into);
        else await cp(join(ROOT, source), into, { recursive: true });
      }
    }
    const clientsFile = join(dir, 'config', 'clients.json');
    await writeClientsFile(clientsFile, {
      clients: [{ id: 'deploy-test', keySha256: hashClientKey('agw_deploy_test_key_123456789') }],
    });

    const [command, ...args] = execForm(one('CMD'));
    expect(command).toBe('node');
    child = spawn(process.execPath, args, {
      cwd: app,
      env: {
        NODE_ENV: 'production',
        ACEDATA_API_TOKEN: 'deploy-test-token',
        ACEDATA_BASE_URL: 'http://127.0.0.1:9',
        GATEWAY_CLIENTS_FILE: clientsFile,
        HOST: '127.0.0.1',
        PORT: '0',
        LOG_LEVEL: 'info',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
    });
    port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no listen line:\n${stdout}\n${stderr}`)),
        BOUND_MS,
      );
      child?.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
        stdout += chunk;
        const match = /Server listening at http:\/\/127\.0\.0\.1:(\d+)/.exec(stdout);
        if (match) {
          clearTimeout(timer);
          resolve(Number(match[1]));
        }
      });
      child?.once('exit', (code) => reject(new Error(`exited ${code}:\n${stderr}`)));
    });
  }, BOUND_MS + 5_000);

  afterAll(async () => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  /** Runs the HEALTHCHECK command the way the engine would inside the container. */
  const healthcheck = (env: Record<string, string>) =>
    new Promise<number | null>((resolve) => {
      const [command, ...args] = healthcheckCommand();
      expect(command).toBe('node');
      const probe = spawn(process.execPath, args, { env, stdio: 'ignore' });
      const timer = setTimeout(() => probe.kill('SIGKILL'), BOUND_MS);
      probe.once('exit', (code) => {
        clearTimeout(timer);
        resolve(code);
      });
    });

  it('HEALTHCHECK passes against the running CMD', async () => {
    expect(await healthcheck({ PORT: String(port) })).toBe(0);
  });

  it('HEALTHCHECK fails when nothing answers', async () => {
    const closed = await new Promise<number>((resolve) => {
      const server = createServer();
      server.listen(0, '127.0.0.1', () => {
        const free = (server.address() as AddressInfo).port;
        server.close(() => resolve(free));
      });
    });
    expect(await healthcheck({ PORT: String(closed) })).toBe(1);
  });

  it('serves every metric the dashboard may query', async () => {
    const response = await fetch(`http://127.0.0.1:${port}/metrics`);
    expect(response.status).toBe(200);
    const text = await response.text();
    const missing = GATEWAY_METRICS.filter((name) => !text.includes(`# TYPE ${name} `));
    expect(missing).toEqual([]);
  });

  it(
    'stops on the STOPSIGNAL',
    async () => {
      const exited = new Promise<number | null>((resolve) => child?.once('exit', resolve));
      child?.kill(one('STOPSIGNAL') as NodeJS.Signals);
      expect(await exited).toBe(0);
    },
    BOUND_MS,
  );
});
