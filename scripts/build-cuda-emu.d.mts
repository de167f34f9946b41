// Types of scripts/build-cuda-emu.mjs for the TypeScript that imports it (test/cuda-emu.test.ts).
export function rewriteLaunches(src: string, file: string): string;
export function rewriteShared(src: string, idBase: number): string;
export function buildEmulatedAddon(options?: { quiet?: boolean; cudaDir?: string; out?: string }): Promise<string>;
