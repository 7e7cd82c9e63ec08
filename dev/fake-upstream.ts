// A faithful fake of Ace Data Cloud's hCaptcha API (api.acedata.cloud), for tests, benchmarks and
// the demo. It follows the upstream's public OpenAPI spec (AceDataCloud/Docs openapi/hcaptcha.json)
// and guides: three endpoints, the documented error codes and messages, async tasks with the
// 120 s deadline. Faults can be injected per call, by default, or at random from a seeded PRNG.
// The code lives in dev/fake-upstream/; this module is its public API.

/** The token fingerprint the gateway logs (first 8 hex of SHA-256), for asserting on logs. */
export { tokenFingerprint as fingerprint } from '../src/upstream/token-pool.ts';
export type { RevocationCode } from './fake-upstream/accounts.ts';
export {
  deriveSolution,
  freshPassToken,
  mulberry32,
  type Solution,
} from './fake-upstream/answers.ts';
export {
  callFake,
  type FakeCallOptions,
  type FakeReply,
} from './fake-upstream/client.ts';
export {
  type Fault,
  type FaultSettings,
  faultSchema,
  faultSettingsSchema,
  type RandomFaults,
  randomFaultsSchema,
} from './fake-upstream/faults.ts';
export {
  FAKE_UPSTREAM_DEFAULT_TOKEN,
  type FakeUpstreamOptions,
  fakeUpstreamOptionsSchema,
  UPSTREAM_TASK_DEADLINE_MS,
} from './fake-upstream/options.ts';
export {
  API_PATHS,
  type ApiPath,
  RECOGNITION_PATH,
  TASK_TIMEOUT_DETAIL,
  TASKS_PATH,
  TOKEN_PATH,
  UPSTREAM_ERRORS,
  type UpstreamErrorCode,
} from './fake-upstream/protocol.ts';
export type { RecordedCall } from './fake-upstream/recorder.ts';
export { type FakeUpstream, startFakeUpstream } from './fake-upstream/server.ts';
