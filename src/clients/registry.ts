/**
 * Client registry: the gateway's own API keys.
 *
 * Keys are random (see {@link generateClientKey}), shown once by the `clients` CLI and stored
 * only as SHA-256 hex in the clients file (`GATEWAY_CLIENTS_FILE`, default `./clients.json`):
 *
 *   { "clients": [ { "id": "checkout-service", "keySha256": "<64 hex>",
 *                    "rateLimit": { "max": 120, "windowSeconds": 60 },
 *                    "quota": { "upstreamCallsPerDay": 5000 } } ] }
 *
 * No Fastify here: the auth plugin parses the bearer header and calls
 * {@link ClientRegistry.authenticate} with the raw key.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { z } from 'zod';

/** Longest key {@link ClientRegistry.authenticate} will hash; generated keys are 47 chars. */
export const MAX_CLIENT_KEY_LENGTH = 512;

/** Prefix of generated keys; makes leaked keys easy to recognise (and to grep for). */
export const CLIENT_KEY_PREFIX = 'agw_';

/** Client ids end up in metric labels and log fields, so keep them tame. */
export const CLIENT_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;

const CLIENT_ID_RULE = 'must be 1-64 characters from A-Z a-z 0-9 . _ -';

export const clientRecordSchema = z
  .object({
    id: z.string().regex(CLIENT_ID_PATTERN, { error: CLIENT_ID_RULE }),
    keySha256: z.string().regex(/^[0-9a-f]{64}$/, {
      error: 'must be the SHA-256 of the key as 64 lowercase hex characters',
    }),
    rateLimit: z
      .object({ max: z.int().positive(), windowSeconds: z.int().positive() })
      .strict()
      .optional(),
    quota: z.object({ upstreamCallsPerDay: z.int().positive() }).strict().optional(),
  })
  .strict();

export const clientsFileSchema = z
  .object({ clients: z.array(clientRecordSchema) })
  .strict()
  .superRefine(
    (value, ctx) => {
      for (const issue of duplicateIssues(value)) ctx.addIssue({ code: 'custom', ...issue });
    },
    // Run even when other records are malformed, so one error lists every problem.
    { when: () => true },
  );

export type ClientRecord = z.infer<typeof clientRecordSchema>;
export type ClientsFile = z.infer<typeof clientsFileSchema>;

/** SHA-256 hex of the UTF-8 key: the form stored in the clients file. */
export function hashClientKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/** `agw_` + base64url of 32 random bytes (256 bits of entropy, 43 characters). */
export function generateClientKey(): string {
  return CLIENT_KEY_PREFIX + randomBytes(32).toString('base64url');
}

/**
 * The clients file (or an in-memory registry) is missing or invalid. The message names the
 * source and the JSON path of every problem; it never contains a key hash.
 */
export class ClientRegistryError extends Error {
  override name = 'ClientRegistryError';
}

export class ClientRegistry {
  readonly ids: readonly string[];
  readonly size: number;
  readonly #records: readonly ClientRecord[];
  readonly #digests: readonly Buffer[];
  readonly #byId: ReadonlyMap<string, ClientRecord>;

  /** Throws {@link ClientRegistryError} on invalid records, duplicate ids or duplicate hashes. */
  constructor(records: readonly ClientRecord[]) {
    const file = validate({ clients: records }, 'client records');
    this.#records = Object.freeze(file.clients.map(freezeRecord));
    this.#digests = this.#records.map((r) => Buffer.from(r.keySha256, 'hex'));
    this.#byId = new Map(this.#records.map((r) => [r.id, r]));
    this.ids = Object.freeze(this.#records.map((r) => r.id));
    this.size = this.#records.length;
  }

  /** Load the clients file. Missing, unreadable or invalid → {@link ClientRegistryError}. */
  static async fromFile(path: string): Promise<ClientRegistry> {
    const json = await readJson(path);
    if (json === undefined) {
      throw new ClientRegistryError(
        `clients file ${path} not found. Create it and a first client key with ` +
          '`npm run clients -- add <id>` (use --file or GATEWAY_CLIENTS_FILE to choose the path).',
      );
    }
    return ClientRegistry.parse(json, path);
  }

  /** Validate an in-memory object shaped like the clients file; `source` names it in errors. */
  static parse(json: unknown, source: string): ClientRegistry {
    return new ClientRegistry(validate(json, source).clients);
  }

  /**
   * The client owning `presentedKey`, or undefined. Compares the key's digest with every stored
   * digest in constant time and without early exit, so timing reveals neither whether nor which
   * client matched. Empty, missing or over-long keys are rejected without hashing.
   */
  authenticate(presentedKey: string | undefined): ClientRecord | undefined {
    if (!presentedKey || presentedKey.length > MAX_CLIENT_KEY_LENGTH) return undefined;
    const digest = createHash('sha256').update(presentedKey, 'utf8').digest();
    let match = -1;
    for (let i = 0; i < this.#digests.length; i++) {
      const equal = timingSafeEqual(digest, this.#digests[i] as Buffer);
      // Branch-free select: hashes are unique, so at most one index matches.
      match = equal ? i : match;
    }
    return match === -1 ? undefined : this.#records[match];
  }

  get(id: string): ClientRecord | undefined {
    return this.#byId.get(id);
  }
}

/** Read and validate the clients file; a missing file is an empty registry (for the CLI). */
export async function readClientsFile(path: string): Promise<ClientsFile> {
  const json = await readJson(path);
  return json === undefined ? { clients: [] } : validate(json, path);
}

/**
 * Validate, then replace the clients file atomically: write a 0600 temp file in the same
 * directory, fsync it, rename it over the target. Pretty JSON with a trailing newline.
 */
export async function writeClientsFile(path: string, file: ClientsFile): Promise<void> {
  const valid = validate(file, path);
  const dir = dirname(path);
  await mkdir(dir, { recursive: true });
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const handle = await open(tmp, 'wx', 0o600);
  try {
    try {
      await handle.chmod(0o600); // in case the umask is odd; never broader than owner-only
      await handle.writeFile(`${JSON.stringify(valid, null, 2)}\n`, 'utf8');
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await syncDir(dir);
}

// ---------------------------------------------------------------------------------------------

/** Parsed JSON of `path`, or undefined when the file does not exist. */
async function readJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return undefined;
    throw new ClientRegistryError(`cannot read clients file ${path}: ${describeFsError(err)}`, {
      cause: err,
    });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    // V8's messages quote a snippet of the input, which could hold a key hash: keep only where.
    const message = err instanceof Error ? err.message : '';
    const where = /at position \d+(?: \(line \d+ column \d+\))?/.exec(message)?.[0];
    const detail = where ?? (/end of JSON input/.test(message) ? 'unexpected end of input' : '');
    throw new ClientRegistryError(
      `invalid clients file ${path}: not valid JSON${detail ? `: ${detail}` : ''}`,
    );
  }
}

function validate(json: unknown, source: string): ClientsFile {
  const result = clientsFileSchema.safeParse(json);
  if (result.success) return result.data;
  const lines = result.error.issues.flatMap(formatIssue);
  throw new ClientRegistryError(
    redactHashes(
      `invalid clients file ${source} (${lines.length} problem${lines.length === 1 ? '' : 's'}):\n` +
        lines.map((l) => `  - ${l}`).join('\n'),
    ),
  );
}

function formatIssue(issue: z.core.$ZodIssue): string[] {
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => `${formatPath([...issue.path, key])}: unknown field`);
  }
  return [`${formatPath(issue.path)}: ${issue.message}`];
}

/** `clients[0].rateLimit.max`, in the style of JavaScript property access. */
function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const segment of path) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else if (typeof segment === 'string' && /^[A-Za-z_$][\w$]*$/.test(segment)) {
      out += out ? `.${segment}` : segment;
    } else out += `[${JSON.stringify(String(segment))}]`;
  }
  return out || '(top level)';
}

/** Duplicate ids and hashes, checked on possibly malformed input. */
function duplicateIssues(value: unknown): { path: (string | number)[]; message: string }[] {
  const clients = isObject(value) ? value.clients : undefined;
  if (!Array.isArray(clients)) return [];
  const issues: { path: (string | number)[]; message: string }[] = [];
  const firstById = new Map<string, number>();
  const firstByHash = new Map<string, number>();
  clients.forEach((record: unknown, index) => {
    if (!isObject(record)) return;
    const { id, keySha256 } = record;
    if (typeof id === 'string') {
      const first = firstById.get(id);
      if (first === undefined) firstById.set(id, index);
      else {
        issues.push({
          path: ['clients', index, 'id'],
          message: `duplicate id ${JSON.stringify(id)} (also clients[${first}])`,
        });
      }
    }
    if (typeof keySha256 === 'string') {
      const first = firstByHash.get(keySha256);
      if (first === undefined) firstByHash.set(keySha256, index);
      else {
        issues.push({
          path: ['clients', index, 'keySha256'],
          message: `same key hash as clients[${first}]; every client needs its own key`,
        });
      }
    }
  });
  return issues;
}

/** Belt and braces: no 64-hex run (a stored hash) ever reaches an error message. */
function redactHashes(text: string): string {
  return text.replace(/[0-9a-fA-F]{64}/g, '<redacted>');
}

function freezeRecord(record: ClientRecord): ClientRecord {
  if (record.rateLimit) Object.freeze(record.rateLimit);
  if (record.quota) Object.freeze(record.quota);
  return Object.freeze(record);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null;
}

function errorCode(err: unknown): string | undefined {
  return isObject(err) && typeof err.code === 'string' ? err.code : undefined;
}

function describeFsError(err: unknown): string {
  const code = errorCode(err);
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'EISDIR') return 'it is a directory';
  return code ?? (err instanceof Error ? err.message : String(err));
}

async function syncDir(dir: string): Promise<void> {
  // Makes the rename durable; not supported everywhere (e.g. Windows), so best effort.
  try {
    const handle = await open(dir, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch {
    // ignore
  }
}
