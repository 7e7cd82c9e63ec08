/**
 * Deployment files (Dockerfile, .dockerignore, docker-compose.yml, docker/entrypoint.sh, deploy/)
 * checked by behaviour, without a container engine:
 *
 * - the compose file is validated against the Compose Specification's JSON schema (vendored in
 *   test/vendor), and its ports, mounts, environment and Prometheus target are checked against
 *   what the gateway's own configuration makes of them;
 * - the image is laid out in a temp directory the way the Dockerfile's COPY lines lay it out
 *   (dist/ compiled with the build stage's command), and its ENTRYPOINT, CMD and HEALTHCHECK run
 *   as plain processes: the compose file's Docker-only steps (`clients add` through the
 *   entrypoint, the host CLI's default path, the server), the admin port, the drain on STOPSIGNAL;
 * - the entrypoint's ownership fix and privilege drop run for real when the test runs as root
 *   (skipped otherwise, with the reason in the test name).
 *
 * ../shared/tools/compose-check.sh runs the same stack in Docker end to end.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import {
  chmod,
  chown,
  cp,
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { createRequire } from 'node:module';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, dirname, join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv, type SchemaObject } from 'ajv';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { loadConfig } from '../src/config.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const read = (path: string) => readFileSync(join(ROOT, path), 'utf8');
const BOUND_MS = 15_000;
/** tsc on a busy machine (two test processes beside this one). */
const COMPILE_MS = 120_000;

/** SHA-256 of the vendored schema's compact JSON (see test/vendor/README.md). */
const COMPOSE_SCHEMA_SHA256 = 'b2dc5daa8ce86f3b6a82dfe17afa0b5428b21d51a18bfb6e1ef304cf88e933ae';

const IS_ROOT = process.getuid?.() === 0;
const HAS_SETPRIV = spawnSync('setpriv', ['--version']).status === 0;
const AS_ROOT = IS_ROOT && HAS_SETPRIV;
const ROOT_ONLY = AS_ROOT
  ? ''
  : ` (skipped: needs root and setpriv; running as uid ${process.getuid?.()}${HAS_SETPRIV ? '' : ', no setpriv'})`;
/** The image's node user (node:24-slim), which the entrypoint hands /data to. */
const NODE_UID = 1000;
const NOBODY = 65534;

// ---------------------------------------------------------------------------------------------
// Processes

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion with exactly `env`, bounded. */
function run(
  command: string,
  args: string[],
  options: { cwd: string; env: Record<string, string>; timeoutMs?: number },
): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: options.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
    });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${command} ${args.join(' ')}: no exit within the bound\n${stderr}`));
    }, options.timeoutMs ?? BOUND_MS);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** `setpriv` prefix that runs a command as `uid` (when this test runs as root), else nothing. */
const asUser = (uid: number): string[] =>
  AS_ROOT ? ['setpriv', `--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--'] : [];

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

/** `ENV A=1 B=2` (and the legacy `ENV A 1`) → { A: '1', B: '2' }. */
function envArgs(args: string): Record<string, string> {
  const legacy = /^([A-Za-z_][A-Za-z0-9_]*)\s+([^=]*)$/.exec(args);
  if (legacy?.[1]) return { [legacy[1]]: legacy[2] ?? '' };
  return Object.fromEntries(
    [...args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)/g)].map(([, k, v]) => [
      k as string,
      (v ?? '').startsWith('"') ? (JSON.parse(v as string) as string) : (v ?? ''),
    ]),
  );
}

const dockerfileText = read('Dockerfile');
const dockerfile = parseDockerfile(dockerfileText);
const finalStage = Math.max(...dockerfile.map((instruction) => instruction.stage));
const runtime = dockerfile.filter((instruction) => instruction.stage === finalStage);
const stageNames = dockerfile
  .filter((i) => i.keyword === 'FROM')
  .map((i) => /\bAS\s+(\S+)/i.exec(i.args)?.[1]);
const stageOf = (name: string) => dockerfile.filter((i) => i.stage === stageNames.indexOf(name));
const one = (keyword: string, instructions = runtime): string => {
  const found = instructions.filter((instruction) => instruction.keyword === keyword);
  expect(found, `exactly one ${keyword} in the final stage`).toHaveLength(1);
  return found[0]?.args ?? '';
};
const imageEnv = (): Record<string, string> =>
  Object.assign({}, ...runtime.filter((i) => i.keyword === 'ENV').map((i) => envArgs(i.args)));
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

interface ComposeService {
  image?: string;
  build?: string | { context?: string; dockerfile?: string };
  user?: string;
  profiles?: string[];
  environment?: Record<string, string | number | boolean | null> | string[];
  env_file?: string | string[];
  ports?: (string | number | { target: number | string; host_ip?: string })[];
  expose?: (string | number)[];
  volumes?: (string | { type: string; source?: string; target: string; read_only?: boolean })[];
  depends_on?: string[] | Record<string, { condition: string }>;
  healthcheck?: { test?: string | string[] };
  stop_grace_period?: string;
  stop_signal?: string;
  read_only?: boolean;
  tmpfs?: string | string[];
  restart?: string;
  cap_drop?: string[];
  cap_add?: string[];
  security_opt?: string[];
  init?: boolean;
}
interface ComposeFile {
  services: Record<string, ComposeService>;
}

/**
 * Compose's variable substitution with `vars` set (none: a machine with only the defaults):
 * `${X:-d}` → X if set and not empty, else d; `${X-d}` → X if set, else d; `${X}`/`$X` → X or '';
 * `$$` → `$`; `${X:?msg}` fails when X is unset.
 */
function interpolate(value: unknown, vars: Record<string, string> = {}): unknown {
  if (typeof value === 'string') {
    return value.replace(
      /\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
      (whole, braced: string | undefined, operator: string | undefined, operand = '', bare) => {
        if (whole === '$$') return '$';
        const name = (braced ?? bare) as string;
        const set = name in vars;
        const val = vars[name] ?? '';
        if (operator === ':-') return val !== '' ? val : operand;
        if (operator === '-') return set ? val : operand;
        if (operator === ':?' || operator === '?') {
          if (!set) throw new Error(`compose needs \${${name}} set: ${operand}`);
          return val;
        }
        if (operator === ':+') return val !== '' ? operand : '';
        if (operator === '+') return set ? operand : '';
        return val;
      },
    );
  }
  if (Array.isArray(value)) return value.map((item) => interpolate(item, vars));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value).map(([key, item]) => [key, interpolate(item, vars)]),
    );
  }
  return value;
}

const composeRaw: unknown = parseYaml(read('docker-compose.yml'));
const composeWith = (vars: Record<string, string> = {}) =>
  interpolate(composeRaw, vars) as ComposeFile;
const compose = composeWith();
const services = compose.services;
const service = (name: string, file = compose): ComposeService => {
  const found = file.services[name];
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

/** Published ports as { hostIp, container }; short syntax `[ip:]host:container[/proto]`. */
function published(svc: ComposeService): { hostIp: string; container: number }[] {
  return (svc.ports ?? []).map((port) => {
    if (typeof port === 'object')
      return { hostIp: port.host_ip ?? '', container: Number(port.target) };
    const parts = String(port).split(':');
    const container = Number((parts.pop() ?? '').split('/')[0]);
    return { hostIp: parts.length === 2 ? (parts[0] ?? '') : '', container };
  });
}
const containerPorts = (svc: ComposeService) => published(svc).map((port) => port.container);

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

/** What the gateway makes of the compose file's environment (the token comes from .env). */
const composeConfig = () =>
  loadConfig({
    ...imageEnv(),
    ...environment(service(gatewayName)),
    ACEDATA_API_TOKEN: 'deploy-test-token',
  });

// ---------------------------------------------------------------------------------------------
// PromQL and the dashboard

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
const dashboard = JSON.parse(read('deploy/grafana/dashboards/acedata-gateway.json')) as {
  uid: string;
  schemaVersion: number;
  timezone?: string;
  templating?: { list: { name: string; query?: { query?: string } | string }[] };
  panels: Panel[];
};
const panels = allPanels(dashboard.panels);
const queryPanels = panels.filter((panel) => panel.type !== 'row');
const exprs = queryPanels.flatMap((panel) => (panel.targets ?? []).map((t) => t.expr ?? ''));
/** Histogram series → their metric family, as `# TYPE` lines name it. */
const family = (name: string) => name.replace(/_(bucket|count|sum)$/, '');
const dashboardFamilies = [...new Set(exprs.flatMap(metricNames).map(family))].sort();

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

    for (const file of [compose, composeWith({ GATEWAY_UID: '1001', GATEWAY_GID: '1001' })]) {
      const valid = validate(file);
      expect(valid ? [] : ajv.errorsText(validate.errors, { separator: '\n' }).split('\n')).toEqual(
        [],
      );
    }
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

  it('gives the gateway an environment it accepts, pointing at the redis service', () => {
    const config = composeConfig();
    const redisUrl = new URL(config.REDIS_URL ?? '');
    expect(redisUrl.protocol).toBe('redis:');
    expect(Object.keys(services)).toContain(redisUrl.hostname);
    expect(redisUrl.port === '' ? 6379 : Number(redisUrl.port)).toBe(6379);
    expect(service('gateway').env_file).toBe('.env');
  });

  it('publishes only the API port; the admin port listens on the compose network only', () => {
    const gateway = service('gateway');
    const config = composeConfig();
    expect(config.HOST).toBe('0.0.0.0');
    expect(containerPorts(gateway)).toEqual([config.PORT]);
    // /metrics, /docs, /openapi.json and /usage: a port of its own, reachable by Prometheus.
    expect(config.ADMIN_PORT).not.toBe(config.PORT);
    expect(config.ADMIN_HOST).toBe('0.0.0.0');
    expect(containerPorts(gateway)).not.toContain(config.ADMIN_PORT);
    expect((gateway.expose ?? []).map(Number)).toEqual([config.ADMIN_PORT]);
    // Outside containers the admin port stays on loopback unless told otherwise.
    expect(loadConfig({ ACEDATA_API_TOKEN: 'deploy-test-token' }).ADMIN_HOST).toBe('127.0.0.1');
    // Nothing else is published beyond loopback.
    for (const [name, svc] of Object.entries(services)) {
      if (name === gatewayName) continue;
      for (const port of published(svc)) expect(port.hostIp, name).toBe('127.0.0.1');
    }
  });

  it('mounts the ./data directory where the clients file is, the same file the host CLI writes by default', () => {
    const gateway = service('gateway');
    const inContainer = composeConfig().GATEWAY_CLIENTS_FILE;
    const dataDir = posix.dirname(inContainer);
    const mount = binds(gateway).find((bind) => bind.target === dataDir);
    // A directory, not the file: the CLI renames a new file over the old one.
    expect(mount, `a bind mount of the directory ${dataDir}`).toBeDefined();
    expect(binds(gateway).some((bind) => bind.target === inContainer)).toBe(false);
    expect(mount?.readOnly).toBe(false);
    // The host CLI with no .env (compose-check.sh, a first run) uses the config default.
    const hostDefault = loadConfig({ ACEDATA_API_TOKEN: 'deploy-test-token' }).GATEWAY_CLIENTS_FILE;
    expect(posix.normalize(hostDefault)).toBe(
      posix.normalize(posix.join(mount?.source ?? '', posix.basename(inContainer))),
    );
    // The entrypoint fixes the owner of that same directory.
    expect(imageEnv().GATEWAY_DATA_DIR).toBe(dataDir);
  });

  it('starts the gateway as root only for the entrypoint, with only the capabilities it needs', () => {
    const gateway = service('gateway');
    expect(gateway.user).toBe('0:0');
    expect(execForm(one('ENTRYPOINT'))).toHaveLength(1);
    expect(gateway.cap_drop).toEqual(['ALL']);
    // CHOWN, SETUID, SETGID: the entrypoint. KILL: docker-init (init: true) stays root while the
    // gateway runs as 1000; without KILL it cannot forward SIGTERM (tini exits, no drain).
    expect([...(gateway.cap_add ?? [])].sort()).toEqual(['CHOWN', 'KILL', 'SETGID', 'SETUID']);
    expect(gateway.security_opt).toContain('no-new-privileges:true');
    expect(gateway.read_only).toBe(true);
    expect([gateway.tmpfs].flat()).toContain('/tmp');
    expect(gateway.init).toBe(true);
  });

  it('hands GATEWAY_UID/GATEWAY_GID to the entrypoint, set or not', () => {
    expect(environment(service('gateway'))).toMatchObject({ GATEWAY_UID: '', GATEWAY_GID: '' });
    const set = composeWith({ GATEWAY_UID: '1001', GATEWAY_GID: '1002' });
    expect(environment(service('gateway', set))).toMatchObject({
      GATEWAY_UID: '1001',
      GATEWAY_GID: '1002',
    });
  });

  it('outlasts the drain on stop, and restarts', () => {
    const gateway = service('gateway');
    const shutdownMs = loadConfig({ ACEDATA_API_TOKEN: 'deploy-test-token' }).SHUTDOWN_TIMEOUT_MS;
    expect(durationMs(gateway.stop_grace_period ?? '10s')).toBeGreaterThan(shutdownMs);
    expect(gateway.stop_signal ?? one('STOPSIGNAL')).toBe('SIGTERM');
    expect(gateway.restart).toBe('unless-stopped');
  });

  it('mounts only files that exist in the repository (apart from the operator’s ./data)', () => {
    for (const [name, svc] of Object.entries(services)) {
      for (const bind of binds(svc)) {
        if (bind.source === './data') continue;
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

  it('scrapes the gateway service on its admin port every 15 s', () => {
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
    expect(targets.map(hostPort)).toEqual([
      { host: gatewayName, port: composeConfig().ADMIN_PORT },
    ]);
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
    const grafanaEnv = environment(service(grafanaName));
    expect(grafanaEnv.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH).toBe(
      `${path}/acedata-gateway.json`,
    );
    // The admin password comes from the environment, with a default; anonymous users only look.
    expect(grafanaEnv).toMatchObject({
      GF_SECURITY_ADMIN_PASSWORD: 'admin',
      GF_AUTH_ANONYMOUS_ORG_ROLE: 'Viewer',
    });
    expect(
      environment(service(grafanaName, composeWith({ GRAFANA_ADMIN_PASSWORD: 's3cret' })))
        .GF_SECURITY_ADMIN_PASSWORD,
    ).toBe('s3cret');
  });

  it('finds metric names in PromQL (the helper the dashboard check relies on)', () => {
    expect(
      metricNames(
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{x="y z"}[5m]))) / ignoring(q) b offset 1h',
      ),
    ).toEqual(['a_bucket', 'b']);
  });

  describe('the dashboard', () => {
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

    it('shows the panels an operator looks for', () => {
      const expected = [
        'sum by (status) (rate(gateway_requests_total[5m]))',
        'sum(rate(gateway_cache_events_total{event="hit"}[5m])) / sum(rate(gateway_cache_events_total[5m]))',
        'histogram_quantile(0.95, sum by (le) (rate(gateway_upstream_duration_seconds_bucket[5m])))',
        'sum by (client) (rate(gateway_rate_limited_total[5m]))',
        'sum(rate(gateway_upstream_calls_saved_total[5m]))',
        'sum by (status) (rate(gateway_upstream_requests_total[5m]))',
        'gateway_circuit_state',
      ];
      expect(expected.filter((expr) => !exprs.includes(expr))).toEqual([]);
      expect(exprs.some((expr) => expr.includes('gateway_request_duration_seconds_bucket'))).toBe(
        true,
      );
    });

    it('has per-client panels: requests, billed calls against the quota, calls saved, refusals', () => {
      const perClient = exprs.filter((expr) => /\bclient=~"\$client"/.test(expr));
      const kinds = new Set(
        perClient
          .filter((expr) => expr.includes('gateway_client_usage_total'))
          .flatMap((expr) =>
            [...expr.matchAll(/kind=~?"([^"]+)"/g)].flatMap((m) => m[1]?.split('|')),
          ),
      );
      for (const kind of [
        'requests',
        'billed_calls',
        'cache_hits',
        'merged',
        'rate_limited',
        'quota_refused',
        'refused',
      ]) {
        expect(kinds, kind).toContain(kind);
      }
      expect(perClient.some((expr) => expr.includes('gateway_requests_total'))).toBe(true);
      expect(
        perClient.some(
          (expr) => expr.includes('billed_calls') && expr.includes('gateway_client_daily_quota'),
        ),
      ).toBe(true);
      const variable = dashboard.templating?.list.find((v) => v.name === 'client');
      expect(JSON.stringify(variable?.query)).toContain('gateway_client_usage_total');
      // Quotas and usage days reset at UTC midnight, so "today" panels must mean the UTC day.
      expect(dashboard.timezone).toBe('utc');
    });
  });
});

describe('Dockerfile', () => {
  it('has no `# syntax=` directive (it pulls a frontend image; the built-in one handles RUN --mount)', () => {
    const directives = dockerfileText.split('\n').filter((line) => /^#\s*syntax\s*=/i.test(line));
    expect(directives).toEqual([]);
  });

  it('builds on Node 24 in stages; the runtime stage gets production dependencies and dist/ only', () => {
    const froms = dockerfile.filter((i) => i.keyword === 'FROM').map((i) => i.args.split(/\s+/)[0]);
    for (const image of froms) expect(image).toMatch(/^node:24(?:[.-]|$)/);
    const copiedFrom = runtime
      .filter((i) => i.keyword === 'COPY')
      .map((i) => copyArgs(i.args))
      .filter((copy) => copy.from !== undefined);
    for (const copy of copiedFrom) {
      const runs = stageOf(copy.from ?? '')
        .filter((i) => i.keyword === 'RUN')
        .map((i) => i.args);
      if (copy.sources.some((source) => source.endsWith('node_modules'))) {
        // The stage whose node_modules ship installs without dev dependencies, from the lock.
        expect(runs.some((r) => /\bnpm ci\b/.test(r) && r.includes('--omit=dev'))).toBe(true);
      } else {
        expect(copy.sources, `from ${copy.from}`).toEqual(['/app/dist']);
      }
    }
    expect(runtime.filter((i) => i.keyword === 'RUN' && /\bnpm\b/.test(i.args))).toEqual([]);
  });

  it('compiles with the package\'s "build" script into the directory the runtime copies', () => {
    const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string> };
    const build = stageOf('build');
    expect(build.some((i) => i.keyword === 'RUN' && /\bnpm run build\b/.test(i.args))).toBe(true);
    expect(pkg.scripts.build).toBe('tsc -p tsconfig.build.json');
    const tsconfig = JSON.parse(read('tsconfig.build.json')) as {
      compilerOptions: { outDir: string; rewriteRelativeImportExtensions?: boolean };
    };
    expect(posix.join('/app', tsconfig.compilerOptions.outDir)).toBe('/app/dist');
    expect(tsconfig.compilerOptions.rewriteRelativeImportExtensions).toBe(true);
  });

  it('runs as a non-root user by default, in production mode, stopped by SIGTERM', () => {
    expect(one('USER')).not.toMatch(/^(root|0)(:|$)/);
    expect(imageEnv().NODE_ENV).toBe('production');
    expect(one('STOPSIGNAL')).toBe('SIGTERM');
  });

  it("caps V8's young generation with the image's NODE_OPTIONS (it kept ~100 MB after a burst)", () => {
    // Many short-lived objects: an uncapped young generation grows to tens of MB and keeps them.
    const churn =
      'let keep = []; for (let i = 0; i < 2e6; i++) { keep.push({ i }); if (keep.length > 1e5) keep = []; }' +
      "console.log(require('node:v8').getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size)";
    const run = spawnSync(process.execPath, ['-e', churn], {
      env: { PATH: process.env.PATH, NODE_OPTIONS: imageEnv().NODE_OPTIONS },
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(run.status, run.stderr).toBe(0);
    expect(Number(run.stdout)).toBeLessThanOrEqual(4 * 1024 * 1024);
  });

  it('exposes the default API and admin ports', () => {
    const config = loadConfig({ ACEDATA_API_TOKEN: 'deploy-test-token' });
    expect(
      one('EXPOSE')
        .split(/\s+/)
        .map((port) => Number(port.split('/')[0])),
    ).toEqual([config.PORT, config.ADMIN_PORT]);
  });

  it('copies only sources that exist, are sent in the build context, and come from earlier stages', () => {
    const ignore = read('.dockerignore');
    for (const instruction of dockerfile.filter((i) => i.keyword === 'COPY')) {
      const { from, sources } = copyArgs(instruction.args);
      if (from !== undefined) {
        expect(stageNames.slice(0, instruction.stage)).toContain(from);
        continue;
      }
      for (const source of sources) {
        expect(existsSync(join(ROOT, source)), source).toBe(true);
        const files = statSync(join(ROOT, source)).isDirectory()
          ? readdirSync(join(ROOT, source), { recursive: true, encoding: 'utf8' })
              .filter((file) => statSync(join(ROOT, source, file)).isFile())
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

  it('keeps secrets, keys, build output, dependencies and history out of the build context', () => {
    for (const path of [
      'data',
      'data/clients.json',
      'data/clients.json.lock',
      '.env',
      'clients.json',
      'dist/server.js',
      'node_modules/fastify/package.json',
      '.git/HEAD',
      'test/app.test.ts',
      'src/.env',
      'src/node_modules/x',
    ]) {
      expect(dockerignored(path, ignore), path).toBe(true);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// The image, laid out in a temp directory and run as processes

describe('the image, run as processes', () => {
  let root = '';
  let app = '';
  let entrypoint = '';
  let compiled: Result = { code: null, stdout: '', stderr: '' };
  /** A project checkout for the host side of the Docker-only steps (no .env). */
  let project = '';
  /** The host's ./data, mounted at the image's /data. */
  let dataDir = '';
  const keys: Record<string, string> = {};

  /** PATH inside the "image": this Node first (the image's node is on its PATH too). */
  const imagePath = `${dirname(process.execPath)}:/usr/sbin:/usr/bin:/sbin:/bin`;
  /** The compose service's environment as the container sees it, with /data at `dataDir`. */
  const containerEnv = (overrides: Record<string, string> = {}): Record<string, string> => {
    const fromCompose = environment(service(gatewayName));
    const image = imageEnv();
    const relocate = (value: string) =>
      value.startsWith(`${image.GATEWAY_DATA_DIR}/`) || value === image.GATEWAY_DATA_DIR
        ? dataDir + value.slice((image.GATEWAY_DATA_DIR ?? '').length)
        : value;
    const env: Record<string, string> = { PATH: imagePath };
    for (const [key, value] of Object.entries({ ...image, ...fromCompose })) {
      env[key] = relocate(value);
    }
    // Nothing listens for Redis or the upstream here; the container-only addresses become local.
    delete env.REDIS_URL;
    return {
      ...env,
      ACEDATA_API_TOKEN: 'deploy-test-token',
      ACEDATA_BASE_URL: 'http://127.0.0.1:9',
      ...overrides,
    };
  };
  /** `docker compose run --rm gateway <args>`: ENTRYPOINT with args instead of CMD. */
  const composeRun = (args: string[], env = containerEnv()) =>
    run('sh', [entrypoint, ...args], { cwd: app, env });

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'agw-image-'));
    await chmod(root, 0o755); // the node user (uid 1000) reads the image from here
    app = join(root, one('WORKDIR').replace(/^\//, ''));
    await mkdir(app, { recursive: true });
    for (const instruction of runtime.filter((i) => i.keyword === 'COPY')) {
      const { from, sources, dest } = copyArgs(instruction.args);
      for (const source of sources) {
        const base = dest.startsWith('/') ? root : app;
        const into = dest.endsWith('/')
          ? join(base, dest, basename(source))
          : join(base, dest.replace(/^\//, ''));
        await mkdir(dirname(into), { recursive: true });
        if (from === undefined) {
          await cp(join(ROOT, source), into, { recursive: true });
        } else if (basename(source) === 'node_modules') {
          await symlink(join(ROOT, 'node_modules'), into);
        } else {
          // The build stage's `npm run build`, writing where the runtime stage copies from.
          compiled = await run(
            process.execPath,
            [
              join(ROOT, 'node_modules/typescript/bin/tsc'),
              '-p',
              'tsconfig.build.json',
              '--outDir',
              into,
            ],
            { cwd: ROOT, env: { PATH: imagePath }, timeoutMs: COMPILE_MS },
          );
        }
      }
    }
    const [command] = execForm(one('ENTRYPOINT'));
    entrypoint = join(root, (command ?? '').replace(/^\//, ''));

    project = join(root, 'project');
    await mkdir(project);
    dataDir = join(project, 'data');
  }, COMPILE_MS + BOUND_MS);

  afterAll(async () => {
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('compiles src/ without type errors (the build stage fails otherwise)', () => {
    expect(compiled.stdout + compiled.stderr).toBe('');
    expect(compiled.code).toBe(0);
    expect(existsSync(join(app, 'dist/server.js'))).toBe(true);
  });

  it.skipIf(!AS_ROOT)(
    `docker compose run --rm gateway clients add: Docker creates ./data as root, the key lands in it owned by the node user${ROOT_ONLY}`,
    async () => {
      // What Docker does for a missing bind-mount source.
      await mkdir(dataDir, { mode: 0o755 });
      const added = await composeRun(['clients', 'add', 'checkout-service', '--json']);
      expect(added.stderr).toContain('owned by 1000:1000');
      expect(added.code).toBe(0);
      const printed = JSON.parse(added.stdout) as { id: string; key: string };
      expect(printed.id).toBe('checkout-service');
      keys['checkout-service'] = printed.key;
      for (const path of [dataDir, join(dataDir, 'clients.json')]) {
        expect((await stat(path)).uid, path).toBe(NODE_UID);
      }
    },
  );

  it.skipIf(!AS_ROOT)(
    `the host CLI with no .env (compose-check.sh) writes the same file, which stays the node user's${ROOT_ONLY}`,
    async () => {
      const host = await run(
        process.execPath,
        [join(ROOT, 'src/clients/cli.ts'), 'add', 'compose-check', '--json'],
        { cwd: project, env: { PATH: imagePath } },
      );
      expect(host.stderr).toBe('');
      keys['compose-check'] = (JSON.parse(host.stdout) as { key: string }).key;
      const file = JSON.parse(await readFile(join(dataDir, 'clients.json'), 'utf8')) as {
        clients: { id: string }[];
      };
      expect(file.clients.map((c) => c.id)).toEqual(['checkout-service', 'compose-check']);
      // Still the node user's (root on the host keeps the owner; the entrypoint would fix it anyway).
      const id = await composeRun(['id', '-u']);
      expect(id.stdout.trim()).toBe(String(NODE_UID));
      expect((await stat(join(dataDir, 'clients.json'))).uid).toBe(NODE_UID);
    },
  );

  describe('the entrypoint', () => {
    let scratch = '';
    beforeAll(async () => {
      scratch = await mkdtemp(join(tmpdir(), 'agw-entrypoint-'));
      await chmod(scratch, 0o755);
    });
    afterAll(async () => {
      if (scratch) await rm(scratch, { recursive: true, force: true });
    });
    /** A data directory owned by `uid` with `mode`, holding a clients file. */
    const dataDirOwnedBy = async (name: string, uid: number, mode: number) => {
      const dir = join(scratch, name);
      await mkdir(join(dir, 'sub'), { recursive: true });
      await writeFile(join(dir, 'clients.json'), '{"clients":[]}\n', { mode: 0o600 });
      for (const path of [join(dir, 'sub'), join(dir, 'clients.json'), dir]) {
        await chown(path, uid, uid);
      }
      await chmod(join(dir, 'sub'), 0o700);
      await chmod(dir, mode);
      return dir;
    };
    const entry = (
      args: string[],
      dir: string,
      extra: Record<string, string> = {},
      prefix: string[] = [],
    ) => {
      const env = containerEnv({
        GATEWAY_DATA_DIR: dir,
        GATEWAY_CLIENTS_FILE: join(dir, 'clients.json'),
        ...extra,
      });
      const [command, ...rest] = [...prefix, 'sh', entrypoint, ...args];
      return run(command as string, rest, { cwd: app, env });
    };

    it('dispatches `clients …` to the clients CLI, as the user it was started as', async () => {
      const dir = join(scratch, 'plain');
      await mkdir(dir);
      if (AS_ROOT) await chown(dir, NOBODY, NOBODY);
      const added = await entry(['clients', 'add', 'svc', '--json'], dir, {}, asUser(NOBODY));
      expect(added.stderr).toBe('');
      expect(added.code).toBe(0);
      expect(JSON.parse(added.stdout)).toMatchObject({
        id: 'svc',
        file: join(dir, 'clients.json'),
      });
      const listed = await entry(['clients', 'list', '--json'], dir, {}, asUser(NOBODY));
      expect(JSON.parse(listed.stdout)).toMatchObject({ clients: [{ id: 'svc' }] });
      // Started as non-root, it changes no owner and keeps its user.
      const id = await entry(['id', '-u'], dir, {}, asUser(NOBODY));
      expect(id.stdout.trim()).toBe(String(AS_ROOT ? NOBODY : process.getuid?.()));
      if (AS_ROOT) expect((await stat(dir)).uid).toBe(NOBODY);
    });

    it.skipIf(!AS_ROOT)(
      `as root: takes a 0700 directory of another uid, with its files, for the node user and drops to it${ROOT_ONLY}`,
      async () => {
        const dir = await dataDirOwnedBy('foreign', 4321, 0o700);
        const outside = join(scratch, 'outside');
        await writeFile(outside, 'x');
        await symlink(outside, join(dir, 'link'));
        const result = await entry(['sh', '-c', 'id -u; id -g; id -G'], dir);
        expect(result.code).toBe(0);
        expect(result.stdout.trim().split('\n')).toEqual(['1000', '1000', '1000']);
        for (const name of ['', 'clients.json', 'sub']) {
          const info = await stat(join(dir, name));
          expect([info.uid, info.gid], name || '.').toEqual([NODE_UID, NODE_UID]);
        }
        // The link itself changed owner, never what it points to.
        expect((await lstat(join(dir, 'link'))).uid).toBe(NODE_UID);
        expect((await stat(outside)).uid).toBe(0);
        // Nothing to do the second time, so nothing said.
        const again = await entry(['id', '-u'], dir);
        expect(again.stderr).toBe('');
      },
    );

    it.skipIf(!AS_ROOT)(
      `as root with GATEWAY_UID: runs as that uid/gid and changes no owner${ROOT_ONLY}`,
      async () => {
        const dir = await dataDirOwnedBy('own-uid', 4321, 0o755);
        const result = await entry(['sh', '-c', 'id -u; id -g'], dir, {
          GATEWAY_UID: '4321',
          GATEWAY_GID: '',
        });
        expect(result.stdout.trim().split('\n')).toEqual(['4321', '4321']);
        const both = await entry(['id', '-g'], dir, { GATEWAY_UID: '4321', GATEWAY_GID: '4322' });
        expect(both.stdout.trim()).toBe('4322');
        // GATEWAY_UID=0 (compose-check.sh run as root): root, said out loud, nothing chowned.
        const asRoot = await entry(['id', '-u'], dir, { GATEWAY_UID: '0', GATEWAY_GID: '0' });
        expect(asRoot.stdout.trim()).toBe('0');
        expect(asRoot.stderr).toContain('GATEWAY_UID=0');
        expect((await stat(join(dir, 'clients.json'))).uid).toBe(4321);
        const bad = await entry(['id', '-u'], dir, { GATEWAY_UID: '10o1' });
        expect(bad.code).toBe(64);
        expect(bad.stderr).toContain('GATEWAY_UID must be a number');
        expect(bad.stdout).toBe('');
      },
    );
  });

  describe('the server (ENTRYPOINT with the default CMD)', () => {
    let child: ChildProcess | undefined;
    let stdout = '';
    let stderr = '';
    let apiPort = 0;
    let adminPort = 0;
    const exited = () =>
      new Promise<number | null>((resolve) => {
        if (!child || child.exitCode !== null) resolve(child?.exitCode ?? null);
        else child.once('exit', resolve);
      });

    beforeAll(async () => {
      if (!existsSync(join(app, 'dist/server.js'))) return;
      const data = AS_ROOT ? dataDir : join(root, 'server-data');
      if (!AS_ROOT) {
        // As in the compose steps above, without root: one client, written by this user.
        const added = await run(
          'sh',
          [entrypoint, 'clients', 'add', 'checkout-service', '--json'],
          {
            cwd: app,
            env: containerEnv({
              GATEWAY_DATA_DIR: data,
              GATEWAY_CLIENTS_FILE: join(data, 'clients.json'),
            }),
          },
        );
        keys['checkout-service'] = (JSON.parse(added.stdout) as { key: string }).key;
      }
      // Started as compose starts it: as root when we are (the entrypoint drops to node).
      child = spawn('sh', [entrypoint, ...execForm(one('CMD'))], {
        cwd: app,
        env: containerEnv({
          GATEWAY_DATA_DIR: data,
          GATEWAY_CLIENTS_FILE: join(data, 'clients.json'),
          HOST: '127.0.0.1',
          PORT: '0',
          ADMIN_HOST: '127.0.0.1',
          ADMIN_PORT: '0',
          LOG_LEVEL: 'info',
        }),
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
        stderr += chunk;
      });
      const ports = await new Promise<number[]>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no two listen lines:\n${stdout}\n${stderr}`)),
          BOUND_MS,
        );
        child?.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
          stdout += chunk;
          const found = [
            ...stdout.matchAll(/Server listening at http:\/\/127\.0\.0\.1:(\d+)/g),
          ].map((m) => Number(m[1]));
          if (new Set(found).size >= 2) {
            clearTimeout(timer);
            resolve([...new Set(found)]);
          }
        });
        child?.once('exit', (code) => reject(new Error(`exited ${code}:\n${stderr}`)));
      });
      // Which is which, by what each serves.
      for (const port of ports) {
        const res = await fetch(`http://127.0.0.1:${port}/metrics`);
        if (res.status === 200) adminPort = port;
        else apiPort = port;
        await res.body?.cancel();
      }
    }, BOUND_MS + 5_000);

    afterAll(() => {
      if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });

    /** Runs the HEALTHCHECK command the way the engine would inside the container. */
    const healthcheck = (env: Record<string, string>) => {
      const [command, ...args] = healthcheckCommand();
      expect(command).toBe('node');
      return run(process.execPath, args, { cwd: app, env });
    };

    it('serves the API on PORT and the operations routes on ADMIN_PORT only', async () => {
      expect(apiPort, stderr).toBeGreaterThan(0);
      expect(adminPort, stderr).toBeGreaterThan(0);
      for (const path of ['/metrics', '/openapi.json']) {
        const onApi = await fetch(`http://127.0.0.1:${apiPort}${path}`);
        expect(onApi.status, `${path} on the API port`).toBe(404);
        await onApi.body?.cancel();
      }
      const docs = await fetch(`http://127.0.0.1:${adminPort}/openapi.json`);
      expect(docs.status).toBe(200);
      await docs.body?.cancel();
    });

    it.skipIf(!AS_ROOT)(`runs as the node user, not root${ROOT_ONLY}`, async () => {
      const status = await readFile(`/proc/${child?.pid}/status`, 'utf8');
      expect(/^Uid:\s+(\d+)/m.exec(status)?.[1]).toBe(String(NODE_UID));
      expect(/^CapEff:\s+(\S+)/m.exec(status)?.[1]).toBe('0000000000000000');
    });

    it('accepts the keys made by the Docker-only steps, refuses others', async () => {
      const post = async (key: string) => {
        const res = await fetch(`http://127.0.0.1:${apiPort}/captcha/recognition/hcaptcha`, {
          method: 'POST',
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
          body: '{}',
        });
        await res.body?.cancel();
        return res.status;
      };
      expect(Object.keys(keys).length).toBeGreaterThan(0);
      for (const [id, key] of Object.entries(keys)) expect(await post(key), id).not.toBe(401);
      expect(await post('agw_not_a_key_of_anyone_0000000000000000000000')).toBe(401);
    });

    it('HEALTHCHECK passes against the running server', async () => {
      expect((await healthcheck({ PORT: String(apiPort) })).code).toBe(0);
    });

    it('HEALTHCHECK fails when nothing answers', async () => {
      const closed = await new Promise<number>((resolve) => {
        const server = createServer();
        server.listen(0, '127.0.0.1', () => {
          const free = (server.address() as AddressInfo).port;
          server.close(() => resolve(free));
        });
      });
      expect((await healthcheck({ PORT: String(closed) })).code).toBe(1);
    });

    it('serves on the admin port every metric the dashboard queries', async () => {
      const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
      const missing = dashboardFamilies.filter((name) => !text.includes(`# TYPE ${name} `));
      expect(missing).toEqual([]);
    });

    it(
      'drains and exits 0 on the STOPSIGNAL, sent as docker-init would send it',
      async () => {
        const done = exited();
        const signal = one('STOPSIGNAL');
        if (AS_ROOT) {
          // docker-init is root with only the compose file's capabilities, and the gateway runs as
          // uid 1000: the signal must get through with exactly those.
          const caps = (service(gatewayName).cap_add ?? []).map((cap) => `+${cap.toLowerCase()}`);
          const sent = await run(
            'setpriv',
            [
              `--bounding-set=-all,${caps.join(',')}`,
              '--',
              'sh',
              '-c',
              `kill -${signal.replace(/^SIG/, '')} ${child?.pid}`,
            ],
            { cwd: app, env: { PATH: imagePath } },
          );
          expect(sent.stderr).toBe('');
          expect(sent.code).toBe(0);
        } else {
          child?.kill(signal as NodeJS.Signals);
        }
        expect(await done).toBe(0);
        expect(stdout).toContain('"msg":"closed"');
      },
      BOUND_MS,
    );
  });
});
