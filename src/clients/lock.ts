import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import lockfile from 'proper-lockfile';
import { readClientsFile, writeClientsFile } from './file.ts';
import { ClientRegistryError, type ClientsFile } from './schema.ts';

/**
 * A lock held longer than this without a heartbeat (its holder crashed) is taken over. The holder
 * refreshes the lock's mtime every half of it while it works.
 */
const STALE_MS = 10_000;
/**
 * Waiting for another writer: 20 ms, growing to 200 ms apart, 75 tries — about 14 s, which
 * outlasts a stale lock (10 s) so a crashed holder never makes a run fail.
 */
const RETRIES = { retries: 75, minTimeout: 20, maxTimeout: 200, factor: 1.5, randomize: true };

/** The lock of the clients file: a directory next to it (mkdir is atomic everywhere). */
export function lockPathOf(path: string): string {
  return `${path}.lock`;
}

/**
 * Read, change and write the clients file under its lock, so concurrent writers (parallel
 * `clients add` runs, a host shell and a container) each see the others' changes. Readers (the
 * gateways) take no lock: writes are atomic (see writeClientsFile). `change` returns the new
 * contents and a result for the caller; it may throw to leave the file alone.
 */
export async function updateClientsFile<T>(
  path: string,
  change: (file: ClientsFile) => { file: ClientsFile; result: T },
  options: { waitRetries?: number } = {},
): Promise<T> {
  await mkdir(dirname(path), { recursive: true });
  let compromised: Error | undefined;
  let release: () => Promise<void>;
  try {
    release = await lockfile.lock(path, {
      realpath: false, // the file may not exist yet
      lockfilePath: lockPathOf(path),
      stale: STALE_MS,
      retries: { ...RETRIES, retries: options.waitRetries ?? RETRIES.retries },
      // The default throws from a timer (crashing the CLI); note it and refuse to write instead.
      onCompromised: (err) => {
        compromised = err;
      },
    });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ELOCKED') {
      throw new ClientRegistryError(
        `clients file ${path} is locked by another writer (${lockPathOf(path)} exists); ` +
          'try again, or remove that directory if no other `clients` command is running',
      );
    }
    throw err;
  }
  try {
    const { file, result } = change(await readClientsFile(path));
    if (compromised) {
      throw new ClientRegistryError(`lost the lock on ${path} (${compromised.message}); try again`);
    }
    await writeClientsFile(path, file);
    return result;
  } finally {
    await release().catch(() => {});
  }
}
