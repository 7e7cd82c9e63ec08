/**
 * `npm run clients -- <command>`: manage the gateway's client keys.
 *
 *   add <id> [--max N] [--window S] [--quota N]   create a client, print its key once
 *   list                                          ids and limits (never keys or hashes)
 *   remove <id>                                   delete a client
 *   rotate <id>                                   new key for an existing client, printed once
 *
 * File: --file <path>, else $GATEWAY_CLIENTS_FILE, else ./clients.json. Only the SHA-256 of a
 * key is stored; the key itself is printed once and never again.
 *
 * Output of `add` (stdout; `rotate` is the same except the first line, which reads
 * `client "<id>": key rotated in <file>; the old key no longer works`):
 *
 *   client "checkout-service" added to ./clients.json
 *   rate limit: 120 requests per 60 s           (or: rate limit: gateway default)
 *   quota: 5000 upstream calls per day          (or: quota: none)
 *   key (shown once, store it now; send it as "authorization: Bearer <key>"):
 *   agw_<43 base64url characters>
 *
 * The last line is always the bare key, so `... | tail -n 1` captures it. With --json, `add` and
 * `rotate` print one line instead: {"id":"checkout-service","key":"agw_…","file":"./clients.json"}.
 * `list --json` prints {"file":…,"clients":[{"id":…,"rateLimit"?:…,"quota"?:…}]};
 * `remove --json` prints {"id":…,"file":…,"removed":true}.
 *
 * Errors go to stderr. Exit codes: 0 ok; 1 error (duplicate or unknown id, unreadable or invalid
 * file, bad RATE_LIMIT_* environment); 2 usage error (also prints the usage).
 */
import { parseArgs } from 'node:util';
import {
  CLIENT_ID_PATTERN,
  type ClientRecord,
  ClientRegistryError,
  generateClientKey,
  hashClientKey,
  readClientsFile,
  writeClientsFile,
} from './registry.ts';

export interface ClientsCliIo {
  stdout(s: string): void;
  stderr(s: string): void;
  env: NodeJS.ProcessEnv;
}

export const DEFAULT_CLIENTS_FILE = './clients.json';
const DEFAULT_RATE_LIMIT_MAX = 60;
const DEFAULT_RATE_LIMIT_WINDOW_SECONDS = 60;

export const CLIENTS_CLI_USAGE = `Usage: npm run clients -- <command> [options]

Commands:
  add <id> [--max N] [--window S] [--quota N]
                  create a client and print its key (once; only its hash is stored)
  list            list clients and their limits
  remove <id>     delete a client; its key stops working
  rotate <id>     give a client a new key (printed once); the old key stops working

Options:
  --file <path>   clients file (default: $GATEWAY_CLIENTS_FILE, else ${DEFAULT_CLIENTS_FILE})
  --max N         add: rate limit, requests per window
  --window S      add: rate limit window in seconds
                  (give one of --max/--window and the other comes from RATE_LIMIT_MAX /
                  RATE_LIMIT_WINDOW_SECONDS, default ${DEFAULT_RATE_LIMIT_MAX} / ${DEFAULT_RATE_LIMIT_WINDOW_SECONDS}; give neither for the gateway default)
  --quota N       add: billed upstream calls per day
  --json          machine-readable output
  -h, --help      show this help

A client id is 1-64 characters from A-Z a-z 0-9 . _ -
Exit codes: 0 ok, 1 error, 2 usage error.
`;

const OPTIONS = {
  file: { type: 'string' },
  max: { type: 'string' },
  window: { type: 'string' },
  quota: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

type OptionName = keyof typeof OPTIONS;

const COMMANDS: Record<string, { args: number; options: readonly OptionName[] }> = {
  add: { args: 1, options: ['max', 'window', 'quota'] },
  list: { args: 0, options: [] },
  remove: { args: 1, options: [] },
  rotate: { args: 1, options: [] },
};
const COMMON_OPTIONS: readonly OptionName[] = ['file', 'json', 'help'];

/** A problem with the command line: message + usage, exit 2. */
class UsageError extends Error {}
/** A problem with the request or the environment: message only, exit 1. */
class CliError extends Error {}

/** Runs one CLI invocation; returns the exit code. Never calls process.exit. */
export async function runClientsCli(argv: string[], io: ClientsCliIo): Promise<number> {
  try {
    return await run(argv, io);
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr(`error: ${err.message}\n\n${CLIENTS_CLI_USAGE}`);
      return 2;
    }
    if (err instanceof CliError || err instanceof ClientRegistryError) {
      io.stderr(`error: ${err.message}\n`);
      return 1;
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
  if (args.length !== spec.args) {
    throw new UsageError(
      spec.args === 0
        ? `${command} takes no arguments`
        : `${command} takes exactly one client id${args.length > 1 ? ` (got ${args.length} arguments)` : ''}`,
    );
  }
  for (const name of Object.keys(values) as OptionName[]) {
    if (!COMMON_OPTIONS.includes(name) && !spec.options.includes(name)) {
      throw new UsageError(`--${name} is not an option of ${command}`);
    }
  }
  const file = values.file || io.env.GATEWAY_CLIENTS_FILE || DEFAULT_CLIENTS_FILE;
  const json = values.json === true;
  const id = args[0] ?? '';
  if (spec.args === 1 && !CLIENT_ID_PATTERN.test(id)) {
    throw new UsageError(
      `invalid client id ${JSON.stringify(id)}: use 1-64 characters from A-Z a-z 0-9 . _ -`,
    );
  }

  switch (command) {
    case 'add':
      return add(id, file, json, values, io);
    case 'list':
      return list(file, json, io);
    case 'remove':
      return remove(id, file, json, io);
    default:
      return rotate(id, file, json, io);
  }
}

function parseArgv(argv: string[]) {
  try {
    return parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
}

async function add(
  id: string,
  file: string,
  json: boolean,
  values: { max?: string; window?: string; quota?: string },
  io: ClientsCliIo,
): Promise<number> {
  // Parse everything before touching the file.
  const max = values.max === undefined ? undefined : positiveIntOption('--max', values.max);
  const window =
    values.window === undefined ? undefined : positiveIntOption('--window', values.window);
  const quota = values.quota === undefined ? undefined : positiveIntOption('--quota', values.quota);

  let rateLimit: ClientRecord['rateLimit'];
  if (max !== undefined || window !== undefined) {
    rateLimit = {
      max: max ?? envPositiveInt(io.env, 'RATE_LIMIT_MAX', DEFAULT_RATE_LIMIT_MAX, '--max'),
      windowSeconds:
        window ??
        envPositiveInt(
          io.env,
          'RATE_LIMIT_WINDOW_SECONDS',
          DEFAULT_RATE_LIMIT_WINDOW_SECONDS,
          '--window',
        ),
    };
  }

  const contents = await readClientsFile(file);
  if (contents.clients.some((c) => c.id === id)) {
    throw new CliError(
      `client "${id}" already exists in ${file}; use \`rotate ${id}\` for a new key or \`remove ${id}\` first`,
    );
  }
  const key = generateClientKey();
  const record: ClientRecord = {
    id,
    keySha256: hashClientKey(key),
    ...(rateLimit && { rateLimit }),
    ...(quota !== undefined && { quota: { upstreamCallsPerDay: quota } }),
  };
  await writeClientsFile(file, { clients: [...contents.clients, record] });

  printKey(io, json, { id, key, file }, [
    `client "${id}" added to ${file}`,
    `rate limit: ${record.rateLimit ? `${record.rateLimit.max} requests per ${record.rateLimit.windowSeconds} s` : 'gateway default'}`,
    `quota: ${record.quota ? `${record.quota.upstreamCallsPerDay} upstream calls per day` : 'none'}`,
  ]);
  return 0;
}

async function list(file: string, json: boolean, io: ClientsCliIo): Promise<number> {
  const { clients } = await readClientsFile(file);
  // Never print keySha256: copy only the fields meant for humans.
  const shown = clients.map(({ id, rateLimit, quota }) => ({ id, rateLimit, quota }));
  if (json) {
    io.stdout(`${JSON.stringify({ file, clients: shown })}\n`);
    return 0;
  }
  if (shown.length === 0) {
    io.stdout(`no clients in ${file}; add one with: npm run clients -- add <id>\n`);
    return 0;
  }
  const width = Math.max(...shown.map((c) => c.id.length));
  const lines = shown.map(({ id, rateLimit, quota }) => {
    const limit = rateLimit
      ? `${rateLimit.max} requests per ${rateLimit.windowSeconds} s`
      : 'gateway default';
    const perDay = quota ? `${quota.upstreamCallsPerDay} upstream calls per day` : 'none';
    return `${id.padEnd(width)}  rate limit: ${limit}; quota: ${perDay}\n`;
  });
  io.stdout(
    `${shown.length} client${shown.length === 1 ? '' : 's'} in ${file}:\n${lines.join('')}`,
  );
  return 0;
}

async function remove(id: string, file: string, json: boolean, io: ClientsCliIo): Promise<number> {
  const contents = await readClientsFile(file);
  const remaining = contents.clients.filter((c) => c.id !== id);
  if (remaining.length === contents.clients.length) throw unknownClient(id, file);
  await writeClientsFile(file, { clients: remaining });
  if (json) io.stdout(`${JSON.stringify({ id, file, removed: true })}\n`);
  else io.stdout(`client "${id}" removed from ${file}; its key no longer works\n`);
  if (remaining.length === 0) {
    io.stderr(`warning: ${file} now has no clients; the gateway will reject every request\n`);
  }
  return 0;
}

async function rotate(id: string, file: string, json: boolean, io: ClientsCliIo): Promise<number> {
  const contents = await readClientsFile(file);
  const existing = contents.clients.find((c) => c.id === id);
  if (!existing) throw unknownClient(id, file);
  const key = generateClientKey();
  const updated: ClientRecord = { ...existing, keySha256: hashClientKey(key) };
  await writeClientsFile(file, {
    clients: contents.clients.map((c) => (c.id === id ? updated : c)),
  });
  printKey(io, json, { id, key, file }, [
    `client "${id}": key rotated in ${file}; the old key no longer works`,
  ]);
  return 0;
}

function printKey(
  io: ClientsCliIo,
  json: boolean,
  result: { id: string; key: string; file: string },
  header: string[],
): void {
  if (json) {
    io.stdout(`${JSON.stringify(result)}\n`);
    return;
  }
  io.stdout(
    [
      ...header,
      'key (shown once, store it now; send it as "authorization: Bearer <key>"):',
      result.key,
      '',
    ].join('\n'),
  );
}

function unknownClient(id: string, file: string): CliError {
  return new CliError(`no client "${id}" in ${file}; see \`npm run clients -- list\``);
}

function parsePositiveInt(text: string): number | undefined {
  const trimmed = text.trim();
  if (!/^[1-9][0-9]*$/.test(trimmed)) return undefined;
  const n = Number(trimmed);
  return Number.isSafeInteger(n) ? n : undefined;
}

function positiveIntOption(name: string, text: string): number {
  const n = parsePositiveInt(text);
  if (n === undefined) throw new UsageError(`${name} must be a positive integer, got "${text}"`);
  return n;
}

function envPositiveInt(
  env: NodeJS.ProcessEnv,
  name: string,
  fallback: number,
  flag: string,
): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const n = parsePositiveInt(raw);
  if (n === undefined) {
    throw new CliError(
      `${name}=${JSON.stringify(raw)} is not a positive integer (it is used because ${flag} was not given)`,
    );
  }
  return n;
}

if (import.meta.main) {
  process.exitCode = await runClientsCli(process.argv.slice(2), {
    stdout: (s) => process.stdout.write(s),
    stderr: (s) => process.stderr.write(s),
    env: process.env,
  });
}
