/**
 * `npm run clients -- <command>`: manage the gateway's client keys, and see their usage.
 * docs/clients.md is the manual (every command, its output, when changes take effect).
 *
 * Settings come from the environment and `.env`, read exactly as the server reads them
 * (loadDotEnv, then the same zod schema through loadSettings); `--file` wins over
 * GATEWAY_CLIENTS_FILE. Writers take the clients file's lock (./lock.ts), so concurrent runs lose
 * nothing. Only the SHA-256 of a key is stored; the key is printed once and never again.
 *
 * Output contract (tools rely on it): the last line of `add`/`rotate` is the bare key; with
 * --json they print one line {"id","key","file"}; `remove --json` prints {"id","file","removed"};
 * `list --json` prints {"file","clients":[{"id","rateLimit"?,"quota"?,"maxInFlight"?}]};
 * `usage --json` prints GET /usage's body (`usage <id> --json`: GET /usage/<id>'s).
 * Errors go to stderr. Exit codes: 0 ok; 1 error; 2 usage error (also prints the usage).
 */
import { parseArgs } from 'node:util';
import { ConfigError, type EnvConfig, loadDotEnv, loadSettings } from '../config.ts';
import { CliError, type ClientsCliIo, type CommandContext } from './cli-context.ts';
import { usageCommand } from './cli-usage.ts';
import { updateClientsFile } from './lock.ts';
import {
  CLIENT_ID_PATTERN,
  type ClientRecord,
  generateClientKey,
  hashClientKey,
  readClientsFile,
} from './registry.ts';

export type { ClientsCliIo };

export const CLIENTS_CLI_USAGE = `Usage: npm run clients -- <command> [options]

Commands:
  add <id> [--max N] [--window S] [--quota N] [--max-in-flight N]
                  create a client and print its key (once; only its hash is stored)
  list            list clients and their limits
  remove <id>     delete a client
  rotate <id>     give a client a new key (printed once)
  usage [id]      today's requests, billed calls, cache hits, refusals per client

Options:
  --file <path>   clients file (default: GATEWAY_CLIENTS_FILE from the environment or .env,
                  else ./data/clients.json)
  --max N         add: rate limit, requests per window
  --window S      add: rate limit window in seconds
                  (give one of --max/--window and the other comes from RATE_LIMIT_MAX /
                  RATE_LIMIT_WINDOW_SECONDS; give neither for the gateway default)
  --quota N       add: billed upstream calls per day
  --max-in-flight N
                  add: requests of this client in flight at once (default CLIENT_MAX_IN_FLIGHT)
  --json          machine-readable output
  -h, --help      show this help

Running gateways pick up add, remove and rotate within CLIENTS_RELOAD_INTERVAL_MS (default 1 s),
or at once on SIGHUP. usage reads Redis when REDIS_URL is set (every replica), else asks the
gateway's admin port (ADMIN_HOST:ADMIN_PORT).

A client id is 1-64 characters from A-Z a-z 0-9 . _ -
Exit codes: 0 ok, 1 error, 2 usage error.
`;

const OPTIONS = {
  file: { type: 'string' },
  max: { type: 'string' },
  window: { type: 'string' },
  quota: { type: 'string' },
  'max-in-flight': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

type OptionName = keyof typeof OPTIONS;

interface CommandSpec {
  /** Positional client ids: required, optional, or none. */
  id: 'required' | 'optional' | 'none';
  options: readonly OptionName[];
}

const COMMANDS: Record<string, CommandSpec> = {
  add: { id: 'required', options: ['max', 'window', 'quota', 'max-in-flight'] },
  list: { id: 'none', options: [] },
  remove: { id: 'required', options: [] },
  rotate: { id: 'required', options: [] },
  usage: { id: 'optional', options: [] },
};
const COMMON_OPTIONS: readonly OptionName[] = ['file', 'json', 'help'];

/** A problem with the command line: message + usage, exit 2. */
class UsageError extends Error {}

/**
 * Runs one CLI invocation; returns the exit code. Never calls process.exit. `io.env` should
 * already hold `.env` (the entry point below loads it, as the server does).
 */
export async function runClientsCli(argv: string[], io: ClientsCliIo): Promise<number> {
  try {
    return await run(argv, io);
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr(`error: ${err.message}\n\n${CLIENTS_CLI_USAGE}`);
      return 2;
    }
    io.stderr(`error: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}

async function run(argv: string[], io: ClientsCliIo): Promise<number> {
  const { values, positionals } = parseArgv(argv);
  const [command, ...args] = positionals;

  if (values.help || command === 'help') {
    io.stdout(CLIENTS_CLI_USAGE);
    return 0;
  }
  if (command === undefined) throw new UsageError('missing command');
  const spec = COMMANDS[command];
  if (!spec) throw new UsageError(`unknown command "${command}"`);
  checkArguments(command, spec, args);
  for (const name of Object.keys(values) as OptionName[]) {
    if (!COMMON_OPTIONS.includes(name) && !spec.options.includes(name)) {
      throw new UsageError(`--${name} is not an option of ${command}`);
    }
  }
  const id = args[0] ?? '';
  if (args.length === 1 && !CLIENT_ID_PATTERN.test(id)) {
    throw new UsageError(
      `invalid client id ${JSON.stringify(id)}: use 1-64 characters from A-Z a-z 0-9 . _ -`,
    );
  }
  const settings = <K extends keyof EnvConfig>(names: readonly K[]) => {
    try {
      return loadSettings(io.env, names);
    } catch (err) {
      if (err instanceof ConfigError) throw new CliError(err.message);
      throw err;
    }
  };
  const file = values.file || settings(['GATEWAY_CLIENTS_FILE']).GATEWAY_CLIENTS_FILE;
  const context: CommandContext = { id, file, json: values.json === true, values, io, settings };

  switch (command) {
    case 'add':
      return add(context);
    case 'list':
      return list(context);
    case 'remove':
      return remove(context);
    case 'rotate':
      return rotate(context);
    default:
      return usageCommand(context);
  }
}

function checkArguments(command: string, spec: CommandSpec, args: string[]): void {
  const max = spec.id === 'none' ? 0 : 1;
  if (args.length > max || (spec.id === 'required' && args.length === 0)) {
    throw new UsageError(
      spec.id === 'none'
        ? `${command} takes no arguments`
        : spec.id === 'optional'
          ? `${command} takes at most one client id (got ${args.length} arguments)`
          : `${command} takes exactly one client id${args.length > 1 ? ` (got ${args.length} arguments)` : ''}`,
    );
  }
}

function parseArgv(argv: string[]) {
  try {
    return parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
}

async function add(ctx: CommandContext): Promise<number> {
  const { id, file } = ctx;
  // Parse everything before touching the file.
  const max = intOption(ctx, 'max');
  const window = intOption(ctx, 'window');
  const quota = intOption(ctx, 'quota');
  const maxInFlight = intOption(ctx, 'max-in-flight');

  let rateLimit: ClientRecord['rateLimit'];
  if (max !== undefined || window !== undefined) {
    // The missing half is the gateway's default, read and checked as the gateway does.
    const defaults = ctx.settings(['RATE_LIMIT_MAX', 'RATE_LIMIT_WINDOW_SECONDS']);
    rateLimit = {
      max: max ?? defaults.RATE_LIMIT_MAX,
      windowSeconds: window ?? defaults.RATE_LIMIT_WINDOW_SECONDS,
    };
  }
  const reload = reloadNote(ctx);
  const key = generateClientKey();
  const record: ClientRecord = {
    id,
    keySha256: hashClientKey(key),
    ...(rateLimit && { rateLimit }),
    ...(quota !== undefined && { quota: { upstreamCallsPerDay: quota } }),
    ...(maxInFlight !== undefined && { maxInFlight }),
  };
  await updateClientsFile(file, (contents) => {
    if (contents.clients.some((c) => c.id === id)) {
      throw new CliError(
        `client "${id}" already exists in ${file}; use \`rotate ${id}\` for a new key or \`remove ${id}\` first`,
      );
    }
    return { file: { clients: [...contents.clients, record] }, result: undefined };
  });

  printKey(ctx, key, [
    `client "${id}" added to ${file}`,
    `rate limit: ${describeRateLimit(record)}`,
    `quota: ${describeQuota(record)}`,
    `in flight: ${describeInFlight(record)}`,
    `running gateways accept the key ${reload}`,
  ]);
  return 0;
}

async function list({ file, json, io }: CommandContext): Promise<number> {
  const { clients } = await readClientsFile(file);
  // Never print keySha256: copy only the fields meant for humans.
  const shown = clients.map(({ id, rateLimit, quota, maxInFlight }) => ({
    id,
    rateLimit,
    quota,
    maxInFlight,
  }));
  if (json) {
    io.stdout(`${JSON.stringify({ file, clients: shown })}\n`);
    return 0;
  }
  if (shown.length === 0) {
    io.stdout(`no clients in ${file}; add one with: npm run clients -- add <id>\n`);
    return 0;
  }
  const width = Math.max(...shown.map((c) => c.id.length));
  const lines = shown.map(
    (c) =>
      `${c.id.padEnd(width)}  rate limit: ${describeRateLimit(c)}; quota: ${describeQuota(c)}; ` +
      `in flight: ${describeInFlight(c)}\n`,
  );
  io.stdout(
    `${shown.length} client${shown.length === 1 ? '' : 's'} in ${file}:\n${lines.join('')}`,
  );
  return 0;
}

async function remove(ctx: CommandContext): Promise<number> {
  const { id, file, json, io } = ctx;
  const reload = reloadNote(ctx);
  const remaining = await updateClientsFile(file, (contents) => {
    const kept = contents.clients.filter((c) => c.id !== id);
    if (kept.length === contents.clients.length) throw unknownClient(id, file);
    return { file: { clients: kept }, result: kept.length };
  });
  if (json) io.stdout(`${JSON.stringify({ id, file, removed: true })}\n`);
  else {
    io.stdout(
      `client "${id}" removed from ${file}\nrunning gateways stop accepting its key ${reload}\n`,
    );
  }
  if (remaining === 0) {
    io.stderr(`warning: ${file} now has no clients; the gateway will reject every request\n`);
  }
  return 0;
}

async function rotate(ctx: CommandContext): Promise<number> {
  const { id, file } = ctx;
  const reload = reloadNote(ctx);
  const key = generateClientKey();
  await updateClientsFile(file, (contents) => {
    const existing = contents.clients.find((c) => c.id === id);
    if (!existing) throw unknownClient(id, file);
    const updated: ClientRecord = { ...existing, keySha256: hashClientKey(key) };
    const clients = contents.clients.map((c) => (c.id === id ? updated : c));
    return { file: { clients }, result: undefined };
  });
  printKey(ctx, key, [
    `client "${id}": key rotated in ${file}`,
    `running gateways switch to the new key ${reload}; until then the old key still works`,
  ]);
  return 0;
}

/** The truth about when a change reaches running gateways. */
function reloadNote(ctx: CommandContext): string {
  const ms = ctx.settings(['CLIENTS_RELOAD_INTERVAL_MS']).CLIENTS_RELOAD_INTERVAL_MS;
  const seconds = Math.max(1, Math.ceil(ms / 1000));
  return `within about ${seconds} s (CLIENTS_RELOAD_INTERVAL_MS=${ms}), or at once on SIGHUP`;
}

function printKey(ctx: CommandContext, key: string, header: string[]): void {
  const { id, file, json, io } = ctx;
  if (json) {
    io.stdout(`${JSON.stringify({ id, key, file })}\n`);
    return;
  }
  io.stdout(
    [
      ...header,
      'key (shown once, store it now; send it as "authorization: Bearer <key>"):',
      key,
      '',
    ].join('\n'),
  );
}

function describeRateLimit({ rateLimit }: Pick<ClientRecord, 'rateLimit'>): string {
  return rateLimit
    ? `${rateLimit.max} requests per ${rateLimit.windowSeconds} s`
    : 'gateway default';
}

function describeQuota({ quota }: Pick<ClientRecord, 'quota'>): string {
  return quota ? `${quota.upstreamCallsPerDay} upstream calls per day` : 'none';
}

function describeInFlight({ maxInFlight }: Pick<ClientRecord, 'maxInFlight'>): string {
  return maxInFlight === undefined ? 'gateway default' : `${maxInFlight} requests at once`;
}

function unknownClient(id: string, file: string): CliError {
  return new CliError(`no client "${id}" in ${file}; see \`npm run clients -- list\``);
}

/** A positive integer option's value, or undefined when it was not given. */
function intOption(ctx: CommandContext, name: OptionName): number | undefined {
  const text = ctx.values[name];
  if (typeof text !== 'string') return undefined;
  const trimmed = text.trim();
  const n = /^[1-9][0-9]*$/.test(trimmed) ? Number(trimmed) : Number.NaN;
  if (!Number.isSafeInteger(n)) {
    throw new UsageError(`--${name} must be a positive integer, got "${text}"`);
  }
  return n;
}

if (import.meta.main) {
  loadDotEnv();
  process.exitCode = await runClientsCli(process.argv.slice(2), {
    stdout: (s) => process.stdout.write(s),
    stderr: (s) => process.stderr.write(s),
    env: process.env,
  });
}
