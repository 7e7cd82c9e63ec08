// The dev/ fake Ace Data Cloud in its own process. FAKE_LATENCY_MS sets its answer time.
import { startFakeUpstream } from '../../dev/fake-upstream.ts';
import { announce } from './announce.ts';

const fake = await startFakeUpstream({
  host: '127.0.0.1',
  port: 0,
  latencyMs: Number(process.env.FAKE_LATENCY_MS ?? 0),
});
announce(fake.url, () => fake.close());
