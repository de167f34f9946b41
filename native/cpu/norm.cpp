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

// Sums in 8 independent float lanes (the compiler vectorises this), lanes combined in double.
inline double lane_sum(const float* v, int64_t n) {
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
inline double lane_sq_dev(const float* v, float c, int64_t n) {
  float acc[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; k++) acc[k] += (v[j + k] - c) * (v[j + k] - c);
  double total = 0;
  for (; j < n; j++) total += double(v[j] - c) * (v[j] - c);
  for (int k = 0; k < 8; k++) total += acc[k];
  return total;
}

inline double lane_dot(const float* u, const float* v, int64_t n) {
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
      std::vector<float> xbuf, out(d);
      for (size_t r = lo; r < hi; r++) {
        const float* xr = as_float(static_cast<const T*>(x) + int64_t(r) * d, d, xbuf);
        // Two passes (mean, then squared deviations): no cancellation when |mean| ≫ std.
        float mu = float(lane_sum(xr, d) / double(d));
        float rs = float(1.0 / std::sqrt(lane_sq_dev(xr, mu, d) / double(d) + double(eps)));
        for (int64_t j = 0; j < d; j++) out[j] = (xr[j] - mu) * rs * wf[j] + bf[j];
        store_row(static_cast<T*>(y) + int64_t(r) * d, out.data(), d);
        mean[r] = mu;
        rstd[r] = rs;
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
      std::vector<float> xbuf, gbuf, xhat(d), g(d), out(d);
      for (size_t c = c0; c < c1; c++) {
        float* pw = partial.data() + 2 * int64_t(c) * d;
        float* pb = pw + d;
        for (int64_t r = int64_t(c) * rows / chunks; r < (int64_t(c) + 1) * rows / chunks; r++) {
          const float* xr = as_float(static_cast<const T*>(x) + r * d, d, xbuf);
          const float* gr = as_float(static_cast<const T*>(dy) + r * d, d, gbuf);
          float mu = mean[r], rs = rstd[r];
          for (int64_t j = 0; j < d; j++) {
            xhat[j] = (xr[j] - mu) * rs;
            g[j] = gr[j] * wf[j];
            pw[j] += gr[j] * xhat[j];
            pb[j] += gr[j];
          }
          // dx = rstd·(g − mean(g) − x̂·mean(g·x̂)), g = dy·w.
          float mean_g = float(lane_sum(g.data(), d) / double(d));
          float mean_gx = float(lane_dot(g.data(), xhat.data(), d) / double(d));
          for (int64_t j = 0; j < d; j++) out[j] = rs * (g[j] - mean_g - xhat[j] * mean_gx);
          store_row(static_cast<T*>(dx) + r * d, out.data(), d);
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
    // cos/sin of every (position, frequency), computed in double once: [t, half] each.
    std::vector<float> cs(size_t(t * half)), sn(size_t(t * half));
    parallel_for(0, t, std::max<int64_t>(1, 4096 / std::max<int64_t>(half, 1)), [&](size_t lo, size_t hi) {
      for (size_t p = lo; p < hi; p++) {
        for (int64_t i = 0; i < half; i++) {
          double angle = double(offset + int64_t(p)) * std::pow(10000.0, -2.0 * double(i) / double(hd));
          cs[p * half + i] = float(std::cos(angle));
          sn[p * half + i] = float(inverse ? -std::sin(angle) : std::sin(angle));
        }
      }
    });
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
