// `npm run demo`: the fake Ace Data Cloud and the gateway together, with a fresh demo client key,
// so a newcomer sees a real answer without an Ace Data Cloud account.
//   DEMO_PORT (8080): the gateway's port; DEMO_LATENCY_MS (1500): the fake upstream's answer time.

import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildApp } from '../src/app.ts';
import { generateClientKey, hashClientKey, writeClientsFile } from '../src/clients/registry.ts';
import { loadConfig } from '../src/config.ts';
import { FAKE_UPSTREAM_DEFAULT_TOKEN, startFakeUpstream } from './fake-upstream.ts';

const port = Number(process.env.DEMO_PORT ?? 8080);
const latencyMs = Number(process.env.DEMO_LATENCY_MS ?? 1500);

const workDir = await mkdtemp(join(tmpdir(), 'acedata-gateway-demo-'));
const fake = await startFakeUpstream({ latencyMs });

const key = generateClientKey();
const clientsFile = join(workDir, 'clients.json');
await writeClientsFile(clientsFile, { clients: [{ id: 'demo', keySha256: hashClientKey(key) }] });

const image = await readFile(new URL('./assets/challenge.png', import.meta.url));
const requestFile = join(workDir, 'request.json');
await writeFile(
  requestFile,
  JSON.stringify({
    question: 'Please click each image containing a bus',
    queries: [image.toString('base64')],
  }),
);

const config = loadConfig({
  ACEDATA_API_TOKEN: FAKE_UPSTREAM_DEFAULT_TOKEN,
  ACEDATA_BASE_URL: fake.url,
  GATEWAY_CLIENTS_FILE: clientsFile,
  HOST: '127.0.0.1',
  PORT: String(port),
  LOG_LEVEL: process.env.LOG_LEVEL ?? 'info',
});
const app = await buildApp(config);
const address = await app.listen({ host: config.HOST, port: config.PORT });

const curl = [
  `curl -s ${address}/captcha/recognition/hcaptcha`,
  `  -H 'authorization: Bearer ${key}'`,
  `  -H 'content-type: application/json'`,
  `  -H 'x-request-id: my-first-request'`,
  `  -d @${requestFile}`,
].join(' \\\n');

process.stdout.write(`
acedata-gateway demo
  gateway        ${address}  (logs below, one JSON line per request)
  fake upstream  ${fake.url}  (answers in ${latencyMs} ms; stands in for api.acedata.cloud)
  demo client    id "demo", key ${key}  (valid until you stop the demo)

Try it (the answer takes about ${Math.ceil(latencyMs / 1000)} s, like the real API but faster):

${curl}

Ctrl-C stops the demo.

`);

let closing = false;
const stop = async () => {
  if (closing) return;
  closing = true;
  await app.close();
  await fake.close();
  process.exit(0);
};
process.once('SIGINT', stop);
process.once('SIGTERM', stop);
