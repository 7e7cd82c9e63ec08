import { configDefaults, defineConfig } from 'vitest/config';

// The reliability suite (fuzz, soak, Redis loss, shutdown, slow clients) runs on its own with
// `npm run test:reliability` (vitest.reliability.config.ts); `npm test` leaves it out.
export default defineConfig({
  test: {
    exclude: [...configDefaults.exclude, 'test/reliability/**'],
    // Bounds, not timings: building a gateway takes seconds on a loaded 2-core machine, and
    // vitest's 5 s default cut such runs short. Tests wait on events within these bounds.
    testTimeout: 30_000,
    hookTimeout: 30_000,
    expect: { poll: { timeout: 10_000 } },
  },
});
