// CPU kernels of the op family "linear": linear layers: GEMM with fused bias and GELU epilogues.
// The forward runs the blocked GEMM of matmul.cpp with a tile epilogue that adds the bias, saves the
// pre-activation z and applies GELU while each C tile is still in L1: no second pass over [m, n].
// The backward is one fused pass for dz = dy·gelu'(z) and the bias gradient, then two GEMMs.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../common/threadpool.h"
#include "elem.h"
#include "isa.h"
#include "kernels.h"
#include "simd.h"

namespace mg::cpu {

// Defined in matmul.cpp: a GEMM into float32 C with a hook called on each finished tile.
using TileEpilogue = void (*)(void* ctx, float* c, int64_t ldc, int64_t row, int64_t col, int64_t rows, int64_t cols);
void matmul_f32_epilogue(DType ab_dtype, const void* a, const void* b, float* c, int64_t m, int64_t n, int64_t k,
                         bool trans_a, bool trans_b, TileEpilogue epilogue, void* ctx);

namespace {

constexpr int kGelu = 1;
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

// GELU in the tanh form, evaluated through 0.5·(1 + tanh(u)) = σ(2u) = 1 / (1 + e^(−2u)): the same function,
// with one exp instead of a tanh, and no cancellation in 1 + tanh(u) → 0 for large negative z.
inline float gelu_u(float z) { return kSqrt2OverPi * z * (1.f + kGeluCubic * z * z); }
inline float gelu(float z) { return z / (1.f + std::exp(-2.f * gelu_u(z))); }

// d gelu / dz = 0.5(1 + t) + 0.5 z (1 − t²) √(2/π)(1 + 3·0.044715 z²), t = tanh(u); with s = σ(2u):
// 0.5(1 + t) = s and 0.5(1 − t²) = 2 s (1 − s). With e = e^(−2u), 1 − s = e·s keeps its precision as s → 1
// (e < 1); for e ≥ 1, s ≤ 1/2 and 1 − s is exact enough (and e may be inf).
inline float gelu_grad(float z) {
  float e = std::exp(-2.f * gelu_u(z));
  float s = 1.f / (1.f + e);
  float one_minus_s = e < 1.f ? e * s : 1.f - s;
  return s + 2.f * z * s * one_minus_s * kSqrt2OverPi * (1.f + 3.f * kGeluCubic * z * z);
}

// ---- AVX2 versions, chosen at run time (the addon is built for plain x86-64)

// e^(−2u) for 8 values of z.
__attribute__((target("avx2,fma"))) inline __m256 gelu_exp_avx2(__m256 z) {
  __m256 z2 = _mm256_mul_ps(z, z);
  __m256 u = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(kSqrt2OverPi), z),
                           _mm256_fmadd_ps(_mm256_set1_ps(kGeluCubic), z2, _mm256_set1_ps(1.f)));
  return exp_avx2(_mm256_mul_ps(_mm256_set1_ps(-2.f), u));
}

__attribute__((target("avx2,fma"))) inline __m256 sigma_from_exp_avx2(__m256 e) {
  return _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_add_ps(_mm256_set1_ps(1.f), e));
}

// One row segment of the forward epilogue, float32: v = c + bias; z = v (if wanted); y = gelu(v) or v.
using EpilogueRow = void (*)(const float* c, const float* bias, float* z, float* y, int64_t cols, bool gelu_on);

void epilogue_row_generic(const float* c, const float* bias, float* z, float* y, int64_t cols, bool gelu_on) {
  for (int64_t j = 0; j < cols; j++) {
    float v = bias ? c[j] + bias[j] : c[j];
    if (z) z[j] = v;
    y[j] = gelu_on ? gelu(v) : v;  // y may be c itself: read before written
  }
}

__attribute__((target("avx2,fma"))) void epilogue_row_avx2(const float* c, const float* bias, float* z, float* y,
                                                           int64_t cols, bool gelu_on) {
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) {
    __m256 v = _mm256_loadu_ps(c + j);
    if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + j));
    if (z) _mm256_storeu_ps(z + j, v);
    _mm256_storeu_ps(y + j, gelu_on ? _mm256_mul_ps(v, sigma_from_exp_avx2(gelu_exp_avx2(v))) : v);
  }
  if (j < cols) epilogue_row_generic(c + j, bias ? bias + j : nullptr, z ? z + j : nullptr, y + j, cols - j, gelu_on);
}

// One row of the activation backward, float32: dz = dy·gelu'(z), and sums[j] += dz[j] (in double) when sums.
using BackwardRow = void (*)(const float* z, const float* dy, float* dz, double* sums, int64_t cols);

void backward_row_generic(const float* z, const float* dy, float* dz, double* sums, int64_t cols) {
  for (int64_t j = 0; j < cols; j++) {
    dz[j] = dy[j] * gelu_grad(z[j]);
    if (sums) sums[j] += double(dz[j]);
  }
}

__attribute__((target("avx2,fma"))) void backward_row_avx2(const float* z, const float* dy, float* dz, double* sums,
                                                          int64_t cols) {
  int64_t j = 0;
  const __m256 c = _mm256_set1_ps(kSqrt2OverPi), three_a = _mm256_set1_ps(3.f * kGeluCubic), one = _mm256_set1_ps(1.f);
  for (; j + 8 <= cols; j += 8) {
    __m256 zv = _mm256_loadu_ps(z + j);
    __m256 e = gelu_exp_avx2(zv);
    __m256 s = sigma_from_exp_avx2(e);
    // s + 2 z s (1 − s) √(2/π) (1 + 3a z²), 1 − s taken as in gelu_grad
    __m256 one_minus_s = _mm256_blendv_ps(_mm256_sub_ps(one, s), _mm256_mul_ps(e, s), _mm256_cmp_ps(e, one, _CMP_LT_OQ));
    __m256 poly = _mm256_mul_ps(c, _mm256_fmadd_ps(three_a, _mm256_mul_ps(zv, zv), one));
    __m256 tail = _mm256_mul_ps(_mm256_mul_ps(_mm256_add_ps(zv, zv), s), _mm256_mul_ps(one_minus_s, poly));
    __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + j), _mm256_add_ps(s, tail));
    _mm256_storeu_ps(dz + j, g);
    if (sums) {
      _mm256_storeu_pd(sums + j, _mm256_add_pd(_mm256_loadu_pd(sums + j), _mm256_cvtps_pd(_mm256_castps256_ps128(g))));
      _mm256_storeu_pd(sums + j + 4,
                       _mm256_add_pd(_mm256_loadu_pd(sums + j + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(g, 1))));
    }
  }
  if (j < cols) backward_row_generic(z + j, dy + j, dz + j, sums ? sums + j : nullptr, cols - j);
}

const bool kAvx2 = has_avx2();
const EpilogueRow epilogue_row = kAvx2 ? epilogue_row_avx2 : epilogue_row_generic;
const BackwardRow backward_row = kAvx2 ? backward_row_avx2 : backward_row_generic;

// What the forward epilogue writes: y (and z) of element type T, bias already widened to float32.
template <typename T>
struct ForwardTile {
  const float* bias;  // null: no bias
  T* z;               // null: pre-activation not wanted
  T* y;
  int64_t n;
  bool gelu;
};

template <typename T>
void forward_tile(void* ctx, float* c, int64_t ldc, int64_t row, int64_t col, int64_t rows, int64_t cols) {
  const auto& e = *static_cast<const ForwardTile<T>*>(ctx);
  const float* bias = e.bias ? e.bias + col : nullptr;
  for (int64_t i = 0; i < rows; i++) {
    const float* ci = c + i * ldc;
    int64_t base = (row + i) * e.n + col;
    if constexpr (std::is_same_v<T, float>) {
      epilogue_row(ci, bias, e.z ? e.z + base : nullptr, e.y + base, cols, e.gelu);
    } else {
      // The float32 epilogue (vectorised: a scalar exp per GELU was a third of a one-row bf16 fc1), then rounded.
      static thread_local std::vector<float> row;
      row.resize(size_t(2 * cols));
      float* zf = e.z ? row.data() + cols : nullptr;
      epilogue_row(ci, bias, zf, row.data(), cols, e.gelu);
      for (int64_t j = 0; j < cols; j++) store(e.y + base + j, row[size_t(j)]);
      if (zf) for (int64_t j = 0; j < cols; j++) store(e.z + base + j, zf[j]);
    }
  }
}

template <typename T>
void forward_typed(DType dt, const void* x, const void* w, const void* bias, void* z, void* y, int64_t m, int64_t n,
                   int64_t k, bool gelu_on) {
  std::vector<float> bias_f32;  // n floats: the bias widened once, so the epilogue reads float32
  if (bias) {
    bias_f32.resize(size_t(n));
    for (int64_t j = 0; j < n; j++) bias_f32[j] = load(static_cast<const T*>(bias) + j);
  }
  ForwardTile<T> tile{bias ? bias_f32.data() : nullptr, static_cast<T*>(z), static_cast<T*>(y), n, gelu_on};
  if constexpr (std::is_same_v<T, float>) {
    bool needs_epilogue = bias || z || gelu_on;  // plain x·wᵀ needs none
    matmul_f32_epilogue(dt, x, w, static_cast<float*>(y), m, n, k, false, true,
                        needs_epilogue ? forward_tile<float> : nullptr, &tile);
  } else {
    // bfloat16: the GEMM accumulates into a float32 scratch (kept: C must be float32), rounded once by the epilogue.
    std::vector<float> acc(size_t(m * n));
    matmul_f32_epilogue(dt, x, w, acc.data(), m, n, k, false, true, forward_tile<T>, &tile);
  }
}

constexpr int64_t kRowBlock = 256;  // rows per bias-gradient partial: fixed, so sums do not depend on thread count

// dz = dy·gelu'(z) (when gelu_on; else dz is dy) and db = column sums of dz, one pass over [m, n].
// Column sums: per row block, double partials; then blocks added in order (deterministic).
template <typename T>
void activation_backward(const T* z, const T* dy, T* dz, T* db, int64_t m, int64_t n, bool gelu_on) {
  int64_t blocks = (m + kRowBlock - 1) / kRowBlock;
  std::vector<double> partial(db ? size_t(blocks * n) : 0);
  parallel_for(0, size_t(blocks), 1, [&](size_t lo, size_t hi) {
    for (size_t blk = lo; blk < hi; blk++) {
      double* sums = db ? partial.data() + blk * n : nullptr;
      int64_t r0 = int64_t(blk) * kRowBlock, r1 = std::min(m, r0 + kRowBlock);
      for (int64_t r = r0; r < r1; r++) {
        if constexpr (std::is_same_v<T, float>) {
          if (gelu_on) {
            backward_row(z + r * n, dy + r * n, dz + r * n, sums, n);
            continue;
          }
        }
        for (int64_t j = 0; j < n; j++) {
          int64_t e = r * n + j;
          float g = load(dy + e);
          if (gelu_on) {
            g *= gelu_grad(load(z + e));
            store(dz + e, g);
            if (sums) sums[j] += double(load(dz + e));  // the rounded value: db is exactly Σ dz
          } else if (sums) {
            sums[j] += double(g);
          }
        }
      }
    }
  });
  if (!db) return;
  for (int64_t j = 0; j < n; j++) {
    double s = 0;
    for (int64_t blk = 0; blk < blocks; blk++) s += partial[size_t(blk * n + j)];
    store(db + j, float(s));
  }
}

}  // namespace

void linear_forward(DType dt, const void* x, const void* w, const void* bias, void* z, void* y, int64_t m, int64_t n,
                    int64_t k, int activation) {
  MG_CHECK(activation == 0 || activation == kGelu, "linear: unknown activation code %d", activation);
  if (m == 0 || n == 0) return;
  dispatch_float(dt, "linear", [&](auto tag) {
    using T = decltype(tag);
    forward_typed<T>(dt, x, w, bias, z, y, m, n, k, activation == kGelu);
  });
}

void linear_backward(DType dt, const void* x, const void* w, const void* z, const void* dy, void* dz, void* dx,
                     void* dw, void* db, int64_t m, int64_t n, int64_t k, int activation) {
  MG_CHECK(activation == 0 || activation == kGelu, "linear backward: unknown activation code %d", activation);
  bool gelu_on = activation == kGelu;
  MG_CHECK(!gelu_on || (z && dz), "linear backward: GELU needs z and a dz buffer");
  dispatch_float(dt, "linear backward", [&](auto tag) {
    using T = decltype(tag);
    if (gelu_on || db) {
      activation_backward<T>(static_cast<const T*>(z), static_cast<const T*>(dy), static_cast<T*>(dz), static_cast<T*>(db),
                             m, n, gelu_on);
    }
  });
  const void* grad_z = gelu_on ? dz : dy;
  // dx [m, k] = dz [m, n] · w [n, k]; dw [n, k] = dzᵀ · x, the batch folded into the m rows: one GEMM each.
  if (dx && m && k) matmul(dt, grad_z, w, dt, dx, 1, m, k, n, false, false, 0, 0, 0, 0.f);
  if (dw && n && k) matmul(dt, grad_z, x, dt, dw, 1, n, k, m, true, false, 0, 0, 0, 0.f);
}

}  // namespace mg::cpu
