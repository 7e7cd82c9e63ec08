import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import { Counter, Gauge, type Registry } from 'prom-client';
import { ClientDirectory, type ReloadReport } from '../clients/directory.ts';
import type { ClientRegistry } from '../clients/registry.ts';

declare module 'fastify' {
  interface FastifyInstance {
    /** The clients accepted right now; follows the clients file. */
    clients: ClientDirectory;
    /** Re-reads the clients file now (server.ts calls it on SIGHUP); logs and counts the result. */
    reloadClients(): Promise<ReloadReport>;
  }
}

export type ClientsPluginOptions = {
  /** prom-client registry for the reload metrics; none → no metrics. */
  registry?: Registry;
} & (
  | {
      /** GATEWAY_CLIENTS_FILE. */
      file: string;
      /** CLIENTS_RELOAD_INTERVAL_MS: how often the file is looked at. */
      reloadIntervalMs: number;
    }
  | {
      /** A fixed set of clients (tests, benchmarks): no file, no watching. */
      clients: ClientRegistry;
    }
);

type Trigger = 'start' | 'watch' | 'signal';

/**
 * Owns the client directory and its watcher. Every (re)load is logged once: at info with counts
 * when it worked, at error with what is wrong when the last good clients were kept.
 */
const clientsPlugin: FastifyPluginAsync<ClientsPluginOptions> = async (app, options) => {
  const opened =
    'clients' in options
      ? { directory: ClientDirectory.fixed(options.clients), report: undefined }
      : await ClientDirectory.open(options.file);
  const { directory } = opened;
  const reloads = options.registry && reloadMetrics(options.registry, directory);

  const report = (result: ReloadReport, trigger: Trigger): ReloadReport => {
    reloads?.inc({ result: result.ok ? 'ok' : 'error' });
    const fields = { clients_file: directory.file, clients: result.clients, trigger };
    if (result.ok) {
      const { added, removed, changed } = result;
      const msg = trigger === 'start' ? 'clients loaded' : 'clients reloaded';
      app.log.info({ ...fields, added, removed, changed }, msg);
    } else if (result.missing && trigger === 'start') {
      app.log.warn(
        fields,
        'clients file not found: every request is refused until a client is added ' +
          '(npm run clients -- add <id>); the file is picked up when it appears',
      );
    } else {
      app.log.error(
        { ...fields, problem: result.error },
        'clients file not reloaded; keeping the last good clients',
      );
    }
    return result;
  };

  if (opened.report) report(opened.report, 'start');
  app.decorate('clients', directory);
  app.decorate('reloadClients', async () => report(await directory.reload(), 'signal'));

  if (!('clients' in options)) {
    const watcher = directory.watch({
      intervalMs: options.reloadIntervalMs,
      onReload: (result) => report(result, 'watch'),
    });
    app.addHook('onClose', async () => {
      await watcher.close();
    });
  }
};

function reloadMetrics(registry: Registry, directory: ClientDirectory) {
  const reloads = new Counter({
    name: 'gateway_clients_reload_total',
    help: 'Loads of the clients file (the one at start included), by result: ok, or error (last good clients kept)',
    labelNames: ['result'],
    registers: [registry],
  });
  // Both series exist from the start, so rate() and alerts see the first error.
  reloads.inc({ result: 'ok' }, 0);
  reloads.inc({ result: 'error' }, 0);
  new Gauge({
    name: 'gateway_clients_file_valid',
    help: 'Whether the clients in use are those of the clients file (0: it is missing or broken)',
    registers: [registry],
    collect() {
      this.set(directory.valid ? 1 : 0);
    },
  });
  new Gauge({
    name: 'gateway_client_daily_quota',
    help: 'Billed upstream calls each client may make per UTC day (its clients-file quota); no series without one',
    labelNames: ['client'],
    registers: [registry],
    collect() {
      this.reset();
      for (const id of directory.ids) {
        const quota = directory.get(id)?.quota;
        if (quota) this.set({ client: id }, quota.upstreamCallsPerDay);
      }
    },
  });
  return reloads;
}

export default fp(clientsPlugin, { name: 'clients', fastify: '5.x' });
