// CPU kernels of the op family "norm": layer norm, embedding and positions (RoPE, sinusoidal).
// The reference for the other backends and the fast fallback. Rows are split over threads;
// every reduction across rows (dweight, dbias, dtable) runs in an order fixed by the data,
// not by the thread count, so results are bit-identical whatever MEMGPT_NUM_THREADS is.
// Position angles are computed in double: at position 100000 a float32 angle would be off by
// ~1e-2 radians.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../common/threadpool.h"
#include "elem.h"
#include "isa.h"
#include "kernels.h"

namespace mg::cpu {
namespace {

// A row as float32: the row itself for float32 storage, else widened into buf.
template <typename T>
const float* as_float(const T* row, int64_t n, std::vector<float>& buf) {
  if constexpr (std::is_same_v<T, float>) {
    return row;
  } else {
    buf.resize(n);
    for (int64_t j = 0; j < n; j++) buf[j] = load(row + j);
    return buf.data();
  }
}

// Row helpers are always inlined, so that each is compiled again inside the AVX2 row kernels below.
#define MG_ROW inline __attribute__((always_inline))

// Sums in 8 independent float lanes (the compiler vectorises this), lanes combined in double.
MG_ROW double lane_sum(const float* v, int64_t n) {
  float acc[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; k++) acc[k] += v[j + k];
  double total = 0;
  for (; j < n; j++) total += v[j];
  for (int k = 0; k < 8; k++) total += acc[k];
  return total;
}

// Σ (v − c)² and Σ u·v in the same lane scheme.
MG_ROW double lane_sq_dev(const float* v, float c, int64_t n) {
  float acc[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; k++) acc[k] += (v[j + k] - c) * (v[j + k] - c);
  double total = 0;
  for (; j < n; j++) total += double(v[j] - c) * (v[j] - c);
  for (int k = 0; k < 8; k++) total += acc[k];
  return total;
}

MG_ROW double lane_dot(const float* u, const float* v, int64_t n) {
  float acc[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; k++) acc[k] += u[j + k] * v[j + k];
  double total = 0;
  for (; j < n; j++) total += double(u[j]) * v[j];
  for (int k = 0; k < 8; k++) total += acc[k];
  return total;
}

template <typename T>
void store_row(T* out, const float* v, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(out, v, n * sizeof(float));
  } else {
    for (int64_t j = 0; j < n; j++) store(out + j, v[j]);
  }
}

// One row of layer norm forward and backward, on float32 rows. The lane order of the sums is
// fixed (8 lanes), and the wide build targets AVX2 without FMA (GCC would contract a·b + c),
// so the generic and AVX2 builds of these rows give identical bits.
MG_ROW void ln_forward_row(const float* __restrict x, const float* __restrict w, const float* __restrict b,
                           float* __restrict y, int64_t d, float eps, float* mean, float* rstd) {
  // Two passes (mean, then squared deviations): no cancellation when |mean| ≫ std.
  float mu = float(lane_sum(x, d) / double(d));
  float rs = float(1.0 / std::sqrt(lane_sq_dev(x, mu, d) / double(d) + double(eps)));
  for (int64_t j = 0; j < d; j++) y[j] = (x[j] - mu) * rs * w[j] + b[j];
  *mean = mu;
  *rstd = rs;
}

// dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·w; adds dy·x̂ and dy into this chunk's partials.
MG_ROW void ln_backward_row(const float* __restrict x, const float* __restrict dy, const float* __restrict w, float mu,
                            float rs, float* __restrict dx, float* __restrict pw, float* __restrict pb,
                            float* __restrict xhat, float* __restrict g, int64_t d) {
  for (int64_t j = 0; j < d; j++) {
    xhat[j] = (x[j] - mu) * rs;
    g[j] = dy[j] * w[j];
    pw[j] += dy[j] * xhat[j];
    pb[j] += dy[j];
  }
  float mean_g = float(lane_sum(g, d) / double(d));
  float mean_gx = float(lane_dot(g, xhat, d) / double(d));
  for (int64_t j = 0; j < d; j++) dx[j] = rs * (g[j] - mean_g - xhat[j] * mean_gx);
}

using LnForwardRow = void (*)(const float*, const float*, const float*, float*, int64_t, float, float*, float*);
using LnBackwardRow = void (*)(const float*, const float*, const float*, float, float, float*, float*, float*, float*,
                               float*, int64_t);

void ln_forward_generic(const float* x, const float* w, const float* b, float* y, int64_t d, float eps, float* mean,
                        float* rstd) {
  ln_forward_row(x, w, b, y, d, eps, mean, rstd);
}
__attribute__((target("avx2"))) void ln_forward_avx2(const float* x, const float* w, const float* b, float* y,
                                                         int64_t d, float eps, float* mean, float* rstd) {
  ln_forward_row(x, w, b, y, d, eps, mean, rstd);
}
void ln_backward_generic(const float* x, const float* dy, const float* w, float mu, float rs, float* dx, float* pw,
                         float* pb, float* xhat, float* g, int64_t d) {
  ln_backward_row(x, dy, w, mu, rs, dx, pw, pb, xhat, g, d);
}
__attribute__((target("avx2"))) void ln_backward_avx2(const float* x, const float* dy, const float* w, float mu,
                                                          float rs, float* dx, float* pw, float* pb, float* xhat,
                                                          float* g, int64_t d) {
  ln_backward_row(x, dy, w, mu, rs, dx, pw, pb, xhat, g, d);
}

const bool use_avx2 = has_avx2();  // memory-bound rows: wider loads help, FMA would not
const LnForwardRow ln_forward_rows = use_avx2 ? ln_forward_avx2 : ln_forward_generic;
const LnBackwardRow ln_backward_rows = use_avx2 ? ln_backward_avx2 : ln_backward_generic;

// Rows per parallel task so that a task touches about 16K elements.
inline size_t row_grain(int64_t d) { return size_t(std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1))); }

}  // namespace

// ---------------------------------------------------------------- layer norm

void layernorm_forward(DType dt, const void* x, const void* w, const void* b, void* y, float* mean, float* rstd,
                       int64_t rows, int64_t d, float eps) {
  dispatch_float(dt, "layerNorm", [&](auto tag) {
    using T = decltype(tag);
    std::vector<float> wbuf, bbuf;
    const float* wf = as_float(static_cast<const T*>(w), d, wbuf);
    const float* bf = as_float(static_cast<const T*>(b), d, bbuf);
    parallel_for(0, rows, row_grain(d), [&](size_t lo, size_t hi) {
      std::vector<float> xbuf, ybuf(std::is_same_v<T, float> ? 0 : d);
      for (size_t r = lo; r < hi; r++) {
        const float* xr = as_float(static_cast<const T*>(x) + int64_t(r) * d, d, xbuf);
        T* yr = static_cast<T*>(y) + int64_t(r) * d;
        if constexpr (std::is_same_v<T, float>) {
          ln_forward_rows(xr, wf, bf, yr, d, eps, mean + r, rstd + r);
        } else {
          ln_forward_rows(xr, wf, bf, ybuf.data(), d, eps, mean + r, rstd + r);
          store_row(yr, ybuf.data(), d);
        }
      }
    });
  });
}

void layernorm_backward(DType dt, const void* x, const void* w, const float* mean, const float* rstd, const void* dy,
                        void* dx, void* dw, void* db, int64_t rows, int64_t d) {
  dispatch_float(dt, "layerNormBackward", [&](auto tag) {
    using T = decltype(tag);
    std::vector<float> wbuf;
    const float* wf = as_float(static_cast<const T*>(w), d, wbuf);
    // The rows are cut into a number of chunks that depends only on `rows`; each chunk sums its
    // rows' dweight/dbias into its own partial (float, in row order), and the partials are then
    // added in chunk order (in double). Kept: 2·chunks·d floats, at most 64 rows of d.
    const int64_t chunks = std::clamp<int64_t>(rows / 16, 1, 64);
    std::vector<float> partial(size_t(2 * chunks * d), 0.f);
    parallel_for(0, chunks, 1, [&](size_t c0, size_t c1) {
      std::vector<float> xbuf, gbuf, xhat(d), g(d), dxbuf(std::is_same_v<T, float> ? 0 : d);
      for (size_t c = c0; c < c1; c++) {
        float* pw = partial.data() + 2 * int64_t(c) * d;
        float* pb = pw + d;
        for (int64_t r = int64_t(c) * rows / chunks; r < (int64_t(c) + 1) * rows / chunks; r++) {
          const float* xr = as_float(static_cast<const T*>(x) + r * d, d, xbuf);
          const float* gr = as_float(static_cast<const T*>(dy) + r * d, d, gbuf);
          T* dxr = static_cast<T*>(dx) + r * d;
          if constexpr (std::is_same_v<T, float>) {
            ln_backward_rows(xr, gr, wf, mean[r], rstd[r], dxr, pw, pb, xhat.data(), g.data(), d);
          } else {
            ln_backward_rows(xr, gr, wf, mean[r], rstd[r], dxbuf.data(), pw, pb, xhat.data(), g.data(), d);
            store_row(dxr, dxbuf.data(), d);
          }
        }
      }
    });
    parallel_for(0, d, 256, [&](size_t lo, size_t hi) {
      for (size_t j = lo; j < hi; j++) {
        double sw = 0, sb = 0;
        for (int64_t c = 0; c < chunks; c++) {
          sw += partial[2 * c * d + j];
          sb += partial[(2 * c + 1) * d + j];
        }
        store(static_cast<T*>(dw) + j, float(sw));
        store(static_cast<T*>(db) + j, float(sb));
      }
    });
  });
}

// ---------------------------------------------------------------- embedding

namespace {
// Checked before any thread starts, so the error names the first bad id, always the same one.
void check_ids(const int32_t* ids, int64_t n, int64_t vocab) {
  for (int64_t i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      fail("embedding: token id %d at position %lld is outside the vocabulary (%lld)", ids[i], (long long)i,
           (long long)vocab);
    }
  }
}
}  // namespace

void embedding_forward(DType dt, const int32_t* ids, const void* table, void* out, int64_t n, int64_t vocab,
                       int64_t d) {
  dispatch_float(dt, "embedding", [&](auto tag) {
    using T = decltype(tag);
    check_ids(ids, n, vocab);
    parallel_for(0, n, row_grain(d), [&](size_t lo, size_t hi) {
      for (size_t i = lo; i < hi; i++) {
        std::memcpy(static_cast<T*>(out) + int64_t(i) * d, static_cast<const T*>(table) + int64_t(ids[i]) * d,
                    d * sizeof(T));
      }
    });
  });
}

void embedding_backward(DType dt, const int32_t* ids, const void* dout, void* dtable, int64_t n, int64_t vocab,
                        int64_t d) {
  dispatch_float(dt, "embeddingBackward", [&](auto tag) {
    using T = decltype(tag);
    check_ids(ids, n, vocab);
    // Positions grouped by id (a stable counting sort): each vocabulary row is then owned by one
    // task, which sums its positions in increasing order. Kept: n + vocab + 1 int64s.
    std::vector<int64_t> start(vocab + 1, 0), order(n);
    for (int64_t i = 0; i < n; i++) start[ids[i] + 1]++;
    for (int64_t v = 0; v < vocab; v++) start[v + 1] += start[v];
    {
      std::vector<int64_t> next(start.begin(), start.end() - 1);
      for (int64_t i = 0; i < n; i++) order[next[ids[i]]++] = i;
    }
    const T* g = static_cast<const T*>(dout);
    parallel_for(0, vocab, row_grain(d), [&](size_t lo, size_t hi) {
      std::vector<float> acc(d);
      for (size_t v = lo; v < hi; v++) {
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t k = start[v]; k < start[v + 1]; k++) {
          const T* gr = g + order[k] * d;
          for (int64_t j = 0; j < d; j++) acc[j] += load(gr + j);
        }
        store_row(static_cast<T*>(dtable) + int64_t(v) * d, acc.data(), d);
      }
    });
  });
}

// ---------------------------------------------------------------- positions

void rope(DType dt, const void* x, void* y, int64_t batch, int64_t t, int64_t d_model, int64_t heads, int64_t offset,
          bool inverse) {
  if (heads <= 0 || d_model % heads != 0) {
    fail("rope: %lld heads do not divide the width %lld", (long long)heads, (long long)d_model);
  }
  const int64_t hd = d_model / heads, half = hd / 2;
  if (hd % 2 != 0) fail("rope: the head width %lld (%lld / %lld heads) must be even", (long long)hd, (long long)d_model, (long long)heads);
  dispatch_float(dt, "rope", [&](auto tag) {
    using T = decltype(tag);
    // cos/sin of every (position, frequency) as float32 tables [t, half], computed in double: the
    // first position's angle exactly (offset·θ_i can be ~1e5 radians), then one rotation by θ_i per
    // step, whose rounding grows only by ~1e-16 a step. Saves t·half sin/cos pairs per call.
    std::vector<float> cs(size_t(t * half)), sn(size_t(t * half));
    for (int64_t i = 0; i < half; i++) {
      const double theta = std::pow(10000.0, -2.0 * double(i) / double(hd));
      const double step_c = std::cos(theta), step_s = std::sin(theta);
      double c = std::cos(double(offset) * theta), s = std::sin(double(offset) * theta);
      for (int64_t p = 0; p < t; p++) {
        cs[p * half + i] = float(c);
        sn[p * half + i] = float(inverse ? -s : s);
        const double next_c = c * step_c - s * step_s;
        s = s * step_c + c * step_s;
        c = next_c;
      }
    }
    const T* xp = static_cast<const T*>(x);
    T* yp = static_cast<T*>(y);
    parallel_for(0, batch * t, row_grain(d_model), [&](size_t lo, size_t hi) {
      for (size_t row = lo; row < hi; row++) {
        const float* c = cs.data() + (int64_t(row) % t) * half;
        const float* s = sn.data() + (int64_t(row) % t) * half;
        for (int64_t h = 0; h < heads; h++) {
          int64_t base = int64_t(row) * d_model + h * hd;
          for (int64_t i = 0; i < half; i++) {
            float a = load(xp + base + i), b = load(xp + base + i + half);
            store(yp + base + i, a * c[i] - b * s[i]);
            store(yp + base + i + half, a * s[i] + b * c[i]);
          }
        }
      }
    });
  });
}

void sinusoidal_positions(DType dt, void* out, int64_t t, int64_t d, int64_t offset) {
  if (d % 2 != 0) fail("sinusoidalPositions: the width %lld must be even", (long long)d);
  dispatch_float(dt, "sinusoidalPositions", [&](auto tag) {
    using T = decltype(tag);
    std::vector<double> denom(size_t(d / 2));
    for (int64_t i = 0; i < d / 2; i++) denom[i] = std::pow(10000.0, 2.0 * double(i) / double(d));
    parallel_for(0, t, std::max<int64_t>(1, 4096 / std::max<int64_t>(d, 1)), [&](size_t lo, size_t hi) {
      for (size_t p = lo; p < hi; p++) {
        T* row = static_cast<T*>(out) + int64_t(p) * d;
        for (int64_t i = 0; i < d / 2; i++) {
          double angle = double(offset + int64_t(p)) / denom[i];
          store(row + 2 * i, float(std::sin(angle)));
          store(row + 2 * i + 1, float(std::cos(angle)));
        }
      }
    });
  });
}

}  // namespace mg::cpu
