import { chmod, mkdtemp, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ClientDirectory, type ReloadReport } from '../src/clients/directory.ts';
import {
  type ClientRecord,
  ClientRegistry,
  ClientRegistryError,
  hashClientKey,
  writeClientsFile,
} from '../src/clients/registry.ts';

const KEY_A = 'agw_directory_key_a';
const KEY_B = 'agw_directory_key_b';
const KEY_C = 'agw_directory_key_c';

const record = (id: string, key: string, extra: Partial<ClientRecord> = {}): ClientRecord => ({
  id,
  keySha256: hashClientKey(key),
  ...extra,
});

let dir: string;
let file: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agw-directory-'));
  file = join(dir, 'clients.json');
});

afterEach(async () => {
  vi.useRealTimers();
  await rm(dir, { recursive: true, force: true });
});

function expectNoHashes(text: string, ...keys: string[]): void {
  for (const key of keys) {
    expect(text).not.toContain(hashClientKey(key));
    expect(text).not.toContain(hashClientKey(key).slice(0, 16));
  }
}

describe('ClientDirectory: loading and reloading', () => {
  it('a missing file at start is an empty directory and a "missing" report, not an error', async () => {
    const { directory, report } = await ClientDirectory.open(file);
    expect(report).toMatchObject({ ok: false, missing: true, clients: 0 });
    expect(report.ok === false && report.error).toContain(file);
    expect(directory.size).toBe(0);
    expect(directory.valid).toBe(false);
    expect(directory.authenticate(KEY_A)).toBeUndefined();

    // The first `clients add` creates it: picked up as any change.
    await writeClientsFile(file, { clients: [record('alpha', KEY_A)] });
    expect(await directory.checkForChange()).toEqual({
      ok: true,
      clients: 1,
      added: 1,
      removed: 0,
      changed: 0,
    });
    expect(directory.valid).toBe(true);
    expect(directory.authenticate(KEY_A)?.id).toBe('alpha');
  });

  it('an invalid or unreadable file at start fails (no last good registry to keep)', async () => {
    await writeFile(file, '{"clients": [');
    await expect(ClientDirectory.open(file)).rejects.toBeInstanceOf(ClientRegistryError);
    await expect(ClientDirectory.open(dir)).rejects.toThrow(/cannot read clients file/);
  });

  it('reports added, removed and changed (new key or new limits) and swaps the registry', async () => {
    await writeClientsFile(file, {
      clients: [record('alpha', KEY_A), record('beta', KEY_B), record('gamma', 'agw_g')],
    });
    const { directory, report } = await ClientDirectory.open(file);
    expect(report).toMatchObject({ ok: true, clients: 3, added: 3 });
    const before = directory.registry;

    await writeClientsFile(file, {
      clients: [
        record('alpha', KEY_C), // rotated
        record('beta', KEY_B, { maxInFlight: 4 }), // new limit
        record('delta', 'agw_d'), // added; gamma removed
      ],
    });
    expect(await directory.reload()).toEqual({
      ok: true,
      clients: 3,
      added: 1,
      removed: 1,
      changed: 2,
    });
    expect(directory.authenticate(KEY_A)).toBeUndefined();
    expect(directory.authenticate(KEY_C)?.id).toBe('alpha');
    expect(directory.get('beta')?.maxInFlight).toBe(4);
    expect(directory.has('gamma')).toBe(false);
    expect(directory.has('delta')).toBe(true);
    expect(directory.ids).toEqual(['alpha', 'beta', 'delta']);
    // The old registry is untouched: a request holding it finishes against a consistent set.
    expect(before.authenticate(KEY_A)?.id).toBe('alpha');
    expect(before.has('gamma')).toBe(true);
  });

  it('a broken file keeps the last good registry, reports what is wrong (no hash), then recovers', async () => {
    await writeClientsFile(file, { clients: [record('alpha', KEY_A)] });
    const { directory } = await ClientDirectory.open(file);

    const hashB = hashClientKey(KEY_B);
    const broken: Array<[string, RegExp]> = [
      [`{"clients":[{"id":"beta","keySha256":"${hashB}"}`, /not valid JSON/],
      [
        JSON.stringify({ clients: [{ id: 'beta', keySha256: hashB, colour: 'red' }] }),
        /clients\[0\]\.colour: unknown field/,
      ],
      [
        JSON.stringify({
          clients: [
            { id: 'beta', keySha256: hashB },
            { id: 'beta', keySha256: hashClientKey(KEY_C) },
          ],
        }),
        /duplicate id "beta"/,
      ],
      [
        JSON.stringify({ clients: [{ id: 'beta', keySha256: hashB, maxInFlight: 0 }] }),
        /clients\[0\]\.maxInFlight/,
      ],
    ];
    for (const [content, problem] of broken) {
      await writeFile(file, content);
      const report = await directory.reload();
      expect(report.ok).toBe(false);
      if (report.ok) continue;
      expect(report.missing).toBe(false);
      expect(report.clients).toBe(1);
      expect(report.error).toContain(file);
      expect(report.error).toMatch(problem);
      expectNoHashes(report.error, KEY_A, KEY_B, KEY_C);
      expect(directory.valid).toBe(false);
      expect(directory.authenticate(KEY_A)?.id).toBe('alpha');
      expect(directory.authenticate(KEY_B)).toBeUndefined();
    }

    await writeClientsFile(file, { clients: [record('alpha', KEY_A), record('beta', KEY_B)] });
    expect(await directory.reload()).toMatchObject({ ok: true, clients: 2, added: 1 });
    expect(directory.valid).toBe(true);
    expect(directory.authenticate(KEY_B)?.id).toBe('beta');
  });

  it.skipIf(process.getuid?.() === 0)(
    'an unreadable file keeps the last good registry',
    async () => {
      await writeClientsFile(file, { clients: [record('alpha', KEY_A)] });
      const { directory } = await ClientDirectory.open(file);
      await chmod(file, 0o000);
      const report = await directory.reload();
      expect(report).toMatchObject({ ok: false, missing: false });
      expect(report.ok === false && report.error).toContain('permission denied');
      expect(directory.authenticate(KEY_A)?.id).toBe('alpha');
    },
  );

  it('a deleted file keeps the last good registry; a new file is picked up', async () => {
    await writeClientsFile(file, { clients: [record('alpha', KEY_A)] });
    const { directory } = await ClientDirectory.open(file);
    await unlink(file);
    const report = await directory.checkForChange();
    expect(report).toMatchObject({ ok: false, missing: true, clients: 1 });
    expect(directory.valid).toBe(false);
    expect(directory.authenticate(KEY_A)?.id).toBe('alpha');
    // Still missing: nothing new to report.
    expect(await directory.checkForChange()).toBeUndefined();

    await writeClientsFile(file, { clients: [record('beta', KEY_B)] });
    expect(await directory.checkForChange()).toMatchObject({ ok: true, added: 1, removed: 1 });
    expect(directory.authenticate(KEY_A)).toBeUndefined();
  });

  it('checkForChange reloads only when the bytes changed: in-place rewrite of the same size, rename', async () => {
    await writeClientsFile(file, { clients: [record('alpha', KEY_A)] });
    const { directory } = await ClientDirectory.open(file);
    expect(await directory.checkForChange()).toBeUndefined();

    // In place (no rename), same size: a rotated key has the same length, and the mtime may not
    // move (timestamps are coarse).
    const rotated = JSON.stringify({ clients: [record('alpha', KEY_B)] });
    await writeFile(file, rotated);
    expect(await directory.checkForChange()).toMatchObject({ ok: true, changed: 1 });
    expect(directory.authenticate(KEY_B)?.id).toBe('alpha');

    // Replaced by rename with identical content: nothing to do.
    await writeFile(join(dir, 'next.json'), rotated);
    await rename(join(dir, 'next.json'), file);
    expect(await directory.checkForChange()).toBeUndefined();

    // A new file by rename.
    await writeFile(join(dir, 'next.json'), JSON.stringify({ clients: [record('alpha', KEY_C)] }));
    await rename(join(dir, 'next.json'), file);
    expect(await directory.checkForChange()).toMatchObject({ ok: true, changed: 1 });
    expect(directory.authenticate(KEY_C)?.id).toBe('alpha');
  });

  it('concurrent reloads run one at a time and all see the final file', async () => {
    await writeClientsFile(file, { clients: [record('alpha', KEY_A)] });
    const { directory } = await ClientDirectory.open(file);
    await writeClientsFile(file, { clients: [record('alpha', KEY_A), record('beta', KEY_B)] });
    const reports = await Promise.all([directory.reload(), directory.reload(), directory.reload()]);
    expect(reports.map((r) => r.ok && r.added)).toEqual([1, 0, 0]);
    expect(directory.ids).toEqual(['alpha', 'beta']);
  });

  it('a fixed directory never changes', async () => {
    const directory = ClientDirectory.fixed(new ClientRegistry([record('alpha', KEY_A)]));
    expect(directory.file).toBeUndefined();
    expect(await directory.reload()).toEqual({
      ok: true,
      clients: 1,
      added: 0,
      removed: 0,
      changed: 0,
    });
    expect(await directory.checkForChange()).toBeUndefined();
    await directory.watch({ intervalMs: 10, onReload: () => {} }).close();
    expect(directory.authenticate(KEY_A)?.id).toBe('alpha');
  });
});

describe('ClientDirectory.watch (fake timers)', () => {
  it('looks at the file once per interval and reloads when it changed', async () => {
    await writeClientsFile(file, { clients: [record('alpha', KEY_A)] });
    const { directory } = await ClientDirectory.open(file);
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const checks = vi.spyOn(directory, 'checkForChange');
    const reports: ReloadReport[] = [];
    let reloaded: (report: ReloadReport) => void = () => {};
    const watcher = directory.watch({
      intervalMs: 1_000,
      onReload: (report) => {
        reports.push(report);
        reloaded(report);
      },
    });

    await vi.advanceTimersByTimeAsync(999);
    expect(checks).not.toHaveBeenCalled();
    await writeClientsFile(file, { clients: [record('alpha', KEY_A), record('beta', KEY_B)] });
    const next = new Promise<ReloadReport>((resolve) => {
      reloaded = resolve;
    });
    await vi.advanceTimersByTimeAsync(1);
    expect(checks).toHaveBeenCalledTimes(1);
    expect(await next).toMatchObject({ ok: true, added: 1 });
    expect(directory.authenticate(KEY_B)?.id).toBe('beta');

    // The next check is scheduled only after this one finished; unchanged → no report.
    await vi.waitFor(() => expect(vi.getTimerCount()).toBe(1));
    await vi.advanceTimersByTimeAsync(1_000);
    await vi.waitFor(() => expect(vi.getTimerCount()).toBe(1));
    expect(checks).toHaveBeenCalledTimes(2);
    expect(reports).toHaveLength(1);

    await watcher.close();
    expect(vi.getTimerCount()).toBe(0);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(checks).toHaveBeenCalledTimes(2);
  });

  it('keeps watching after a broken file, and picks up the fix', async () => {
    await writeClientsFile(file, { clients: [record('alpha', KEY_A)] });
    const { directory } = await ClientDirectory.open(file);
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    let reloaded: (report: ReloadReport) => void = () => {};
    const nextReport = () =>
      new Promise<ReloadReport>((resolve) => {
        reloaded = resolve;
      });
    const watcher = directory.watch({ intervalMs: 500, onReload: (r) => reloaded(r) });

    await writeFile(file, 'not json');
    let next = nextReport();
    await vi.advanceTimersByTimeAsync(500);
    expect(await next).toMatchObject({ ok: false, missing: false });

    await writeClientsFile(file, { clients: [record('beta', KEY_B)] });
    next = nextReport();
    await vi.waitFor(() => expect(vi.getTimerCount()).toBe(1));
    await vi.advanceTimersByTimeAsync(500);
    expect(await next).toMatchObject({ ok: true, added: 1, removed: 1 });
    await watcher.close();
  });
});
