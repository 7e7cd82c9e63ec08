/**
 * The clients a running gateway accepts, reloadable without a restart. Holds one immutable
 * {@link ClientRegistry} at a time and swaps it for a new one, whole, when the clients file
 * changes: a request authenticates against the old set or the new one, never half of each.
 *
 * A file that cannot be used (unreadable, invalid JSON, invalid records, deleted) never replaces
 * a good registry: the last good one stays and the report says what is wrong (never a key hash).
 *
 * No Fastify here: src/plugins/clients.ts logs the reports and counts them.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { errorCode, parseClientsJson, readError } from './file.ts';
import { ClientRegistry } from './registry.ts';
import { type ClientRecord, ClientRegistryError, redactHashes } from './schema.ts';

/** What one (re)load did. */
export type ReloadReport =
  | {
      ok: true;
      /** Clients now accepted. */
      clients: number;
      added: number;
      removed: number;
      /** Same id, new key or new limits. */
      changed: number;
    }
  | {
      ok: false;
      /** The file does not exist (it may be created later). */
      missing: boolean;
      /** What is wrong, naming the file and JSON paths; never a key hash. */
      error: string;
      /** Clients still accepted: the last good registry's. */
      clients: number;
    };

export interface WatchOptions {
  /** How often to look at the file (CLIENTS_RELOAD_INTERVAL_MS). */
  intervalMs: number;
  /** Called after every reload a change caused. */
  onReload(report: ReloadReport): void;
}

export interface Watcher {
  /** Stops looking; resolves once a check in progress has finished. */
  close(): Promise<void>;
}

export class ClientDirectory {
  /** The clients file; undefined for a fixed directory (tests, benchmarks). */
  readonly file: string | undefined;
  #registry: ClientRegistry;
  #valid: boolean;
  /** The file's version (a digest of its bytes) when it was last loaded. */
  #seen: string | undefined;
  /** Reloads run one at a time, in order (a SIGHUP may arrive during a timed check). */
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(file: string | undefined, registry: ClientRegistry) {
    this.file = file;
    this.#registry = registry;
    this.#valid = true;
  }

  /** A directory that never changes (tests, tools): `reload()` reports no change. */
  static fixed(registry: ClientRegistry): ClientDirectory {
    return new ClientDirectory(undefined, registry);
  }

  /**
   * Loads `file`. A missing file gives an empty directory and a `missing` report: a Docker-only
   * setup may start the gateway before the first key exists, and the first `clients add` is
   * picked up like any other change. An unreadable or invalid file throws
   * {@link ClientRegistryError}: with no last good registry to keep, starting would only refuse
   * every request for a reason that is easier to see as a failed start.
   */
  static async open(file: string): Promise<{ directory: ClientDirectory; report: ReloadReport }> {
    const directory = new ClientDirectory(file, new ClientRegistry([]));
    const report = await directory.reload();
    if (!report.ok && !report.missing) throw new ClientRegistryError(report.error);
    return { directory, report };
  }

  /** The current registry; hold on to it only for the duration of one request. */
  get registry(): ClientRegistry {
    return this.#registry;
  }

  /** False while the file is missing or broken and the last good registry is being served. */
  get valid(): boolean {
    return this.#valid;
  }

  get ids(): readonly string[] {
    return this.#registry.ids;
  }

  get size(): number {
    return this.#registry.size;
  }

  /** Constant-time over every stored key (see {@link ClientRegistry.authenticate}). */
  authenticate(presentedKey: string | undefined): ClientRecord | undefined {
    return this.#registry.authenticate(presentedKey);
  }

  get(id: string): ClientRecord | undefined {
    return this.#registry.get(id);
  }

  has(id: string): boolean {
    return this.#registry.has(id);
  }

  /** Re-reads the file now and swaps the registry if it is valid. Never throws. */
  reload(): Promise<ReloadReport> {
    const next = this.#queue.then(() => this.#reloadNow());
    this.#queue = next;
    return next;
  }

  /** Reloads if the file differs from when it was last loaded; undefined otherwise. */
  async checkForChange(): Promise<ReloadReport | undefined> {
    if (this.file === undefined) return undefined;
    if ((await readVersion(this.file)).version === this.#seen) return undefined;
    return this.reload();
  }

  /**
   * Looks at the file every `intervalMs` and reloads when it changed.
   *
   * Why polling (as `fs.watchFile` does) and not `fs.watch` (inotify): the CLI replaces the file
   * by rename, and an inotify watch on the file follows the old inode, so it goes quiet after
   * the first change; watching the directory instead gets no events through Docker Desktop's
   * file sharing or many network filesystems, where a host-side edit of a bind-mounted file is
   * only seen by looking. Why compare the bytes (a digest) and not stat's mtime/size: timestamps
   * are coarse (a kernel tick on Linux, seconds on some filesystems), so a rotated key written
   * in place (same size) right after another write can keep the same mtime. Reading one small
   * file per interval costs next to nothing. Own timer rather than `fs.watchFile`: checks never
   * overlap a reload, close() waits for the one in progress, and tests drive it with fake timers.
   */
  watch(options: WatchOptions): Watcher {
    if (this.file === undefined) return { close: async () => {} };
    let timer: NodeJS.Timeout | undefined;
    let running: Promise<void> = Promise.resolve();
    let closed = false;
    const schedule = () => {
      if (closed) return;
      timer = setTimeout(tick, options.intervalMs);
      timer.unref();
    };
    const tick = () => {
      running = this.checkForChange()
        .then((report) => {
          if (report) options.onReload(report);
        })
        // A throwing listener must not stop the watch (checkForChange itself never throws).
        .catch(() => {})
        .finally(schedule);
    };
    schedule();
    return {
      close: async () => {
        closed = true;
        clearTimeout(timer);
        await running;
      },
    };
  }

  async #reloadNow(): Promise<ReloadReport> {
    if (this.file === undefined) {
      return { ok: true, clients: this.#registry.size, added: 0, removed: 0, changed: 0 };
    }
    const read = await readVersion(this.file);
    // The version of what was read: a half-written file is read again once its writer is done.
    this.#seen = read.version;
    let next: ClientRegistry;
    try {
      if (read.text === undefined) throw readError(this.file, read.error);
      next = ClientRegistry.parse(parseClientsJson(read.text, this.file), this.file);
    } catch (err) {
      this.#valid = false;
      const error =
        err instanceof ClientRegistryError
          ? err.message
          : redactHashes(`cannot load clients file ${this.file}: ${err}`);
      return {
        ok: false,
        missing: err instanceof ClientRegistryError && err.missing,
        error,
        clients: this.#registry.size,
      };
    }
    const report = { ok: true as const, clients: next.size, ...diff(this.#registry, next) };
    this.#registry = next;
    this.#valid = true;
    return report;
  }
}

function diff(before: ClientRegistry, after: ClientRegistry) {
  let added = 0;
  let changed = 0;
  for (const record of after.records()) {
    const old = before.get(record.id);
    if (old === undefined) added++;
    else if (JSON.stringify(old) !== JSON.stringify(record)) changed++;
  }
  const removed = before.ids.filter((id) => !after.has(id)).length;
  return { added, removed, changed };
}

/** The file's bytes and a digest of them; `missing`/`error:<code>` when it cannot be read. */
async function readVersion(
  file: string,
): Promise<{ version: string; text?: string; error?: unknown }> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (error) {
    return { version: `error:${errorCode(error) ?? 'unknown'}`, error };
  }
  const version = createHash('sha256').update(bytes).digest('hex');
  return { version, text: bytes.toString('utf8') };
}
