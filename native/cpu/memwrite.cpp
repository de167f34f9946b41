// CPU kernels of the op family "memwrite": the memory write: pointer scores, softmax over tokens, candidates, gated update.
// The five GEMMs of the forward (pointer scores, candidates, write gate) and the eight of the backward go to
// mg::cpu::matmul; what lies between them (scaled softmax, gate, blend, their gradients) is fused into row loops
// here, split over rows with parallel_for. Each output element is written by one thread and every sum runs in
// a fixed order, so results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/threadpool.h"
#include "kernels.h"

namespace mg::cpu {
namespace {

// Rows per parallel_for chunk for rows costing about `cost` flops each (chunks of ~16k flops).
size_t grain(int64_t cost) { return size_t(std::max<int64_t>(1, 16384 / std::max<int64_t>(cost, 1))); }

float sigmoid(float v) { return 1.f / (1.f + std::exp(-v)); }

}  // namespace

void memwrite_forward(int64_t B, int64_t S, int64_t T, int64_t D, const float* m, const float* mq, const float* ck,
                      const float* cv, const float* wv, const float* w, const float* bias, const float* ptr_bias,
                      int64_t bias_cols, float* out, float* alpha, float* x, float* u, float* zp) {
  const int64_t R = B * S;
  const float scale = float(1.0 / std::sqrt(double(D)));
  // Pointer scores P = mq·ckᵀ [B,S,T], written straight into alpha and turned into α in place.
  matmul(DType::F32, mq, ck, DType::F32, alpha, B, S, T, D, false, true, S * D, T * D, S * T, 0.f);
  parallel_for(0, R, grain(4 * T), [&](size_t lo, size_t hi) {
    for (size_t r = lo; r < hi; r++) {
      float* a = alpha + int64_t(r) * T;
      // The positional bias of slot r mod S, end-aligned: token t of a segment of T takes column bias_cols − T + t.
      const float* pb = ptr_bias ? ptr_bias + (int64_t(r) % S) * bias_cols + (bias_cols - T) : nullptr;
      for (int64_t t = 0; t < T; t++) a[t] = a[t] * scale + (pb ? pb[t] : 0.f);
      float mx = -INFINITY;
      for (int64_t t = 0; t < T; t++) mx = std::max(mx, a[t]);
      double total = 0;
      for (int64_t t = 0; t < T; t++) {
        a[t] = std::exp(a[t] - mx);
        total += a[t];
      }
      float inv = float(1.0 / total);
      for (int64_t t = 0; t < T; t++) a[t] *= inv;
    }
  });
  // Candidates Z = α·cv, into u (free until the gate GEMM) — or, with the value weight, Z' = α·cv into zp and
  // Z = Z'·wvᵀ into u — then x = [M | Z] so that the write gate is one GEMM with K = 2D against the unsplit weight,
  // and its backward gets dWupd and d[M | Z] from one GEMM each.
  if (wv) {
    matmul(DType::F32, alpha, cv, DType::F32, zp, B, S, D, T, false, false, S * T, T * D, S * D, 0.f);
    matmul(DType::F32, zp, wv, DType::F32, u, 1, R, D, D, false, true, 0, 0, 0, 0.f);
  } else {
    matmul(DType::F32, alpha, cv, DType::F32, u, B, S, D, T, false, false, S * T, T * D, S * D, 0.f);
  }
  parallel_for(0, R, grain(2 * D), [&](size_t lo, size_t hi) {
    for (size_t r = lo; r < hi; r++) {
      float* xr = x + int64_t(r) * 2 * D;
      std::copy_n(m + int64_t(r) * D, D, xr);
      std::copy_n(u + int64_t(r) * D, D, xr + D);
    }
  });
  matmul(DType::F32, x, w, DType::F32, u, 1, R, D, 2 * D, false, true, 0, 0, 0, 0.f);
  parallel_for(0, R, grain(8 * D), [&](size_t lo, size_t hi) {
    for (size_t r = lo; r < hi; r++) {
      const float* xr = x + int64_t(r) * 2 * D;
      float* ur = u + int64_t(r) * D;
      float* outr = out + int64_t(r) * D;
      for (int64_t d = 0; d < D; d++) {
        float g = sigmoid(ur[d] + bias[d]);
        ur[d] = g;
        outr[d] = xr[d] + g * (xr[D + d] - xr[d]);
      }
    }
  });
}

void memwrite_backward(int64_t B, int64_t S, int64_t T, int64_t D, const float* dout, const float* mq,
                       const float* ck, const float* cv, const float* wv, const float* w, const float* alpha,
                       const float* x, const float* u, const float* zp, int64_t bias_cols, float* dm, float* dmq,
                       float* dck, float* dcv, float* dwv, float* dw, float* dbias, float* d_ptr_bias,
                       float* workspace) {
  const int64_t R = B * S;
  const float scale = float(1.0 / std::sqrt(double(D)));
  // Workspace (memwrite_workspace elements): dG, the gate's pre-activation gradient [R,D]; dZ [R,D];
  // dX = dG·W, the gradient of [M | Z] through the gate [R,2D]; dα, then dP in place [R,T].
  float* dg = workspace;
  float* dz = dg + R * D;
  float* dx = dz + R * D;
  float* dp = dx + R * 2 * D;

  // out = M + u(Z − M): the direct paths to M and Z, and dG = dout·(Z − M)·u(1 − u).
  parallel_for(0, R, grain(8 * D), [&](size_t lo, size_t hi) {
    for (size_t r = lo; r < hi; r++) {
      int64_t o = int64_t(r) * D;
      const float* xr = x + 2 * o;
      for (int64_t d = 0; d < D; d++) {
        float g = dout[o + d], ud = u[o + d];
        dm[o + d] = g * (1.f - ud);
        dz[o + d] = g * ud;
        dg[o + d] = g * (xr[D + d] - xr[d]) * ud * (1.f - ud);
      }
    }
  });
  // dbias = Σ_rows dG, per column in double; columns are split between threads, rows summed in order.
  parallel_for(0, D, std::max<size_t>(1, grain(R)), [&](size_t lo, size_t hi) {
    std::vector<double> acc(hi - lo, 0.0);
    for (int64_t r = 0; r < R; r++) {
      const float* row = dg + r * D;
      for (size_t d = lo; d < hi; d++) acc[d - lo] += row[d];
    }
    for (size_t d = lo; d < hi; d++) dbias[d] = float(acc[d - lo]);
  });
  matmul(DType::F32, dg, x, DType::F32, dw, 1, D, 2 * D, R, true, false, 0, 0, 0, 0.f);  // dW = dGᵀ·X
  matmul(DType::F32, dg, w, DType::F32, dx, 1, R, 2 * D, D, false, false, 0, 0, 0, 0.f);  // dX = dG·W
  parallel_for(0, R, grain(2 * D), [&](size_t lo, size_t hi) {
    for (size_t r = lo; r < hi; r++) {
      int64_t o = int64_t(r) * D;
      const float* dxr = dx + 2 * o;
      for (int64_t d = 0; d < D; d++) {
        dm[o + d] += dxr[d];
        dz[o + d] += dxr[D + d];
      }
    }
  });
  // With the value weight, Z = Z'·wvᵀ: dwv = dZᵀ·Z', and dZ' = dZ·wv (into dG's rows, free now) goes on as dZ.
  const float* dzc = dz;
  if (wv) {
    matmul(DType::F32, dz, zp, DType::F32, dwv, 1, D, D, R, true, false, 0, 0, 0, 0.f);
    matmul(DType::F32, dz, wv, DType::F32, dg, 1, R, D, D, false, false, 0, 0, 0, 0.f);
    dzc = dg;
  }
  // Z = α·cv: dα = dZ·cvᵀ, dcv = αᵀ·dZ.
  matmul(DType::F32, dzc, cv, DType::F32, dp, B, S, T, D, false, true, S * D, T * D, S * T, 0.f);
  matmul(DType::F32, alpha, dzc, DType::F32, dcv, B, T, D, S, true, false, S * T, S * D, T * D, 0.f);
  // α = softmax(P/√D + bias): the gradient of the softmax's argument α(dα − Σ_t α dα), in place.
  parallel_for(0, R, grain(4 * T), [&](size_t lo, size_t hi) {
    for (size_t r = lo; r < hi; r++) {
      const float* a = alpha + int64_t(r) * T;
      float* g = dp + int64_t(r) * T;
      double dot = 0;
      for (int64_t t = 0; t < T; t++) dot += double(a[t]) * g[t];
      float c = float(dot);
      for (int64_t t = 0; t < T; t++) g[t] = a[t] * (g[t] - c);
    }
  });
  // The positional bias's gradient: that argument summed over the batch (in batch order), at the end-aligned columns.
  if (d_ptr_bias) {
    parallel_for(0, S, 1, [&](size_t lo, size_t hi) {
      for (size_t s = lo; s < hi; s++) {
        float* db = d_ptr_bias + int64_t(s) * bias_cols;
        std::fill(db, db + bias_cols - T, 0.f);
        for (int64_t t = 0; t < T; t++) {
          double acc = 0;
          for (int64_t b = 0; b < B; b++) acc += dp[(b * S + int64_t(s)) * T + t];
          db[bias_cols - T + t] = float(acc);
        }
      }
    });
  }
  // dP = that argument's gradient / √D.
  parallel_for(0, R * T, 4096, [&](size_t lo, size_t hi) {
    for (size_t i = lo; i < hi; i++) dp[i] *= scale;
  });
  // P = mq·ckᵀ: dmq = dP·ck, dck = dPᵀ·mq.
  matmul(DType::F32, dp, ck, DType::F32, dmq, B, S, D, T, false, false, S * T, T * D, S * D, 0.f);
  matmul(DType::F32, dp, mq, DType::F32, dck, B, T, D, S, true, false, S * T, S * D, T * D, 0.f);
}

void memwrite_stats(int64_t B, int64_t S, int64_t T, int64_t D, const float* alpha, const float* u, double* stats) {
  const int64_t R = B * S;
  // One partial per slot row, then summed in row order: deterministic whatever the thread count.
  std::vector<double> gate(R), entropy(R);
  parallel_for(0, R, grain(T + D), [&](size_t lo, size_t hi) {
    for (size_t r = lo; r < hi; r++) {
      double g = 0, h = 0;
      const float* ur = u + int64_t(r) * D;
      for (int64_t d = 0; d < D; d++) g += ur[d];
      const float* a = alpha + int64_t(r) * T;
      for (int64_t t = 0; t < T; t++) {
        if (a[t] > 0.f) h -= double(a[t]) * std::log(double(a[t]));  // 0·log 0 = 0
      }
      gate[r] = g;
      entropy[r] = h;
    }
  });
  double g = 0, h = 0;
  for (int64_t r = 0; r < R; r++) {
    g += gate[r];
    h += entropy[r];
  }
  stats[0] = R * D > 0 ? g / double(R * D) : 0.0;
  stats[1] = R > 0 ? h / double(R) : 0.0;
}

}  // namespace mg::cpu
