// CUDA kernels of the op family "norm": layer norm, embedding and positions (RoPE, sinusoidal), computing
// what native/cpu/norm.cpp computes (see native/common/norm.inc for the contract).
//
// Layer norm is memory-bound: a row is read once into registers (16-byte vector loads when the tensors
// allow it), reduced over a warp (rows up to 1024 elements) or a 256-thread block (longer rows), and
// written once. The per-row sums are float per thread and double across threads. The backward's
// dweight/dbias are summed without atomics: the rows are cut into a number of contiguous parts that
// depends only on `rows`; each part (one block) sums its rows in a fixed order into its own partial
// row, and a second pass adds the partials in part order, in double.
//
// The embedding backward sorts the positions by id (CUB's stable radix sort), so that each vocabulary
// row is summed by one warp over its positions in increasing order: the CPU's order, to the bit.
// Position angles are computed in double, like the CPU.
#include <cub/device/device_radix_sort.cuh>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "elem.cuh"
#include "ids.cuh"
#include "kernels.h"

namespace mg::cuda {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
size_t round_up(size_t bytes) { return (bytes + 255) & ~size_t(255); }

// ---------------------------------------------------------------- vectors

// Elements in a 16-byte vector: 4 float32 or 8 bfloat16.
template <typename T>
constexpr int kVec = int(16 / sizeof(T));

// V consecutive elements as float32; V > 1 needs a 16-byte aligned p and V == kVec<T>.
template <int V, typename T>
__device__ __forceinline__ void load_vec(const T* p, float (&v)[V]) {
  if constexpr (V == 1) {
    v[0] = load(p);
  } else if constexpr (std::is_same_v<T, float>) {
    static_assert(V == 4, "4 float32 per vector");
    float4 f = *reinterpret_cast<const float4*>(p);
    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
  } else {
    static_assert(V == 8, "8 bfloat16 per vector");
    uint4 r = *reinterpret_cast<const uint4*>(p);
    const uint32_t words[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {  // little-endian: the lower half holds the first element
      v[2 * k] = __uint_as_float(words[k] << 16);
      v[2 * k + 1] = __uint_as_float(words[k] & 0xffff0000u);
    }
  }
}

template <int V, typename T>
__device__ __forceinline__ void store_vec(T* p, const float (&v)[V]) {
  if constexpr (V == 1) {
    store(p, v[0]);
  } else if constexpr (std::is_same_v<T, float>) {
    static_assert(V == 4, "4 float32 per vector");
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    static_assert(V == 8, "8 bfloat16 per vector");
    uint32_t words[4];
#pragma unroll
    for (int k = 0; k < 4; k++)
      words[k] = uint32_t(f32_to_bf16_bits(v[2 * k])) | (uint32_t(f32_to_bf16_bits(v[2 * k + 1])) << 16);
    *reinterpret_cast<uint4*>(p) = make_uint4(words[0], words[1], words[2], words[3]);
  }
}

// ---------------------------------------------------------------- layer norm

// Rows are handled by groups of G threads: a warp (G = 32, kThreads / 32 rows at a time per block) or
// the whole block (G = kThreads). In the cached kernels thread `lane` of a group keeps vectors
// k = c·G + lane (c < CHUNKS) of the row, i.e. elements [V·k, V·k + V), in registers.
constexpr int kWarpChunks = 8;   // the most vectors a lane keeps (a warp row is also at most 1024 elements)
constexpr int kBlockChunks = 8;  // the longest cached block row: 256 threads x 8 vectors

// Sums N doubles over a group of G threads (xor butterflies, then warp totals in warp order: a fixed
// order); every thread of the group gets the sums. `shared` holds 32·N doubles and is only used when
// G is a whole block (= blockDim.x); the trailing barrier lets the caller reuse it at once.
template <int G, int N>
__device__ __forceinline__ void group_sum(double (&v)[N], double* shared) {
#pragma unroll
  for (int i = 0; i < N; i++) v[i] = warp_sum(v[i]);
  if constexpr (G > 32) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
#pragma unroll
      for (int i = 0; i < N; i++) shared[32 * i + warp] = v[i];
    }
    __syncthreads();
    if (warp == 0) {
#pragma unroll
      for (int i = 0; i < N; i++) {
        double t = warp_sum(lane < G / 32 ? shared[32 * i + lane] : 0.0);
        if (lane == 0) shared[32 * i] = t;
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < N; i++) v[i] = shared[32 * i];
    __syncthreads();
  }
}

// y = (x − mean)·rstd·w + b, rounded step by step like the CPU (no fused multiply-add).
__device__ __forceinline__ float ln_out(float x, float mu, float rs, float w, float b) {
  return __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(x, mu), rs), w), b);
}

// Forward with the row in registers. Two passes over the registers (mean, then squared deviations):
// no cancellation when |mean| ≫ std.
template <typename T, int V, int CHUNKS, int G>
__global__ void __launch_bounds__(kThreads) ln_forward_cached(const T* x, const T* w, const T* b, T* y, float* mean,
                                                              float* rstd, int64_t rows, int64_t d, float eps) {
  __shared__ double red[32];
  constexpr int kGroups = kThreads / G;
  const int lane = int(threadIdx.x) % G, group = int(threadIdx.x) / G;
  const int64_t nvec = d / V;
  // For G = kThreads the trip count is the same for the whole block (group_sum has barriers).
  for (int64_t r = int64_t(blockIdx.x) * kGroups + group; r < rows; r += int64_t(gridDim.x) * kGroups) {
    const T* xr = x + r * d;
    float v[CHUNKS][V];
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < CHUNKS; c++) {
      const int64_t k = int64_t(c) * G + lane;
      if (k < nvec) {
        load_vec<V>(xr + k * V, v[c]);
#pragma unroll
        for (int e = 0; e < V; e++) s += v[c][e];
      } else {
#pragma unroll
        for (int e = 0; e < V; e++) v[c][e] = 0.f;
      }
    }
    double sum[1] = {s};
    group_sum<G>(sum, red);
    const float mu = float(sum[0] / double(d));
    float q = 0.f;
#pragma unroll
    for (int c = 0; c < CHUNKS; c++) {
      if (int64_t(c) * G + lane < nvec) {
#pragma unroll
        for (int e = 0; e < V; e++) {
          float t = v[c][e] - mu;
          q += t * t;
        }
      }
    }
    double var[1] = {q};
    group_sum<G>(var, red);
    const float rs = float(1.0 / sqrt(var[0] / double(d) + double(eps)));
    T* yr = y + r * d;
#pragma unroll
    for (int c = 0; c < CHUNKS; c++) {
      const int64_t k = int64_t(c) * G + lane;
      if (k < nvec) {
        float wv[V], bv[V], o[V];
        load_vec<V>(w + k * V, wv);
        load_vec<V>(b + k * V, bv);
#pragma unroll
        for (int e = 0; e < V; e++) o[e] = ln_out(v[c][e], mu, rs, wv[e], bv[e]);
        store_vec<V>(yr + k * V, o);
      }
    }
    if (lane == 0) {
      mean[r] = mu;
      rstd[r] = rs;
    }
  }
}

// Forward for rows too long to keep (or unaligned rows too long for a warp): one block per row, reading
// x three times (the row stays in L1/L2 between the passes).
template <typename T>
__global__ void __launch_bounds__(kThreads) ln_forward_uncached(const T* x, const T* w, const T* b, T* y, float* mean,
                                                                float* rstd, int64_t rows, int64_t d, float eps) {
  __shared__ double red[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {  // the same trip count for the whole block
    const T* xr = x + r * d;
    float s = 0.f;
    for (int64_t j = threadIdx.x; j < d; j += kThreads) s += load(xr + j);
    double sum[1] = {s};
    group_sum<kThreads>(sum, red);
    const float mu = float(sum[0] / double(d));
    float q = 0.f;
    for (int64_t j = threadIdx.x; j < d; j += kThreads) {
      float t = load(xr + j) - mu;
      q += t * t;
    }
    double var[1] = {q};
    group_sum<kThreads>(var, red);
    const float rs = float(1.0 / sqrt(var[0] / double(d) + double(eps)));
    T* yr = y + r * d;
    for (int64_t j = threadIdx.x; j < d; j += kThreads)
      store(yr + j, ln_out(load(xr + j), mu, rs, load(w + j), load(b + j)));
    if (threadIdx.x == 0) {
      mean[r] = mu;
      rstd[r] = rs;
    }
  }
}

// The rows' parts for the dweight/dbias partials: a function of `rows` only (never of the GPU), so the
// summation order, and the bits, are the same everywhere. About 16 rows a part, at most 256 parts.
int64_t ln_parts(int64_t rows) { return std::min<int64_t>(256, ceil_div(rows, 16)); }

// Part p = blockIdx.x covers rows [p·rows/parts, (p+1)·rows/parts).
__device__ __forceinline__ void part_rows(int64_t rows, int64_t parts, int64_t* lo, int64_t* hi) {
  const int64_t p = blockIdx.x;
  *lo = p * rows / parts;
  *hi = (p + 1) * rows / parts;
}

// Backward: dx = rstd·(g − mean(g) − x̂·mean(g·x̂)), g = dy·w, and each thread's share of Σ dy·x̂ and
// Σ dy over the rows of its part, in row order, kept in registers across the rows. Only those sums
// persist: a row is read once for the sums and again (from L1, just loaded) for dx, which keeps the
// registers, and so the warps an SM can hold, at about the forward's.
// partial [parts, 2, d]: the part's dweight row, then its dbias row.
// G = 32: warp k of the block takes rows lo + k, lo + k + 8, ...; the 8 warps' sums are then added
// in warp order through shared memory (2·d floats, dynamic). G = kThreads: the block takes the rows
// one after another and each thread owns its columns, so it writes its sums directly.
template <typename T, int V, int CHUNKS, int G>
__global__ void __launch_bounds__(kThreads) ln_backward_cached(const T* x, const T* w, const float* mean,
                                                               const float* rstd, const T* dy, T* dx, float* partial,
                                                               int64_t rows, int64_t d, int64_t parts) {
  extern __shared__ float combine[];
  __shared__ double red[64];
  constexpr int kGroups = kThreads / G;
  const int lane = int(threadIdx.x) % G, group = int(threadIdx.x) / G;
  const int64_t nvec = d / V;
  int64_t lo, hi;
  part_rows(rows, parts, &lo, &hi);
  float pw[CHUNKS][V], pb[CHUNKS][V];
#pragma unroll
  for (int c = 0; c < CHUNKS; c++) {
#pragma unroll
    for (int e = 0; e < V; e++) pw[c][e] = pb[c][e] = 0.f;
  }
  for (int64_t r = lo + group; r < hi; r += kGroups) {  // for G = kThreads the same trip count block-wide
    const T* xr = x + r * d;
    const T* gr = dy + r * d;
    const float mu = mean[r], rs = rstd[r];
    float sg = 0.f, sgx = 0.f;
#pragma unroll
    for (int c = 0; c < CHUNKS; c++) {
      const int64_t k = int64_t(c) * G + lane;
      if (k < nvec) {
        float xv[V], gv[V], wv[V];
        load_vec<V>(xr + k * V, xv);
        load_vec<V>(gr + k * V, gv);
        load_vec<V>(w + k * V, wv);
#pragma unroll
        for (int e = 0; e < V; e++) {
          const float xh = __fmul_rn(__fsub_rn(xv[e], mu), rs), g = __fmul_rn(gv[e], wv[e]);
          pw[c][e] += gv[e] * xh;
          pb[c][e] += gv[e];
          sg += g;
          sgx += g * xh;
        }
      }
    }
    double sums[2] = {sg, sgx};
    group_sum<G>(sums, red);
    const float mg = float(sums[0] / double(d)), mgx = float(sums[1] / double(d));
#pragma unroll
    for (int c = 0; c < CHUNKS; c++) {
      const int64_t k = int64_t(c) * G + lane;
      if (k < nvec) {
        float xv[V], gv[V], wv[V], o[V];
        load_vec<V>(xr + k * V, xv);
        load_vec<V>(gr + k * V, gv);
        load_vec<V>(w + k * V, wv);
#pragma unroll
        for (int e = 0; e < V; e++) {
          const float xh = __fmul_rn(__fsub_rn(xv[e], mu), rs), g = __fmul_rn(gv[e], wv[e]);
          o[e] = __fmul_rn(rs, __fsub_rn(__fsub_rn(g, mg), __fmul_rn(xh, mgx)));
        }
        store_vec<V>(dx + r * d + k * V, o);
      }
    }
  }
  float* out_w = partial + int64_t(blockIdx.x) * 2 * d;
  float* out_b = out_w + d;
  if constexpr (G == kThreads) {
#pragma unroll
    for (int c = 0; c < CHUNKS; c++) {
      const int64_t k = int64_t(c) * G + lane;
      if (k < nvec) {
#pragma unroll
        for (int e = 0; e < V; e++) {
          out_w[k * V + e] = pw[c][e];
          out_b[k * V + e] = pb[c][e];
        }
      }
    }
  } else {
    // Warp 0 writes, then warps 1, 2, ... add theirs, one at a time.
    for (int turn = 0; turn < kGroups; turn++) {
      if (group == turn) {
#pragma unroll
        for (int c = 0; c < CHUNKS; c++) {
          const int64_t k = int64_t(c) * G + lane;
          if (k < nvec) {
#pragma unroll
            for (int e = 0; e < V; e++) {
              const int64_t j = k * V + e;
              combine[j] = turn == 0 ? pw[c][e] : combine[j] + pw[c][e];
              combine[d + j] = turn == 0 ? pb[c][e] : combine[d + j] + pb[c][e];
            }
          }
        }
      }
      __syncthreads();
    }
    for (int64_t j = threadIdx.x; j < 2 * d; j += kThreads) out_w[j] = combine[j];
  }
}

// Backward for rows too long to keep: one block per part, its rows one after another, x and dy read
// twice; each thread adds its columns' dy·x̂ and dy into the part's partial row in global memory
// (zeroed before), which no other thread touches.
template <typename T>
__global__ void __launch_bounds__(kThreads) ln_backward_uncached(const T* x, const T* w, const float* mean,
                                                                 const float* rstd, const T* dy, T* dx,
                                                                 float* partial, int64_t rows, int64_t d,
                                                                 int64_t parts) {
  __shared__ double red[64];
  int64_t lo, hi;
  part_rows(rows, parts, &lo, &hi);
  float* out_w = partial + int64_t(blockIdx.x) * 2 * d;
  float* out_b = out_w + d;
  for (int64_t r = lo; r < hi; r++) {
    const T* xr = x + r * d;
    const T* gr = dy + r * d;
    const float mu = mean[r], rs = rstd[r];
    float sg = 0.f, sgx = 0.f;
    for (int64_t j = threadIdx.x; j < d; j += kThreads) {
      float xh = __fmul_rn(__fsub_rn(load(xr + j), mu), rs), g = __fmul_rn(load(gr + j), load(w + j));
      sg += g;
      sgx += g * xh;
    }
    double sums[2] = {sg, sgx};
    group_sum<kThreads>(sums, red);
    const float mg = float(sums[0] / double(d)), mgx = float(sums[1] / double(d));
    for (int64_t j = threadIdx.x; j < d; j += kThreads) {
      float gy = load(gr + j);
      float xh = __fmul_rn(__fsub_rn(load(xr + j), mu), rs), g = __fmul_rn(gy, load(w + j));
      out_w[j] += gy * xh;
      out_b[j] += gy;
      store(dx + r * d + j, __fmul_rn(rs, __fsub_rn(__fsub_rn(g, mg), __fmul_rn(xh, mgx))));
    }
  }
}

// dweight[j] and dbias[j]: the partials summed in part order, in double. A block takes 32 columns;
// its 8 warps sum the parts ≡ warp (mod 8) each, and the 8 sums are then added in warp order.
template <typename T>
__global__ void __launch_bounds__(kThreads) ln_param_grads_kernel(const float* partial, int64_t parts, int64_t d,
                                                                  T* dw, T* db) {
  __shared__ double sums[2][kThreads / 32][32];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  for (int64_t j0 = int64_t(blockIdx.x) * 32; j0 < d; j0 += int64_t(gridDim.x) * 32) {  // block-uniform
    const int64_t j = j0 + tx;
    double sw = 0, sb = 0;
    if (j < d) {
      for (int64_t p = ty; p < parts; p += kThreads / 32) {
        sw += partial[p * 2 * d + j];
        sb += partial[p * 2 * d + d + j];
      }
    }
    sums[0][ty][tx] = sw;
    sums[1][ty][tx] = sb;
    __syncthreads();
    if (ty == 0 && j < d) {
      double tw = 0, tb = 0;
      for (int k = 0; k < kThreads / 32; k++) {
        tw += sums[0][k][tx];
        tb += sums[1][k][tx];
      }
      store(dw + j, float(tw));
      store(db + j, float(tb));
    }
    __syncthreads();  // sums is written again for the next columns
  }
}

// Calls fn(std::integral_constant<int, C>) with the smallest C in {1, 2, 4, 6, 8} that is ≥ chunks
// (chunks ≤ 8): the fewer registers a short row needs, the more warps an SM can hold.
template <typename Fn>
void with_chunks(int64_t chunks, Fn&& fn) {
  if (chunks <= 1) return fn(std::integral_constant<int, 1>{});
  if (chunks <= 2) return fn(std::integral_constant<int, 2>{});
  if (chunks <= 4) return fn(std::integral_constant<int, 4>{});
  if (chunks <= 6) return fn(std::integral_constant<int, 6>{});
  return fn(std::integral_constant<int, 8>{});
}

// The kernel shape of a layer norm call: 16-byte vectors (Vec) when every tensor allows them, else
// elements (Scalar); a warp per row for rows up to 1024 elements that fit 8 vectors a lane, a block per
// row for rows that fit 8 vectors a thread, else the uncached kernels.
enum class LnPath { WarpVec, WarpScalar, BlockVec, BlockScalar, Uncached };

struct LnPlan {
  LnPath path;
  int64_t chunks;  // vectors per thread (cached paths)
};

template <typename T>
LnPlan ln_plan(int64_t d, bool aligned) {
  const bool vec = aligned && d % kVec<T> == 0;
  const int64_t nvec = vec ? d / kVec<T> : d;
  if (d <= 1024 && nvec <= 32 * kWarpChunks) return {vec ? LnPath::WarpVec : LnPath::WarpScalar, ceil_div(nvec, 32)};
  if (nvec <= int64_t(kThreads) * kBlockChunks) {
    return {vec ? LnPath::BlockVec : LnPath::BlockScalar, ceil_div(nvec, kThreads)};
  }
  return {LnPath::Uncached, 0};
}

// ---------------------------------------------------------------- embedding

// out[i] = table[ids[i]]: one row per warp, copied as raw 16-byte vectors (V > 1) or elements.
template <typename T, int V>
__global__ void embedding_forward_kernel(const int32_t* ids, const T* table, T* out, int64_t n, int64_t d) {
  using Raw = std::conditional_t<V == 1, T, uint4>;
  const int lane = threadIdx.x & 31;
  const int64_t nvec = d / V;
  for (int64_t i = global_thread() >> 5; i < n; i += grid_threads() >> 5) {
    const Raw* src = reinterpret_cast<const Raw*>(table + int64_t(ids[i]) * d);
    Raw* dst = reinterpret_cast<Raw*>(out + i * d);
    for (int64_t k = lane; k < nvec; k += 32) dst[k] = src[k];
  }
}

__global__ void iota_kernel(int32_t* out, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) out[i] = int32_t(i);
}

// The first index in the sorted keys[0, n) whose key is ≥ key.
__device__ __forceinline__ int64_t lower_bound(const uint32_t* keys, int64_t n, uint32_t key) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    if (keys[mid] < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// dtable[v] = Σ dout[order[s]] over the run of sorted keys equal to v, in increasing position (the
// sort is stable), summed in float from 0 like the CPU; an id that never occurs gets a zero row. One
// vocabulary row per warp; lanes own column vectors, so a warp's loads of a dout row are coalesced.
template <typename T, int V>
__global__ void embedding_backward_kernel(const uint32_t* keys, const int32_t* order, const T* dout, T* dtable,
                                          int64_t n, int64_t vocab, int64_t d) {
  const int lane = threadIdx.x & 31;
  const int64_t nvec = d / V;
  for (int64_t v = global_thread() >> 5; v < vocab; v += grid_threads() >> 5) {
    const int64_t lo = lower_bound(keys, n, uint32_t(v)), hi = lower_bound(keys, n, uint32_t(v + 1));
    T* dst = dtable + v * d;
    for (int64_t k = lane; k < nvec; k += 32) {
      float acc[V];
#pragma unroll
      for (int e = 0; e < V; e++) acc[e] = 0.f;
      for (int64_t s = lo; s < hi; s++) {
        float g[V];
        load_vec<V>(dout + int64_t(order[s]) * d + k * V, g);
#pragma unroll
        for (int e = 0; e < V; e++) acc[e] += g[e];
      }
      store_vec<V>(dst + k * V, acc);
    }
  }
}

void check_embedding_ids(const int32_t* ids, int64_t n, int64_t vocab) {
  int32_t bad = 0;
  int64_t at = first_bad_id(ids, n, vocab, &bad, "embedding");
  if (at >= 0) {
    fail("embedding: token id %d at position %lld is outside the vocabulary (%lld)", bad, (long long)at,
         (long long)vocab);
  }
}

// ---------------------------------------------------------------- positions

// cs[p·half + i] = (cos, ±sin) of (offset + p)·θ_i, θ_i = 10000^(−2i/hd), computed in double.
__global__ void rope_table_kernel(float2* cs, int64_t t, int64_t half, int64_t hd, int64_t offset, bool inverse) {
  for (int64_t e = global_thread(); e < t * half; e += grid_threads()) {
    const int64_t p = e / half, i = e - p * half;
    const double theta = pow(10000.0, -2.0 * double(i) / double(hd));
    double s, c;
    sincos(double(offset + p) * theta, &s, &c);
    cs[e] = make_float2(float(c), float(inverse ? -s : s));
  }
}

// Rotates the pairs (i, i + half) of every head. blockIdx.y walks the rows (batch·t), threads the
// d_model / 2 pairs of a row: consecutive threads touch consecutive columns. Each pair is read and
// written by one thread, so y may alias x. Rounded like the CPU: a·c − b·s with no fused multiply-add.
template <typename T>
__global__ void rope_kernel(const T* x, T* y, const float2* cs, int64_t rows, int64_t t, int64_t d_model,
                            int64_t half) {
  const int64_t pairs = d_model / 2;
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= pairs) return;
  const int64_t h = j / half, i = j - h * half;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const float2 r = cs[(row % t) * half + i];
    const int64_t base = row * d_model + h * 2 * half + i;
    const float a = load(x + base), b = load(x + base + half);
    store(y + base, __fsub_rn(__fmul_rn(a, r.x), __fmul_rn(b, r.y)));
    store(y + base + half, __fadd_rn(__fmul_rn(a, r.y), __fmul_rn(b, r.x)));
  }
}

// out[p, 2i] = sin(q / 10000^(2i/d)), out[p, 2i + 1] = cos(...), q = offset + p, in double.
template <typename T>
__global__ void sinusoidal_kernel(T* out, int64_t t, int64_t d, int64_t offset) {
  const int64_t half = d / 2;
  for (int64_t e = global_thread(); e < t * half; e += grid_threads()) {
    const int64_t p = e / half, i = e - p * half;
    const double denom = pow(10000.0, 2.0 * double(i) / double(d));
    double s, c;
    sincos(double(offset + p) / denom, &s, &c);
    store(out + p * d + 2 * i, float(s));
    store(out + p * d + 2 * i + 1, float(c));
  }
}

}  // namespace

// ---------------------------------------------------------------- layer norm

void layernorm_forward(DType dt, const void* x, const void* w, const void* b, void* y, float* mean, float* rstd,
                       int64_t rows, int64_t d, float eps) {
  if (rows <= 0 || d <= 0) return;
  cudaStream_t s = stream();
  dispatch_float(dt, "layerNorm", [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = kVec<T>;
    const T* xp = static_cast<const T*>(x);
    const T* wp = static_cast<const T*>(w);
    const T* bp = static_cast<const T*>(b);
    T* yp = static_cast<T*>(y);
    const LnPlan plan = ln_plan<T>(d, aligned16(x) && aligned16(w) && aligned16(b) && aligned16(y));
    const unsigned warp_blocks = blocks_for(rows, kThreads / 32);
    const unsigned row_blocks = blocks_for(rows, 1);
    switch (plan.path) {
      case LnPath::WarpVec:
        with_chunks(plan.chunks, [&](auto c) {
          ln_forward_cached<T, V, decltype(c)::value, 32>
              <<<warp_blocks, kThreads, 0, s>>>(xp, wp, bp, yp, mean, rstd, rows, d, eps);
        });
        break;
      case LnPath::WarpScalar:
        with_chunks(plan.chunks, [&](auto c) {
          ln_forward_cached<T, 1, decltype(c)::value, 32>
              <<<warp_blocks, kThreads, 0, s>>>(xp, wp, bp, yp, mean, rstd, rows, d, eps);
        });
        break;
      case LnPath::BlockVec:
        with_chunks(plan.chunks, [&](auto c) {
          ln_forward_cached<T, V, decltype(c)::value, kThreads>
              <<<row_blocks, kThreads, 0, s>>>(xp, wp, bp, yp, mean, rstd, rows, d, eps);
        });
        break;
      case LnPath::BlockScalar:
        with_chunks(plan.chunks, [&](auto c) {
          ln_forward_cached<T, 1, decltype(c)::value, kThreads>
              <<<row_blocks, kThreads, 0, s>>>(xp, wp, bp, yp, mean, rstd, rows, d, eps);
        });
        break;
      case LnPath::Uncached:
        ln_forward_uncached<T><<<row_blocks, kThreads, 0, s>>>(xp, wp, bp, yp, mean, rstd, rows, d, eps);
        break;
    }
    check_launch("layerNorm");
  });
}

void layernorm_backward(DType dt, const void* x, const void* w, const float* mean, const float* rstd, const void* dy,
                        void* dx, void* dw, void* db, int64_t rows, int64_t d) {
  if (d <= 0) return;
  cudaStream_t s = stream();
  dispatch_float(dt, "layerNormBackward", [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = kVec<T>;
    const T* xp = static_cast<const T*>(x);
    const T* wp = static_cast<const T*>(w);
    const T* gp = static_cast<const T*>(dy);
    T* dxp = static_cast<T*>(dx);
    // rows == 0: no parts, and the second pass writes zeros, as the CPU does.
    const int64_t parts = rows > 0 ? ln_parts(rows) : 0;
    const size_t partial_bytes = size_t(std::max<int64_t>(parts, 1) * 2 * d) * sizeof(float);
    float* partial = static_cast<float*>(reduction_scratch(partial_bytes));
    if (parts > 0) {
      const LnPlan plan = ln_plan<T>(d, aligned16(x) && aligned16(w) && aligned16(dy) && aligned16(dx));
      const unsigned blocks = unsigned(parts);
      const size_t combine_bytes = size_t(2 * d) * sizeof(float);  // warp paths: d ≤ 1024, at most 8 KiB
      switch (plan.path) {
        case LnPath::WarpVec:
          with_chunks(plan.chunks, [&](auto c) {
            ln_backward_cached<T, V, decltype(c)::value, 32>
                <<<blocks, kThreads, combine_bytes, s>>>(xp, wp, mean, rstd, gp, dxp, partial, rows, d, parts);
          });
          break;
        case LnPath::WarpScalar:
          with_chunks(plan.chunks, [&](auto c) {
            ln_backward_cached<T, 1, decltype(c)::value, 32>
                <<<blocks, kThreads, combine_bytes, s>>>(xp, wp, mean, rstd, gp, dxp, partial, rows, d, parts);
          });
          break;
        case LnPath::BlockVec:
          with_chunks(plan.chunks, [&](auto c) {
            ln_backward_cached<T, V, decltype(c)::value, kThreads>
                <<<blocks, kThreads, 0, s>>>(xp, wp, mean, rstd, gp, dxp, partial, rows, d, parts);
          });
          break;
        case LnPath::BlockScalar:
          with_chunks(plan.chunks, [&](auto c) {
            ln_backward_cached<T, 1, decltype(c)::value, kThreads>
                <<<blocks, kThreads, 0, s>>>(xp, wp, mean, rstd, gp, dxp, partial, rows, d, parts);
          });
          break;
        case LnPath::Uncached:
          check(cudaMemsetAsync(partial, 0, size_t(parts * 2 * d) * sizeof(float), s), "layerNormBackward");
          ln_backward_uncached<T><<<blocks, kThreads, 0, s>>>(xp, wp, mean, rstd, gp, dxp, partial, rows, d, parts);
          break;
      }
      check_launch("layerNormBackward");
    }
    ln_param_grads_kernel<T><<<blocks_for(d, 32), kThreads, 0, s>>>(partial, parts, d, static_cast<T*>(dw),
                                                                     static_cast<T*>(db));
    check_launch("layerNormBackward");
  });
}

// ---------------------------------------------------------------- embedding

void embedding_forward(DType dt, const int32_t* ids, const void* table, void* out, int64_t n, int64_t vocab,
                       int64_t d) {
  dispatch_float(dt, "embedding", [&](auto tag) {
    using T = decltype(tag);
    check_embedding_ids(ids, n, vocab);
    if (n <= 0 || d <= 0) return;
    cudaStream_t s = stream();
    const T* tp = static_cast<const T*>(table);
    T* op = static_cast<T*>(out);
    const unsigned blocks = blocks_for(n * 32);
    if (d % kVec<T> == 0 && aligned16(table) && aligned16(out))
      embedding_forward_kernel<T, kVec<T>><<<blocks, kThreads, 0, s>>>(ids, tp, op, n, d);
    else
      embedding_forward_kernel<T, 1><<<blocks, kThreads, 0, s>>>(ids, tp, op, n, d);
    check_launch("embedding");
  });
}

void embedding_backward(DType dt, const int32_t* ids, const void* dout, void* dtable, int64_t n, int64_t vocab,
                        int64_t d) {
  dispatch_float(dt, "embeddingBackward", [&](auto tag) {
    using T = decltype(tag);
    check_embedding_ids(ids, n, vocab);
    if (vocab <= 0 || d <= 0) return;
    cudaStream_t s = stream();
    if (n <= 0) {  // no positions: every row is zero (the zero bit pattern is 0.0 in both dtypes)
      check(cudaMemsetAsync(dtable, 0, size_t(vocab * d) * sizeof(T), s), "embeddingBackward");
      return;
    }
    if (n > INT32_MAX) fail("embeddingBackward: %lld positions is too many (at most 2^31 - 1)", (long long)n);
    // The ids are checked to lie in [0, vocab): as unsigned keys they sort the same, and only the low
    // bits that vocab − 1 needs take part in the sort.
    int end_bit = 1;
    while (end_bit < 32 && (uint64_t(vocab - 1) >> end_bit) != 0) end_bit++;
    const uint32_t* keys_in = reinterpret_cast<const uint32_t*>(ids);
    size_t temp_bytes = 0;
    check(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, static_cast<uint32_t*>(nullptr),
                                          static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
                                          int(n), 0, end_bit, s),
          "embeddingBackward");
    // Scratch: sorted keys, positions (in, sorted), CUB's temporary storage.
    const size_t slot = round_up(size_t(n) * sizeof(int32_t));
    char* scratch = static_cast<char*>(reduction_scratch(3 * slot + round_up(temp_bytes)));
    uint32_t* keys_out = reinterpret_cast<uint32_t*>(scratch);
    int32_t* pos_in = reinterpret_cast<int32_t*>(scratch + slot);
    int32_t* pos_out = reinterpret_cast<int32_t*>(scratch + 2 * slot);
    void* temp = scratch + 3 * slot;
    iota_kernel<<<blocks_for(n), kThreads, 0, s>>>(pos_in, n);
    check_launch("embeddingBackward");
    check(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, pos_in, pos_out, int(n), 0, end_bit,
                                          s),
          "embeddingBackward");
    const T* gp = static_cast<const T*>(dout);
    T* tp = static_cast<T*>(dtable);
    const unsigned blocks = blocks_for(vocab * 32);
    if (d % kVec<T> == 0 && aligned16(dout) && aligned16(dtable))
      embedding_backward_kernel<T, kVec<T>><<<blocks, kThreads, 0, s>>>(keys_out, pos_out, gp, tp, n, vocab, d);
    else
      embedding_backward_kernel<T, 1><<<blocks, kThreads, 0, s>>>(keys_out, pos_out, gp, tp, n, vocab, d);
    check_launch("embeddingBackward");
  });
}

// ---------------------------------------------------------------- positions

void rope(DType dt, const void* x, void* y, int64_t batch, int64_t t, int64_t d_model, int64_t heads, int64_t offset,
          bool inverse) {
  if (heads <= 0 || d_model % heads != 0) {
    fail("rope: %lld heads do not divide the width %lld", (long long)heads, (long long)d_model);
  }
  const int64_t hd = d_model / heads, half = hd / 2;
  if (hd % 2 != 0) {
    fail("rope: the head width %lld (%lld / %lld heads) must be even", (long long)hd, (long long)d_model,
         (long long)heads);
  }
  dispatch_float(dt, "rope", [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = batch * t;
    if (rows <= 0 || half <= 0) return;
    cudaStream_t s = stream();
    // The (cos, sin) table [t, half] is shared by every batch row and head: t·half double sincos.
    float2* cs = static_cast<float2*>(reduction_scratch(size_t(t * half) * sizeof(float2)));
    rope_table_kernel<<<blocks_for(t * half), kThreads, 0, s>>>(cs, t, half, hd, offset, inverse);
    check_launch("rope");
    const int64_t pairs = d_model / 2;
    MG_CHECK(ceil_div(pairs, kThreads) <= INT32_MAX, "rope: the width %lld is too large", (long long)d_model);
    dim3 grid(unsigned(ceil_div(pairs, kThreads)), unsigned(std::min<int64_t>(rows, 65535)));
    rope_kernel<T><<<grid, kThreads, 0, s>>>(static_cast<const T*>(x), static_cast<T*>(y), cs, rows, t, d_model, half);
    check_launch("rope");
  });
}

void sinusoidal_positions(DType dt, void* out, int64_t t, int64_t d, int64_t offset) {
  if (d % 2 != 0) fail("sinusoidalPositions: the width %lld must be even", (long long)d);
  dispatch_float(dt, "sinusoidalPositions", [&](auto tag) {
    using T = decltype(tag);
    if (t <= 0 || d <= 0) return;
    sinusoidal_kernel<T><<<blocks_for(t * (d / 2)), kThreads, 0, stream()>>>(static_cast<T*>(out), t, d, offset);
    check_launch("sinusoidalPositions");
  });
}

}  // namespace mg::cuda
