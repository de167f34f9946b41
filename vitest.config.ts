// Test runner settings: native addons and one thread pool per process, so test files run in forked processes.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    // Lets the memory tests check the FinalizationRegistry safety net with gc().
    execArgv: ['--expose-gc'],
    testTimeout: 60_000,
    // npm run test:cuda-emu: record the CUDA kernels each file launched on the emulated addon.
    setupFiles: process.env.MEMGPT_EMU_REPORT ? ['test/emu-report.ts'] : [],
  },
});
