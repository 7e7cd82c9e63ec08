// The gateway under test: buildApp from src/ with the clients in BENCH_CLIENTS (JSON: [{id, key}]),
// each with its clients-file rate limit raised so that it never binds. Everything else comes from
// the environment, exactly as src/server.ts reads it (the parent passes a clean environment, so
// unset settings take their defaults); logs go to stdout, as in production. The admin server
// (/metrics) listens on ADMIN_HOST:ADMIN_PORT, which the parent sets to loopback, port 0.
import { buildApp } from '../../src/app.ts';
import { ClientRegistry, hashClientKey } from '../../src/clients/registry.ts';
import { loadConfig } from '../../src/config.ts';
import { announce, urlOf } from './announce.ts';

const listed = JSON.parse(process.env.BENCH_CLIENTS ?? '[]') as Array<{ id: string; key: string }>;
if (listed.length === 0) throw new Error('BENCH_CLIENTS must list at least one client');

const config = loadConfig(process.env);
const clients = new ClientRegistry(
  listed.map(({ id, key }) => ({
    id,
    keySha256: hashClientKey(key),
    rateLimit: { max: 1_000_000_000, windowSeconds: 60 },
  })),
);
const app = await buildApp(config, { clients });
await app.listen({ host: config.HOST, port: config.PORT });
await app.admin.listen({ host: config.ADMIN_HOST, port: config.ADMIN_PORT });
announce(urlOf(app.server.address()), () => app.close(), {
  adminUrl: urlOf(app.admin.server.address()),
  stats: () => ({ ...app.inflight.load }),
});
