// What each op family contributes to the kernel benchmark (lib/cli/bench/kernels.ts):
// cases at a preset's shapes, each with the work it does for the roofline figure.

export type Preset = 'small' | 'base';

export interface BenchCase {
  /** Op name as users see it, e.g. 'layerNorm backward'. */
  op: string;
  /** Shape description, e.g. '[8,128,256]'. */
  shape: string;
  /** Floating-point operations of one run (for compute-bound kernels)... */
  flops?: number;
  /** ...or bytes read plus written by one run (for memory-bound kernels). */
  bytes?: number;
  /** Allocates inputs and returns the timed function and the cleanup. */
  setup: () => { run: () => void; dispose: () => void };
}

/** SPEC.md §6 shapes of the benchmark presets. */
export const presetShapes: Record<Preset, { batch: number; T: number; D: number; H: number; F: number; S: number; V: number }> = {
  small: { batch: 8, T: 128, D: 256, H: 4, F: 1024, S: 16, V: 256 },
  base: { batch: 16, T: 512, D: 768, H: 12, F: 3072, S: 64, V: 50257 },
};
