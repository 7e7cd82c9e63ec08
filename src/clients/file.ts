/**
 * Reading and writing the clients file. Writes are atomic (temp file + rename) wherever the
 * filesystem allows it; see {@link writeClientsFile} for the one case where it does not.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ClientRegistryError, type ClientsFile, isObject, validateClientsFile } from './schema.ts';

/** Parsed JSON of `path`, or a {@link ClientRegistryError} (with `missing` set for ENOENT). */
export async function readClientsJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw readError(path, err);
  }
  return parseClientsJson(text, path);
}

/** The ClientRegistryError for a failed read of `path`. */
export function readError(path: string, err: unknown): ClientRegistryError {
  if (errorCode(err) === 'ENOENT') {
    return new ClientRegistryError(
      `clients file ${path} not found. Create it and a first client key with ` +
        '`npm run clients -- add <id>` (use --file or GATEWAY_CLIENTS_FILE to choose the path).',
      { missing: true },
    );
  }
  return new ClientRegistryError(`cannot read clients file ${path}: ${describeFsError(err)}`, {
    cause: err,
  });
}

/** JSON.parse whose error names where, never what (the text may hold key hashes). */
export function parseClientsJson(text: string, path: string): unknown {
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

/** Read and validate the clients file; a missing file is an empty list (for the CLI). */
export async function readClientsFile(path: string): Promise<ClientsFile> {
  try {
    return validateClientsFile(await readClientsJson(path), path);
  } catch (err) {
    if (err instanceof ClientRegistryError && err.missing) return { clients: [] };
    throw err;
  }
}

export interface WriteOptions {
  /** For tests: the rename to use (to simulate a single-file bind mount). */
  rename?: (from: string, to: string) => Promise<void>;
}

/**
 * Validate, then replace the clients file: write a temp file in the same directory, fsync it,
 * rename it over the target. Readers (running gateways) see the old file or the new one, never
 * half of one. Pretty JSON with a trailing newline.
 *
 * A new file is 0600. A replaced file keeps its mode, and (when the writer is root) its owner:
 * an operator who made it readable to the gateway's user (uid 1000 in the image), or root on
 * the host editing a file the container created, must not lock the gateway out by rotating a
 * key.
 *
 * When the file is a single-file bind mount (`-v ./clients.json:/app/data/clients.json`), the
 * mount point cannot be replaced: rename fails with EBUSY (or EXDEV, the temp file being on
 * the container's own filesystem). Then the content is written in place instead. That is not
 * atomic, but writers hold the lock (see ./lock.ts), and a gateway that reads a half-written
 * file finds invalid JSON, keeps its last good registry, and reloads on the next change it sees
 * (the final write changes the file's size or mtime). Mounting the directory avoids all this.
 */
export async function writeClientsFile(
  path: string,
  file: ClientsFile,
  options: WriteOptions = {},
): Promise<void> {
  const valid = validateClientsFile(file, path);
  const text = `${JSON.stringify(valid, null, 2)}\n`;
  const dir = dirname(path);
  await mkdir(dir, { recursive: true });
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const existing = await stat(path).catch(() => undefined);
  const handle = await open(tmp, 'wx', 0o600);
  try {
    try {
      // Explicit, in case the umask is odd: the old file's mode, or owner-only.
      await handle.chmod(existing ? existing.mode & 0o777 : 0o600);
      if (existing && process.getuid?.() === 0) {
        await handle.chown(existing.uid, existing.gid);
      }
      await handle.writeFile(text, 'utf8');
      await handle.sync();
    } finally {
      await handle.close();
    }
    try {
      await (options.rename ?? rename)(tmp, path);
    } catch (err) {
      const code = errorCode(err);
      if (code !== 'EBUSY' && code !== 'EXDEV') throw err;
      await rewriteInPlace(path, text);
      await unlink(tmp).catch(() => {});
      return;
    }
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await syncDir(dir);
}

/**
 * New content first, then cut the old tail: a reader in between sees the new JSON followed by
 * old bytes (invalid JSON), never a valid mix of old and new.
 */
async function rewriteInPlace(path: string, text: string): Promise<void> {
  const handle = await open(path, 'r+');
  try {
    const bytes = Buffer.from(text, 'utf8');
    await handle.write(bytes, 0, bytes.length, 0);
    await handle.truncate(bytes.length);
    await handle.sync();
  } finally {
    await handle.close();
  }
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

export function errorCode(err: unknown): string | undefined {
  return isObject(err) && typeof err.code === 'string' ? err.code : undefined;
}

function describeFsError(err: unknown): string {
  const code = errorCode(err);
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'EISDIR') return 'it is a directory';
  return code ?? (err instanceof Error ? err.message : String(err));
}
