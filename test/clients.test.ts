import { chmod, chown, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  type ClientRecord,
  ClientRegistry,
  ClientRegistryError,
  clientsFileSchema,
  generateClientKey,
  hashClientKey,
  readClientsFile,
  writeClientsFile,
} from '../src/clients/registry.ts';

const KEY_A = 'agw_key-a-for-tests';
const KEY_B = 'agw_key-b-for-tests';

function record(id: string, key: string, extra: Partial<ClientRecord> = {}): ClientRecord {
  return { id, keySha256: hashClientKey(key), ...extra };
}

/** Message of the ClientRegistryError thrown by fn (fails the test if something else happens). */
function errorMessage(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ClientRegistryError);
    return (err as Error).message;
  }
  throw new Error('expected a ClientRegistryError');
}

async function asyncErrorMessage(promise: Promise<unknown>): Promise<string> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ClientRegistryError);
  return (err as Error).message;
}

describe('hashClientKey / generateClientKey', () => {
  it('hashes with SHA-256 hex (known vector)', () => {
    expect(hashClientKey('abc')).toBe(
      'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
    );
  });

  it('hashes the UTF-8 bytes', () => {
    // printf 'é' | sha256sum  (UTF-8: c3 a9), not the Latin-1 byte e9
    expect(hashClientKey('é')).toBe(
      '4a99557e4033c3539de2eb65472017cad5f9557f7a0625a09f1c3f6e2ba69c4c',
    );
  });

  it('generates agw_ + at least 43 base64url characters, different every time', () => {
    const a = generateClientKey();
    const b = generateClientKey();
    expect(a).toMatch(/^agw_[A-Za-z0-9_-]{43,}$/);
    expect(b).toMatch(/^agw_[A-Za-z0-9_-]{43,}$/);
    expect(a).not.toBe(b);
    // 43 base64url chars without padding = 32 bytes = 256 bits
    expect(Buffer.from(a.slice(4), 'base64url')).toHaveLength(32);
  });
});

describe('ClientRegistry.authenticate', () => {
  const registry = new ClientRegistry([
    record('alpha', KEY_A),
    record('beta', KEY_B, { rateLimit: { max: 5, windowSeconds: 10 } }),
  ]);

  it('returns the record owning the key', () => {
    expect(registry.authenticate(KEY_A)?.id).toBe('alpha');
    expect(registry.authenticate(KEY_B)).toEqual({
      id: 'beta',
      keySha256: hashClientKey(KEY_B),
      rateLimit: { max: 5, windowSeconds: 10 },
    });
  });

  it('rejects wrong, empty, missing and over-long keys', () => {
    expect(registry.authenticate('agw_wrong')).toBeUndefined();
    expect(registry.authenticate(`${KEY_A} `)).toBeUndefined();
    expect(registry.authenticate(KEY_A.slice(0, -1))).toBeUndefined();
    expect(registry.authenticate('')).toBeUndefined();
    expect(registry.authenticate(undefined)).toBeUndefined();
    // A key whose hash IS registered, but too long to be accepted at all.
    const long = 'x'.repeat(513);
    const withLong = new ClientRegistry([record('long', long), record('ok', 'y'.repeat(512))]);
    expect(withLong.authenticate(long)).toBeUndefined();
    expect(withLong.authenticate('y'.repeat(512))?.id).toBe('ok');
  });

  it('does not accept the stored hash as a key', () => {
    expect(registry.authenticate(hashClientKey(KEY_A))).toBeUndefined();
  });

  it('rejects everything when empty', () => {
    const empty = new ClientRegistry([]);
    expect(empty.size).toBe(0);
    expect(empty.authenticate(KEY_A)).toBeUndefined();
  });

  it('exposes ids, size and get', () => {
    expect(registry.ids).toEqual(['alpha', 'beta']);
    expect(registry.size).toBe(2);
    expect(registry.get('beta')?.rateLimit).toEqual({ max: 5, windowSeconds: 10 });
    expect(registry.get('gamma')).toBeUndefined();
    expect(Object.isFrozen(registry.ids)).toBe(true);
  });

  it('is not affected by later changes to the records it was built from', () => {
    const records = [record('alpha', KEY_A)];
    const reg = new ClientRegistry(records);
    (records[0] as ClientRecord).keySha256 = hashClientKey(KEY_B);
    expect(reg.authenticate(KEY_A)?.id).toBe('alpha');
    expect(reg.authenticate(KEY_B)).toBeUndefined();
  });
});

describe('validation', () => {
  const goodHash = hashClientKey(KEY_A);
  const otherHash = hashClientKey(KEY_B);
  const thirdHash = hashClientKey('agw_third');

  it('accepts a valid file with optional rateLimit and quota', () => {
    const reg = ClientRegistry.parse(
      {
        clients: [
          {
            id: 'checkout-service',
            keySha256: goodHash,
            rateLimit: { max: 120, windowSeconds: 60 },
          },
          { id: 'reports_v2.1', keySha256: otherHash, quota: { upstreamCallsPerDay: 1000 } },
        ],
      },
      'inline',
    );
    expect(reg.ids).toEqual(['checkout-service', 'reports_v2.1']);
    expect(reg.get('reports_v2.1')?.quota).toEqual({ upstreamCallsPerDay: 1000 });
  });

  it('reports every problem at once, naming the source and each JSON path, never a hash', () => {
    const message = errorMessage(() =>
      ClientRegistry.parse(
        {
          clients: [
            { id: 'ok', keySha256: goodHash },
            { id: 'bad-hash', keySha256: goodHash.toUpperCase() },
            { id: 'bad id!', keySha256: otherHash },
            { id: 'ok', keySha256: thirdHash },
            { id: 'extra', keySha256: hashClientKey('x'), color: 'blue' },
            { id: 'zero', keySha256: hashClientKey('y'), rateLimit: { max: 0, windowSeconds: 60 } },
            { id: 'same-key', keySha256: otherHash },
          ],
        },
        'test-source.json',
      ),
    );
    expect(message).toContain('test-source.json');
    expect(message).toContain('clients[1].keySha256');
    expect(message).toContain('clients[2].id');
    expect(message).toMatch(/clients\[3\]\.id: duplicate id "ok"/);
    expect(message).toContain('clients[4].color: unknown field');
    expect(message).toContain('clients[5].rateLimit.max');
    expect(message).toMatch(/clients\[6\]\.keySha256: same key hash as clients\[2\]/);
    for (const hash of [goodHash, otherHash, thirdHash, hashClientKey('x'), hashClientKey('y')]) {
      expect(message).not.toContain(hash);
      expect(message.toLowerCase()).not.toContain(hash);
    }
  });

  it('reports duplicates even when another record has the wrong type', () => {
    const message = errorMessage(() =>
      ClientRegistry.parse(
        {
          clients: [
            { id: 'a', keySha256: goodHash },
            { id: 'a', keySha256: otherHash },
            { id: 'c', keySha256: thirdHash, rateLimit: 'lots' },
          ],
        },
        'src',
      ),
    );
    expect(message).toContain('clients[1].id: duplicate id "a"');
    expect(message).toContain('clients[2].rateLimit');
  });

  it('rejects a wrong top-level shape', () => {
    expect(errorMessage(() => ClientRegistry.parse([], 'src'))).toContain('src');
    expect(errorMessage(() => ClientRegistry.parse({ clients: {} }, 'src'))).toContain('clients');
    expect(errorMessage(() => ClientRegistry.parse({ clients: [], x: 1 }, 'src'))).toContain(
      'x: unknown field',
    );
    expect(
      errorMessage(() =>
        ClientRegistry.parse(
          {
            clients: [{ id: 'a', keySha256: goodHash, rateLimit: { max: 1.5, windowSeconds: 1 } }],
          },
          'src',
        ),
      ),
    ).toContain('clients[0].rateLimit.max');
    expect(
      errorMessage(() =>
        ClientRegistry.parse(
          { clients: [{ id: 'a', keySha256: goodHash, quota: { upstreamCallsPerDay: -1 } }] },
          'src',
        ),
      ),
    ).toContain('clients[0].quota.upstreamCallsPerDay');
  });

  it('rejects ids that are too long or empty', () => {
    const message = errorMessage(() =>
      ClientRegistry.parse(
        {
          clients: [
            { id: 'a'.repeat(65), keySha256: goodHash },
            { id: '', keySha256: otherHash },
          ],
        },
        'src',
      ),
    );
    expect(message).toContain('clients[0].id');
    expect(message).toContain('clients[1].id');
  });

  it('the constructor validates too', () => {
    expect(() => new ClientRegistry([record('a', KEY_A), record('a', KEY_B)])).toThrow(
      ClientRegistryError,
    );
  });

  it('schema is exported for reuse', () => {
    expect(clientsFileSchema.safeParse({ clients: [] }).success).toBe(true);
  });
});

describe('files', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'agw-clients-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('fromFile: a missing file explains how to create one', async () => {
    const path = join(dir, 'nope.json');
    const message = await asyncErrorMessage(ClientRegistry.fromFile(path));
    expect(message).toContain(path);
    expect(message).toContain('npm run clients -- add <id>');
  });

  it('fromFile: invalid JSON names the file and never echoes its content', async () => {
    const path = join(dir, 'broken.json');
    const hash = hashClientKey(KEY_A);
    await writeFile(path, `{"clients":[{"id":"a","keySha256":"${hash}"}`);
    const message = await asyncErrorMessage(ClientRegistry.fromFile(path));
    expect(message).toContain(path);
    expect(message).toMatch(/JSON/);
    expect(message).not.toContain(hash);
    expect(message).not.toContain(hash.slice(0, 16));

    await writeFile(path, `{"clients":[{"id":"a","keySha256":"${hash}"}] oops}`);
    const message2 = await asyncErrorMessage(ClientRegistry.fromFile(path));
    expect(message2).not.toContain(hash.slice(0, 16));
  });

  it('fromFile: schema errors name the file', async () => {
    const path = join(dir, 'clients.json');
    const hash = hashClientKey(KEY_A);
    await writeFile(path, JSON.stringify({ clients: [{ id: 'a', keySha256: hash, extra: 1 }] }));
    const message = await asyncErrorMessage(ClientRegistry.fromFile(path));
    expect(message).toContain(path);
    expect(message).toContain('clients[0].extra');
    expect(message).not.toContain(hash);
  });

  it('fromFile: a directory is reported as unreadable', async () => {
    const message = await asyncErrorMessage(ClientRegistry.fromFile(dir));
    expect(message).toContain(dir);
  });

  it('write then read round-trips; file is pretty JSON, newline-terminated, mode 0600', async () => {
    const path = join(dir, 'sub', 'clients.json');
    const file = {
      clients: [record('alpha', KEY_A, { quota: { upstreamCallsPerDay: 10 } }), record('b', KEY_B)],
    };
    await writeClientsFile(path, file);
    const text = await readFile(path, 'utf8');
    expect(text).toBe(`${JSON.stringify(file, null, 2)}\n`);
    if (process.platform !== 'win32') expect((await stat(path)).mode & 0o777).toBe(0o600);
    expect(await readClientsFile(path)).toEqual(file);
    const reg = await ClientRegistry.fromFile(path);
    expect(reg.authenticate(KEY_B)?.id).toBe('b');

    // Overwrite keeps it atomic and leaves no temp files behind.
    await writeClientsFile(path, { clients: [] });
    expect(await readClientsFile(path)).toEqual({ clients: [] });
    expect(await readdir(join(dir, 'sub'))).toEqual(['clients.json']);
  });

  it('writeClientsFile refuses invalid content and leaves the old file alone', async () => {
    const path = join(dir, 'clients.json');
    await writeClientsFile(path, { clients: [record('a', KEY_A)] });
    const before = await readFile(path, 'utf8');
    await expect(
      writeClientsFile(path, { clients: [record('a', KEY_A), record('a', KEY_B)] }),
    ).rejects.toBeInstanceOf(ClientRegistryError);
    expect(await readFile(path, 'utf8')).toBe(before);
  });

  it('readClientsFile: missing → empty, invalid → error', async () => {
    expect(await readClientsFile(join(dir, 'missing.json'))).toEqual({ clients: [] });
    const path = join(dir, 'bad.json');
    await writeFile(path, '{"clients": 3}');
    await expect(readClientsFile(path)).rejects.toBeInstanceOf(ClientRegistryError);
  });
});

describe('maxInFlight', () => {
  it('is an optional positive integer per client', () => {
    const reg = ClientRegistry.parse(
      { clients: [{ id: 'a', keySha256: hashClientKey(KEY_A), maxInFlight: 3 }] },
      'src',
    );
    expect(reg.get('a')?.maxInFlight).toBe(3);
    for (const bad of [0, -1, 1.5, '3']) {
      expect(
        errorMessage(() =>
          ClientRegistry.parse(
            { clients: [{ id: 'a', keySha256: hashClientKey(KEY_A), maxInFlight: bad }] },
            'src',
          ),
        ),
      ).toContain('clients[0].maxInFlight');
    }
  });
});

describe('writeClientsFile on a single-file bind mount', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'agw-clients-mount-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const failingRename = (code: string) => async () => {
    throw Object.assign(new Error(`rename failed: ${code}`), { code });
  };

  for (const code of ['EBUSY', 'EXDEV']) {
    it(`rewrites in place when rename fails with ${code}, keeping the file's inode and mode`, async () => {
      const path = join(dir, 'clients.json');
      await writeClientsFile(path, {
        clients: [record('a', KEY_A), record('long-name-to-shrink', KEY_B)],
      });
      const before = await stat(path);
      const next = { clients: [record('a', KEY_A)] };
      await writeClientsFile(path, next, { rename: failingRename(code) });
      expect(await readFile(path, 'utf8')).toBe(`${JSON.stringify(next, null, 2)}\n`);
      const after = await stat(path);
      expect(after.ino).toBe(before.ino);
      expect(after.mode).toBe(before.mode);
      expect(await readdir(dir)).toEqual(['clients.json']); // no temp file left
    });
  }

  it('other rename errors fail the write and leave the old file', async () => {
    const path = join(dir, 'clients.json');
    await writeClientsFile(path, { clients: [record('a', KEY_A)] });
    const before = await readFile(path, 'utf8');
    await expect(
      writeClientsFile(path, { clients: [] }, { rename: failingRename('EACCES') }),
    ).rejects.toThrow('EACCES');
    expect(await readFile(path, 'utf8')).toBe(before);
    expect(await readdir(dir)).toEqual(['clients.json']);
  });
});

describe('ClientRegistryError.missing', () => {
  it('tells a missing file apart from a broken one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'agw-clients-missing-'));
    try {
      const missing = await ClientRegistry.fromFile(join(dir, 'nope.json')).catch((e) => e);
      expect(missing).toMatchObject({ missing: true });
      await writeFile(join(dir, 'bad.json'), '[');
      const broken = await ClientRegistry.fromFile(join(dir, 'bad.json')).catch((e) => e);
      expect(broken).toMatchObject({ missing: false });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('has(id)', () => {
    const reg = new ClientRegistry([record('a', KEY_A)]);
    expect(reg.has('a')).toBe(true);
    expect(reg.has('b')).toBe(false);
  });
});

describe('writeClientsFile keeps the mode and owner of the file it replaces', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'agw-clients-mode-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it.skipIf(process.platform === 'win32')('keeps a mode the operator chose', async () => {
    const path = join(dir, 'clients.json');
    await writeClientsFile(path, { clients: [] });
    await chmod(path, 0o640);
    await writeClientsFile(path, { clients: [record('a', KEY_A)] });
    expect((await stat(path)).mode & 0o777).toBe(0o640);
  });

  it.skipIf(process.getuid?.() !== 0)(
    'run as root, keeps the owner (a file the container user owns stays readable to it)',
    async () => {
      const path = join(dir, 'clients.json');
      await writeClientsFile(path, { clients: [] });
      await chown(path, 1000, 1000);
      await writeClientsFile(path, { clients: [record('a', KEY_A)] });
      const after = await stat(path);
      expect([after.uid, after.gid]).toEqual([1000, 1000]);
      expect(after.mode & 0o777).toBe(0o600);
    },
  );
});
