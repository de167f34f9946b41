// Under `npm run test:cuda-emu` (MEMGPT_EMU_REPORT set): after each test file, appends the CUDA kernels that the
// emulated addon launched for it to the report file, one JSON line per file.
import { appendFileSync } from 'node:fs';
import { afterAll } from 'vitest';

import { cudaBackend, cudaStatus } from '../lib/native/backend.js';

afterAll(() => {
  const path = process.env.MEMGPT_EMU_REPORT;
  if (!path || !cudaStatus().available) return;
  const take = (cudaBackend() as unknown as { emulatorLaunches?: () => Record<string, number> }).emulatorLaunches;
  if (take) appendFileSync(path, `${JSON.stringify(take())}\n`);
});
