import { defineConfig } from 'vitest/config';

/** The whole run's budget: every test's timeout is cut to what is left of it (support.ts budget). */
const TOTAL_BUDGET_MS = 300_000;
process.env.RELIABILITY_DEADLINE ??= String(Date.now() + TOTAL_BUDGET_MS);

// `npm run test:reliability`: test/reliability/ only, bounded to 5 minutes in all. Two workers
// (the machines have 2 cores).
// --expose-gc lets the soak measure its live heap after a full collection.
export default defineConfig({
  test: {
    include: ['test/reliability/**/*.test.ts'],
    execArgv: ['--expose-gc'],
    maxWorkers: 2,
    testTimeout: 120_000,
    hookTimeout: 30_000,
    teardownTimeout: 30_000,
  },
});
