import closeWithGrace from 'close-with-grace';
import { buildApp } from './app.ts';
import { ClientRegistryError } from './clients/registry.ts';
import { ConfigError, loadConfig, loadDotEnv } from './config.ts';

/** Entry point: configuration → app → listen → close gracefully on a signal. */
async function main(): Promise<void> {
  loadDotEnv();
  const config = loadConfig(process.env);
  const app = await buildApp(config);

  closeWithGrace({ delay: 30_000, logger: false }, async ({ signal, err }) => {
    if (err) app.log.error({ err }, 'closing after an unexpected error');
    else app.log.info({ signal }, 'shutting down');
    await app.close();
  });

  await app.listen({ host: config.HOST, port: config.PORT });
}

main().catch((error: unknown) => {
  if (error instanceof ConfigError || error instanceof ClientRegistryError) {
    process.stderr.write(`acedata-gateway: ${error.message}\n`);
  } else {
    process.stderr.write(`acedata-gateway: failed to start: ${String(error)}\n`);
  }
  process.exit(1);
});
