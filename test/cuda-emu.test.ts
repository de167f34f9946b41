// The emulated CUDA addon's build (scripts/build-cuda-emu.mjs): how it turns the two CUDA-only constructs,
// kernel launches and __shared__ declarations, into C++ that calls the emulator, keeping line numbers.
import { describe, expect, it } from 'vitest';

import { rewriteLaunches, rewriteShared } from '../scripts/build-cuda-emu.mjs';

describe('the emulated CUDA build', () => {
  it('rewrites a launch of a kernel named with its template arguments into launch<&K>', () => {
    const src = 'gemm_kernel<AK, BK, kVec<T>><<<grid, kThreads, bytes, s>>>(a, lda, f(b, c));';
    expect(rewriteLaunches(src, 'x.cu')).toBe(
      '::mg_emu::launch<&gemm_kernel<AK, BK, kVec<T>>>(::mg_emu::LaunchDims(grid, kThreads, bytes, s), a, lda, f(b, c));');
  });

  it('rewrites a launch whose template arguments the call deduces into a generic-lambda call', () => {
    expect(rewriteLaunches('  fill_kernel<<<blocks_for(n), kThreads, 0, s>>>(out, n, bits);', 'x.cu')).toBe(
      '  ::mg_emu::launch_call("fill_kernel", __PRETTY_FUNCTION__, ::mg_emu::LaunchDims(blocks_for(n), kThreads, 0, s), ' +
      '[](const auto&... a) { fill_kernel(a...); }, out, n, bits);');
  });

  it('keeps the line count of launches spread over lines, and launches without arguments', () => {
    const src = 'ln_kernel<T, 4>\n    <<<blocks, kThreads, 0, s>>>(x,\n y);\nprobe<<<1, 1>>>();\nrest();';
    const out = rewriteLaunches(src, 'x.cu');
    expect(out.split('\n')).toHaveLength(src.split('\n').length);
    expect(out).toContain('::mg_emu::launch<&ln_kernel<T, 4>>(::mg_emu::LaunchDims(blocks, kThreads, 0, s), x,\n y)');
    expect(out).toContain('::mg_emu::launch_call("probe", __PRETTY_FUNCTION__, ::mg_emu::LaunchDims(1, 1), [](const auto&... a) { probe(a...); });');
    expect(out.endsWith('rest();')).toBe(true);
  });

  it('turns static and dynamic __shared__ declarations into the block\'s shared memory, each static one its own id', () => {
    const src = [
      '  __shared__ __align__(16) float As[2][kFBK][kFBM + kFPad];',
      '  __shared__ double red[32];',
      '  __shared__ __align__(16) GemmSmem sm;',
      '  extern __shared__ __align__(16) uint16_t smem[];',
      '  extern __shared__ float combine[];',
    ].join('\n');
    expect(rewriteShared(src, 7000).split('\n')).toEqual([
      '  auto& As = ::mg_emu::shared_var<float[2][kFBK][kFBM + kFPad]>(7000, 16);',
      '  auto& red = ::mg_emu::shared_var<double[32]>(7001);',
      '  auto& sm = ::mg_emu::shared_var<GemmSmem>(7002, 16);',
      '  uint16_t* const smem = static_cast<uint16_t*>(::mg_emu::shared_dynamic());',
      '  float* const combine = static_cast<float*>(::mg_emu::shared_dynamic());',
    ]);
  });
});
