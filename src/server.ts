import closeWithGrace from 'close-with-grace';
import { buildApp } from './app.ts';
import { ClientRegistryError } from './clients/registry.ts';
import { ConfigError, loadConfig, loadDotEnv } from './config.ts';

/**
 * Entry point: configuration → app → listen. On SIGTERM/SIGINT: /readyz turns 503 and new
 * requests are refused, the listener closes, in-flight requests finish (up to
 * SHUTDOWN_TIMEOUT_MS), then Redis and the upstream pool close and the process exits 0.
 * On SIGHUP the clients file is read again at once (it is also watched).
 */
async function main(): Promise<void> {
  loadDotEnv();
  const config = loadConfig(process.env);
  const app = await buildApp(config);

  // SIGHUP reloads the clients file (below); it must not start a shutdown.
  const graceful = {
    delay: config.SHUTDOWN_TIMEOUT_MS,
    logger: false as const,
    skip: ['SIGHUP' as const],
    onTimeout: (ms: number) =>
      app.log.error(
        { shutdown_timeout_ms: ms },
        'drain budget ran out; exiting with requests in flight',
      ),
  };
  closeWithGrace(graceful, async ({ signal, err }) => {
    if (err) app.log.error({ err }, 'closing after an unexpected error');
    else app.log.info({ signal }, 'draining: finishing in-flight requests before exit');
    app.startDraining();
    await app.close();
    app.log.info('closed');
  });
  process.on('SIGHUP', () => {
    app
      .reloadClients()
      .catch((error: unknown) => app.log.error({ err: error }, 'clients reload failed'));
  });

  await app.listen({ host: config.HOST, port: config.PORT });
  await app.admin.listen({ host: config.ADMIN_HOST, port: config.ADMIN_PORT });
  app.log.info(
    { port: portOf(app), admin_port: portOf(app.admin), admin_host: config.ADMIN_HOST },
    'gateway listening',
  );
}

function portOf(server: { server: { address(): unknown } }): number | undefined {
  const address = server.server.address();
  return typeof address === 'object' && address !== null
    ? (address as { port: number }).port
    : undefined;
}

main().catch((error: unknown) => {
  if (error instanceof ConfigError || error instanceof ClientRegistryError) {
    process.stderr.write(`acedata-gateway: ${error.message}\n`);
  } else {
    process.stderr.write(`acedata-gateway: failed to start: ${String(error)}\n`);
  }
  process.exit(1);
});
