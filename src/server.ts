import closeWithGrace from 'close-with-grace';
import { buildApp } from './app.ts';
import { ClientRegistryError } from './clients/registry.ts';
import { ConfigError, loadConfig, loadDotEnv } from './config.ts';

/**
 * Entry point: configuration → app → listen. On SIGTERM/SIGINT: /readyz turns 503 and new
 * requests are refused, the listener closes, in-flight requests finish (up to
 * SHUTDOWN_TIMEOUT_MS), then Redis and the upstream pool close and the process exits 0.
 */
async function main(): Promise<void> {
  loadDotEnv();
  const config = loadConfig(process.env);
  const app = await buildApp(config);

  closeWithGrace({ delay: config.SHUTDOWN_TIMEOUT_MS, logger: false }, async ({ signal, err }) => {
    if (err) app.log.error({ err }, 'closing after an unexpected error');
    else app.log.info({ signal }, 'draining: finishing in-flight requests before exit');
    app.startDraining();
    await app.close();
    app.log.info('closed');
  });

  await app.listen({ host: config.HOST, port: config.PORT });
  if (app.admin && config.ADMIN_PORT !== undefined) {
    await app.admin.listen({ host: config.HOST, port: config.ADMIN_PORT });
  }
}

main().catch((error: unknown) => {
  if (error instanceof ConfigError || error instanceof ClientRegistryError) {
    process.stderr.write(`acedata-gateway: ${error.message}\n`);
  } else {
    process.stderr.write(`acedata-gateway: failed to start: ${String(error)}\n`);
  }
  process.exit(1);
});
