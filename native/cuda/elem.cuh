// Device-side element access, warp reductions and launch sizes shared by the
// CUDA kernels. bfloat16 is converted with the same integer arithmetic as the
// CPU (mg::f32_to_bf16), so both backends round and quiet NaNs identically.
#pragma once

#include <algorithm>
#include <cstdint>

#include "runtime.h"

namespace mg::cuda {

// ---- element access: float32 and bfloat16 are both computed in float32 ----

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) { return __uint_as_float(uint32_t(h) << 16); }

__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                        // round to nearest even
  return uint16_t(u >> 16);
}

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const uint16_t* p) { return bf16_bits_to_f32(*p); }
__device__ __forceinline__ double load(const double* p) { return *p; }  // partial sums
__device__ __forceinline__ void store(float* p, double v) { *p = float(v); }
__device__ __forceinline__ void store(uint16_t* p, double v) { *p = f32_to_bf16_bits(float(v)); }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(uint16_t* p, float v) { *p = f32_to_bf16_bits(v); }

// Calls fn(T{}) with T = float for float32 or uint16_t for bfloat16 (host side).
template <typename Fn>
void dispatch_float(DType dt, const char* op, Fn&& fn) {
  if (dt == DType::F32) return fn(float{});
  if (dt == DType::BF16) return fn(uint16_t{});
  fail("%s: dtype %s is not supported (float32 or bfloat16)", op, dtype_name(dt));
}

// ---- launch sizes ----

constexpr int kThreads = 256;  // threads per block of the grid-stride kernels
// Grid-stride loops cap their grid here: enough blocks to fill any GPU many times
// over, and small enough that a 32-bit index never wraps (i + stride < 2^31 + 2^24).
constexpr int64_t kMaxBlocks = 65536;

inline unsigned blocks_for(int64_t items, int64_t per_block = kThreads) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>((items + per_block - 1) / per_block, kMaxBlocks)));
}

__device__ __forceinline__ int64_t global_thread() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_threads() { return int64_t(gridDim.x) * blockDim.x; }

// ---- warp reductions (every lane gets the result) ----

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Sum over a whole block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the result. `shared` holds 32 floats; the trailing barrier lets the caller
// reuse it at once.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_sum(lane < warps ? shared[lane] : 0.f);
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  v = shared[0];
  __syncthreads();
  return v;
}

// Max over a whole block, and the double sum and max: as block_sum (`shared` holds 32 values; every thread gets
// the result; the trailing barrier lets the caller reuse `shared` at once).
template <typename V, typename Op>
__device__ __forceinline__ V block_reduce(V v, V* shared, V identity, Op op) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, offset));
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? shared[lane] : identity;
    for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, offset));
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  v = shared[0];
  __syncthreads();
  return v;
}

__device__ __forceinline__ float block_max(float v, float* shared) {
  return block_reduce(v, shared, -INFINITY, [](float a, float b) { return fmaxf(a, b); });
}
__device__ __forceinline__ double block_max(double v, double* shared) {
  return block_reduce(v, shared, -double(INFINITY), [](double a, double b) { return fmax(a, b); });
}
__device__ __forceinline__ double block_sum(double v, double* shared) {
  return block_reduce(v, shared, 0.0, [](double a, double b) { return a + b; });
}

}  // namespace mg::cuda
