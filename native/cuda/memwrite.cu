// CUDA kernels of the op family "memwrite": the memory write (pointer scores, softmax over tokens,
// candidates, gated update), computing what native/cpu/memwrite.cpp computes (contract:
// native/common/memwrite.inc). As on the CPU, the GEMMs (five in the forward, six in the backward) go to
// the backend's matmul, and what lies between them is fused into small row or element kernels here:
// the scaled softmax over T (a warp per slot row), the gate and blend, and their gradients. Every output
// element is written by one thread, the GEMMs have no split reductions, and the only sums across rows
// (dbias, the stats) run in a fixed order: results are the same run to run.
// Elementwise arithmetic is rounded step by step like the CPU (no fused multiply-add).
#include <cmath>
#include <cstdint>

#include "elem.cuh"
#include "kernels.h"

namespace mg::cuda {
namespace {

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

__device__ __forceinline__ float sigmoidf(float v) { return 1.f / (1.f + expf(-v)); }

// alpha[r, :] = softmax(P[r, :]·scale + bias) in place, P the raw scores, bias (SPEC v2, nullable) slot r mod S's
// row of the pointer's positional bias, end-aligned (token t takes column cols − T + t): exp in float, the total in
// double, then one float reciprocal, as on the CPU. One warp per row; each lane rereads only what it wrote.
__global__ void pointer_softmax_kernel(float* alpha, int64_t rows, int64_t T, float scale, const float* ptr_bias,
                                       int64_t S, int64_t cols) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = global_thread() >> 5; r < rows; r += grid_threads() >> 5) {
    float* a = alpha + r * T;
    const float* pb = ptr_bias ? ptr_bias + (r % S) * cols + (cols - T) : nullptr;
    float mx = -INFINITY;
    for (int64_t t = lane; t < T; t += 32) {
      a[t] = __fadd_rn(__fmul_rn(a[t], scale), pb ? pb[t] : 0.f);
      mx = fmaxf(mx, a[t]);
    }
    mx = warp_max(mx);
    double total = 0;
    for (int64_t t = lane; t < T; t += 32) {
      const float e = expf(__fsub_rn(a[t], mx));
      a[t] = e;
      total += e;
    }
    const float inv = float(1.0 / warp_sum(total));
    for (int64_t t = lane; t < T; t += 32) a[t] = __fmul_rn(a[t], inv);
  }
}

// x[r] = [M[r] | Z[r]]: the gate's input, so that its GEMM has K = 2D against the unsplit weight.
__global__ void concat_kernel(const float* m, const float* z, float* x, int64_t rows, int64_t D) {
  const int64_t n = rows * 2 * D;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t r = i / (2 * D), j = i - r * 2 * D;
    x[i] = j < D ? m[r * D + j] : z[r * D + j - D];
  }
}

// u = σ(u + bias) (u held x·wᵀ), out = M + u·(Z − M).
__global__ void gate_kernel(const float* x, const float* bias, float* u, float* out, int64_t rows, int64_t D) {
  const int64_t n = rows * D;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t r = i / D, d = i - r * D;
    const float g = sigmoidf(__fadd_rn(u[i], bias[d]));
    const float xm = x[r * 2 * D + d], xz = x[r * 2 * D + D + d];
    u[i] = g;
    out[i] = __fadd_rn(xm, __fmul_rn(g, __fsub_rn(xz, xm)));
  }
}

// out = M + u(Z − M): dM = dout·(1 − u), dZ = dout·u, dG = dout·(Z − M)·u·(1 − u).
__global__ void gate_backward_kernel(const float* dout, const float* x, const float* u, float* dm, float* dz,
                                     float* dg, int64_t rows, int64_t D) {
  const int64_t n = rows * D;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t r = i / D, d = i - r * D;
    const float g = dout[i], ud = u[i], one_minus = __fsub_rn(1.f, ud);
    const float diff = __fsub_rn(x[r * 2 * D + D + d], x[r * 2 * D + d]);
    dm[i] = __fmul_rn(g, one_minus);
    dz[i] = __fmul_rn(g, ud);
    dg[i] = __fmul_rn(__fmul_rn(__fmul_rn(g, diff), ud), one_minus);
  }
}

// dM += dX[:, :D], dZ += dX[:, D:] (the paths through the gate's input).
__global__ void add_split_kernel(const float* dx, float* dm, float* dz, int64_t rows, int64_t D) {
  const int64_t n = rows * D;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t r = i / D, d = i - r * D;
    dm[i] = __fadd_rn(dm[i], dx[r * 2 * D + d]);
    dz[i] = __fadd_rn(dz[i], dx[r * 2 * D + D + d]);
  }
}

// dP = α(dα − Σ_t α dα)·scale in place of dα (scale 1: the gradient of the softmax's argument, which the
// positional bias needs before the scale); the dot in double, one warp per row.
__global__ void pointer_softmax_backward_kernel(const float* alpha, float* dp, int64_t rows, int64_t T, float scale) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = global_thread() >> 5; r < rows; r += grid_threads() >> 5) {
    const float* a = alpha + r * T;
    float* g = dp + r * T;
    double dot = 0;
    for (int64_t t = lane; t < T; t += 32) dot += double(a[t]) * double(g[t]);
    const float c = float(warp_sum(dot));
    for (int64_t t = lane; t < T; t += 32) {
      const float v = __fmul_rn(a[t], __fsub_rn(g[t], c));
      g[t] = scale == 1.f ? v : __fmul_rn(v, scale);
    }
  }
}

// The positional bias's gradient d_pb[s, cols − T + t] = Σ_b dArg[b, s, t] (in batch order, in double), 0 in the
// columns before cols − T; one thread per element of d_pb.
__global__ void pointer_bias_grad_kernel(const float* darg, float* d_pb, int64_t B, int64_t S, int64_t T, int64_t cols) {
  for (int64_t i = global_thread(); i < S * cols; i += grid_threads()) {
    const int64_t s = i / cols, c = i - s * cols, t = c - (cols - T);
    double acc = 0;
    if (t >= 0)
      for (int64_t b = 0; b < B; b++) acc += darg[(b * S + s) * T + t];
    d_pb[i] = float(acc);
  }
}

__global__ void scale_kernel(float* x, int64_t n, float scale) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) x[i] = __fmul_rn(x[i], scale);
}

// Per slot row: Σ_d u (gate) and −Σ_t α log α over α > 0 (entropy), in double; one warp per row.
__global__ void stats_rows_kernel(const float* alpha, const float* u, double* gate, double* entropy, int64_t rows,
                                  int64_t T, int64_t D) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = global_thread() >> 5; r < rows; r += grid_threads() >> 5) {
    double g = 0, h = 0;
    for (int64_t d = lane; d < D; d += 32) g += u[r * D + d];
    for (int64_t t = lane; t < T; t += 32) {
      const double a = alpha[r * T + t];
      if (a > 0) h -= a * log(a);  // 0·log 0 = 0
    }
    g = warp_sum(g);
    h = warp_sum(h);
    if (lane == 0) {
      gate[r] = g;
      entropy[r] = h;
    }
  }
}

// The row sums added up by one block: thread t takes rows t, t + 256, ... in order, then a fixed tree.
__global__ void stats_total_kernel(const double* gate, const double* entropy, int64_t rows, double* total) {
  __shared__ double sums[2][kThreads];
  double g = 0, h = 0;
  for (int64_t r = threadIdx.x; r < rows; r += kThreads) {
    g += gate[r];
    h += entropy[r];
  }
  sums[0][threadIdx.x] = g;
  sums[1][threadIdx.x] = h;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) {
      sums[0][threadIdx.x] += sums[0][threadIdx.x + half];
      sums[1][threadIdx.x] += sums[1][threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    total[0] = sums[0][0];
    total[1] = sums[1][0];
  }
}

constexpr DType F32 = DType::F32;

}  // namespace

void memwrite_forward(int64_t B, int64_t S, int64_t T, int64_t D, const float* m, const float* mq, const float* ck,
                      const float* cv, const float* wv, const float* w, const float* bias, const float* ptr_bias,
                      int64_t bias_cols, float* out, float* alpha, float* x, float* u, float* zp) {
  const int64_t R = B * S;
  if (R <= 0 || T <= 0 || D <= 0) return;
  cudaStream_t s = stream();
  const float scale = float(1.0 / std::sqrt(double(D)));
  // Pointer scores P = mq·ckᵀ [B,S,T], straight into alpha, then α in place.
  matmul(F32, mq, ck, F32, alpha, B, S, T, D, false, true, S * D, T * D, S * T, 0.f);
  pointer_softmax_kernel<<<blocks_for(R * 32), kThreads, 0, s>>>(alpha, R, T, scale, ptr_bias, S, bias_cols);
  check_launch("memwriteForward");
  // Candidates Z = α·cv into u (free until the gate GEMM) — with the value weight, Z' = α·cv into zp and
  // Z = Z'·wvᵀ into u — then x = [M | Z].
  if (wv) {
    matmul(F32, alpha, cv, F32, zp, B, S, D, T, false, false, S * T, T * D, S * D, 0.f);
    matmul(F32, zp, wv, F32, u, 1, R, D, D, false, true, 0, 0, 0, 0.f);
  } else {
    matmul(F32, alpha, cv, F32, u, B, S, D, T, false, false, S * T, T * D, S * D, 0.f);
  }
  concat_kernel<<<blocks_for(R * 2 * D), kThreads, 0, s>>>(m, u, x, R, D);
  check_launch("memwriteForward");
  // Write gate: u = σ(x·wᵀ + bias), then the blend.
  matmul(F32, x, w, F32, u, 1, R, D, 2 * D, false, true, 0, 0, 0, 0.f);
  gate_kernel<<<blocks_for(R * D), kThreads, 0, s>>>(x, bias, u, out, R, D);
  check_launch("memwriteForward");
}

void memwrite_backward(int64_t B, int64_t S, int64_t T, int64_t D, const float* dout, const float* mq,
                       const float* ck, const float* cv, const float* wv, const float* w, const float* alpha,
                       const float* x, const float* u, const float* zp, int64_t bias_cols, float* dm, float* dmq,
                       float* dck, float* dcv, float* dwv, float* dw, float* dbias, float* d_ptr_bias,
                       float* workspace) {
  const int64_t R = B * S;
  if (R <= 0 || T <= 0 || D <= 0) return;
  cudaStream_t s = stream();
  const float scale = float(1.0 / std::sqrt(double(D)));
  // Workspace (memwrite_workspace elements), as on the CPU: dG [R,D]; dZ [R,D]; dX = dG·W [R,2D]; dα,
  // then dP in place [R,T].
  float* dg = workspace;
  float* dz = dg + R * D;
  float* dx = dz + R * D;
  float* dp = dx + R * 2 * D;

  gate_backward_kernel<<<blocks_for(R * D), kThreads, 0, s>>>(dout, x, u, dm, dz, dg, R, D);
  check_launch("memwriteBackward");
  // dbias = Σ_rows dG: the backend's column sum (double, split in a fixed way: deterministic).
  sum_axis(F32, dg, dbias, 1, R, D, false);
  matmul(F32, dg, x, F32, dw, 1, D, 2 * D, R, true, false, 0, 0, 0, 0.f);   // dW = dGᵀ·X
  matmul(F32, dg, w, F32, dx, 1, R, 2 * D, D, false, false, 0, 0, 0, 0.f);  // dX = dG·W
  add_split_kernel<<<blocks_for(R * D), kThreads, 0, s>>>(dx, dm, dz, R, D);
  check_launch("memwriteBackward");
  // With the value weight, Z = Z'·wvᵀ: dwv = dZᵀ·Z', and dZ' = dZ·wv (into dG's rows, free now) goes on as dZ.
  const float* dzc = dz;
  if (wv) {
    matmul(F32, dz, zp, F32, dwv, 1, D, D, R, true, false, 0, 0, 0, 0.f);
    matmul(F32, dz, wv, F32, dg, 1, R, D, D, false, false, 0, 0, 0, 0.f);
    dzc = dg;
  }
  // Z = α·cv: dα = dZ·cvᵀ, dcv = αᵀ·dZ.
  matmul(F32, dzc, cv, F32, dp, B, S, T, D, false, true, S * D, T * D, S * T, 0.f);
  matmul(F32, alpha, dzc, F32, dcv, B, T, D, S, true, false, S * T, S * D, T * D, 0.f);
  // α = softmax(P/√D + bias): dP = α(dα − Σ_t α dα)/√D, in place; with the bias, its gradient is taken from the
  // unscaled argument's before the scale (as on the CPU).
  if (d_ptr_bias) {
    pointer_softmax_backward_kernel<<<blocks_for(R * 32), kThreads, 0, s>>>(alpha, dp, R, T, 1.f);
    pointer_bias_grad_kernel<<<blocks_for(S * bias_cols), kThreads, 0, s>>>(dp, d_ptr_bias, B, S, T, bias_cols);
    scale_kernel<<<blocks_for(R * T), kThreads, 0, s>>>(dp, R * T, scale);
  } else {
    pointer_softmax_backward_kernel<<<blocks_for(R * 32), kThreads, 0, s>>>(alpha, dp, R, T, scale);
  }
  check_launch("memwriteBackward");
  // P = mq·ckᵀ: dmq = dP·ck, dck = dPᵀ·mq.
  matmul(F32, dp, ck, F32, dmq, B, S, D, T, false, false, S * T, T * D, S * D, 0.f);
  matmul(F32, dp, mq, F32, dck, B, T, D, S, true, false, S * T, S * D, T * D, 0.f);
}

void memwrite_stats(int64_t B, int64_t S, int64_t T, int64_t D, const float* alpha, const float* u, double* stats) {
  const int64_t R = B * S;
  stats[0] = 0;
  stats[1] = 0;
  if (R <= 0) return;
  cudaStream_t s = stream();
  // Scratch: per-row gate and entropy sums [2, R], then the two totals.
  double* scratch = static_cast<double*>(reduction_scratch(size_t(2 * R + 2) * sizeof(double)));
  double* gate = scratch;
  double* entropy = scratch + R;
  double* total = scratch + 2 * R;
  stats_rows_kernel<<<blocks_for(R * 32), kThreads, 0, s>>>(alpha, u, gate, entropy, R, T, D);
  check_launch("memwriteStats");
  stats_total_kernel<<<1, kThreads, 0, s>>>(gate, entropy, R, total);
  check_launch("memwriteStats");
  double host[2] = {0, 0};
  check(cudaMemcpyAsync(host, total, sizeof host, cudaMemcpyDeviceToHost, s), "memwriteStats");
  synchronize_stream("memwriteStats");
  stats[0] = R * D > 0 ? host[0] / double(R * D) : 0.0;
  stats[1] = host[1] / double(R);
}

}  // namespace mg::cuda
