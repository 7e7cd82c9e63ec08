import { configDefaults, defineConfig } from 'vitest/config';

// The reliability suite (fuzz, soak, Redis loss, shutdown, slow clients) runs on its own with
// `npm run test:reliability` (vitest.reliability.config.ts); `npm test` leaves it out.
export default defineConfig({
  test: {
    exclude: [...configDefaults.exclude, 'test/reliability/**'],
  },
});
