// The floor for any Node gateway that reads the body: a Fastify route that parses the JSON body
// with the default parser and answers a fixed small JSON. Fastify defaults (no logger).
// A request with `x-bench-hold-ms` is held that long before the answer (Fastify's request,
// which holds the parsed body, stays referenced): the memory baseline for requests in flight.
import { setTimeout as sleep } from 'node:timers/promises';
import Fastify from 'fastify';
import { announce, urlOf } from './announce.ts';

const ANSWER = {
  solution: { label: 'bench', box: ['360', '276'], confidences: 0.635 },
  elapsed: 0,
};

let held = 0;
const app = Fastify({ bodyLimit: 4 * 1024 * 1024 });
app.post('/captcha/recognition/hcaptcha', async (request) => {
  const hold = Number(request.headers['x-bench-hold-ms']);
  if (hold > 0) {
    held++;
    try {
      await sleep(hold);
    } finally {
      held--;
    }
  }
  return ANSWER;
});
await app.listen({ host: '127.0.0.1', port: 0 });
announce(urlOf(app.server.address()), () => app.close(), { stats: () => ({ held }) });
