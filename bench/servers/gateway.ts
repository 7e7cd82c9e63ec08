// The gateway under test: buildApp from src/ with one in-memory client whose rate limit never
// binds. Configuration comes from the environment, exactly as src/server.ts reads it (the parent
// passes a clean environment); logs go to stdout, as in production.
import { buildApp } from '../../src/app.ts';
import { ClientRegistry, hashClientKey } from '../../src/clients/registry.ts';
import { loadConfig } from '../../src/config.ts';
import { announce, urlOf } from './announce.ts';

const key = process.env.BENCH_CLIENT_KEY;
if (!key) throw new Error('BENCH_CLIENT_KEY is required');

const config = loadConfig(process.env);
const clients = new ClientRegistry([
  {
    id: 'bench',
    keySha256: hashClientKey(key),
    rateLimit: { max: 1_000_000_000, windowSeconds: 60 },
  },
]);
const app = await buildApp(config, { clients });
await app.listen({ host: config.HOST, port: config.PORT });
announce(urlOf(app.server.address()), () => app.close());
