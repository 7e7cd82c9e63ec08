import { EventEmitter } from 'node:events';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ClientRegistry, hashClientKey, writeClientsFile } from '../src/clients/registry.ts';
import clientsPlugin, { type ClientsPluginOptions } from '../src/plugins/clients.ts';
import { within } from './helpers.ts';

const KEY_A = 'agw_plugin_key_a_0123456789';
const KEY_B = 'agw_plugin_key_b_0123456789';
const BOUND_MS = 10_000;

type LogLine = Record<string, unknown> & { msg: string; level: number };

/** A Fastify app with only the clients plugin, its log lines captured as events. */
async function build(options: ClientsPluginOptions) {
  const lines: LogLine[] = [];
  const events = new EventEmitter();
  const app: FastifyInstance = Fastify({
    logger: {
      level: 'info',
      stream: {
        write: (line: string) => {
          const parsed = JSON.parse(line) as LogLine;
          lines.push(parsed);
          events.emit('line', parsed);
        },
      },
    },
  });
  await app.register(clientsPlugin, options);
  await app.ready();
  /** Resolves with the next log line whose msg is `msg`. */
  const next = (msg: string) =>
    within(
      new Promise<LogLine>((resolve) => {
        const listener = (line: LogLine) => {
          if (line.msg !== msg) return;
          events.off('line', listener);
          resolve(line);
        };
        events.on('line', listener);
      }),
      BOUND_MS,
      `log line "${msg}"`,
    );
  return { app, lines, next };
}

async function metric(registry: Registry, name: string, labels = ''): Promise<number> {
  const text = await registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
  return line === undefined ? Number.NaN : Number(line.split(' ')[1]);
}

let dir: string;
let file: string;
let app: FastifyInstance | undefined;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agw-clients-plugin-'));
  file = join(dir, 'clients.json');
});

afterEach(async () => {
  await app?.close();
  app = undefined;
  await rm(dir, { recursive: true, force: true });
});

describe('clients plugin', () => {
  it('starts without a file (warning, metrics 0), then follows the file as it appears and changes', async () => {
    const registry = new Registry();
    const built = await build({ file, reloadIntervalMs: 100, registry });
    app = built.app;
    const warning = built.lines.find((l) => l.msg.startsWith('clients file not found'));
    expect(warning).toMatchObject({ level: 40, clients_file: file, clients: 0, trigger: 'start' });
    expect(await metric(registry, 'gateway_clients_file_valid')).toBe(0);
    expect(await metric(registry, 'gateway_clients_reload_total', '{result="error"}')).toBe(1);
    expect(app.clients.authenticate(KEY_A)).toBeUndefined();

    // Created later: the watcher picks it up.
    let reloaded = built.next('clients reloaded');
    await writeClientsFile(file, { clients: [{ id: 'alpha', keySha256: hashClientKey(KEY_A) }] });
    expect(await reloaded).toMatchObject({
      level: 30,
      clients: 1,
      added: 1,
      removed: 0,
      changed: 0,
      trigger: 'watch',
    });
    expect(app.clients.authenticate(KEY_A)?.id).toBe('alpha');
    expect(await metric(registry, 'gateway_clients_file_valid')).toBe(1);
    expect(await metric(registry, 'gateway_clients_reload_total', '{result="ok"}')).toBe(1);

    // Broken: an error line saying what is wrong, the last good clients kept.
    const hashB = hashClientKey(KEY_B);
    const failed = built.next('clients file not reloaded; keeping the last good clients');
    // By rename, so the watcher never reads half of it.
    await writeFile(
      `${file}.tmp`,
      JSON.stringify({ clients: [{ id: 'b', keySha256: hashB, x: 1 }] }),
    );
    await rename(`${file}.tmp`, file);
    const error = await failed;
    expect(error).toMatchObject({ level: 50, clients: 1, trigger: 'watch' });
    expect(error.problem).toContain('clients[0].x: unknown field');
    expect(app.clients.authenticate(KEY_A)?.id).toBe('alpha');
    expect(await metric(registry, 'gateway_clients_file_valid')).toBe(0);
    expect(await metric(registry, 'gateway_clients_reload_total', '{result="error"}')).toBe(2);

    // Fixed: back to valid.
    reloaded = built.next('clients reloaded');
    await writeClientsFile(file, { clients: [{ id: 'beta', keySha256: hashB }] });
    expect(await reloaded).toMatchObject({ clients: 1, added: 1, removed: 1 });
    expect(app.clients.authenticate(KEY_B)?.id).toBe('beta');
    expect(await metric(registry, 'gateway_clients_file_valid')).toBe(1);

    const logs = JSON.stringify(built.lines);
    for (const key of [KEY_A, KEY_B]) {
      expect(logs).not.toContain(key);
      expect(logs).not.toContain(hashClientKey(key));
    }
  });

  it('reloadClients() reloads at once (SIGHUP) and logs it', async () => {
    await writeClientsFile(file, { clients: [{ id: 'alpha', keySha256: hashClientKey(KEY_A) }] });
    // An interval long enough that only reloadClients() can explain the change.
    const built = await build({ file, reloadIntervalMs: 60_000 });
    app = built.app;
    expect(built.lines.find((l) => l.msg === 'clients loaded')).toMatchObject({
      clients: 1,
      added: 1,
      trigger: 'start',
    });
    await writeClientsFile(file, { clients: [{ id: 'alpha', keySha256: hashClientKey(KEY_B) }] });
    expect(app.clients.authenticate(KEY_A)?.id).toBe('alpha');
    expect(await app.reloadClients()).toEqual({
      ok: true,
      clients: 1,
      added: 0,
      removed: 0,
      changed: 1,
    });
    expect(app.clients.authenticate(KEY_A)).toBeUndefined();
    expect(app.clients.authenticate(KEY_B)?.id).toBe('alpha');
    expect(built.lines.at(-1)).toMatchObject({ msg: 'clients reloaded', trigger: 'signal' });
  });

  it('refuses to start on an invalid file', async () => {
    await writeFile(file, '{"clients":');
    await expect(build({ file, reloadIntervalMs: 100 })).rejects.toThrow(/not valid JSON/);
  });

  it('accepts a fixed set of clients (tests) with nothing to watch', async () => {
    const registry = new Registry();
    const built = await build({
      clients: new ClientRegistry([{ id: 'alpha', keySha256: hashClientKey(KEY_A) }]),
      registry,
    });
    app = built.app;
    expect(app.clients.authenticate(KEY_A)?.id).toBe('alpha');
    expect(await app.reloadClients()).toMatchObject({ ok: true, clients: 1 });
    expect(await metric(registry, 'gateway_clients_file_valid')).toBe(1);
  });
});
