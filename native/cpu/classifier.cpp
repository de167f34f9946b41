// CPU kernels of the op family "classifier": the output head: tied logits, cross-entropy and the copy mixture, fused.
//
// What is kept: per row only lse (and for the copy head w, lse over E, lse over the matching E); the logits
// live in one scratch of row_chunk x vocab_chunk floats (4 MiB by default) and the copy scores in one of
// len x len per segment. GEMMs go through mg::cpu::matmul, called from this thread so that each is threaded
// inside; tiles are visited in a fixed order and every row statistic is reduced by one task, so results do
// not depend on the thread count. Tiling the vocabulary as well as the rows bounds the scratch while each
// GEMM still has ≥ 1024 rows and columns to amortise the packing of its operands.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/threadpool.h"
#include "kernels.h"
#include "isa.h"
#include "simd.h"

namespace mg::cpu {
namespace {

// ---------------------------------------------------------------- row helpers: max, Σ exp, exp in place

float row_max_generic(const float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; i++) m = std::max(m, x[i]);
  return m;
}
double exp_sum_generic(const float* x, int64_t n, float shift) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += std::exp(x[i] - shift);
  return s;
}
void exp_scale_generic(float* x, int64_t n, float shift, float scale) {
  for (int64_t i = 0; i < n; i++) x[i] = scale * std::exp(x[i] - shift);
}

__attribute__((target("avx2,fma"))) float row_max_avx2(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float r = -INFINITY;
  for (float v : lanes) r = std::max(r, v);
  for (; i < n; i++) r = std::max(r, x[i]);
  return r;
}
__attribute__((target("avx2,fma"))) double exp_sum_avx2(const float* x, int64_t n, float shift) {
  // Float lanes for at most 1024 terms each (every term ≤ 1), then summed in double.
  const __m256 vs = _mm256_set1_ps(shift);
  double total = 0;
  int64_t i = 0;
  while (i + 8 <= n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t end = std::min(n, i + 1024);
    for (; i + 8 <= end; i += 8) acc = _mm256_add_ps(acc, exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs)));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc);
    for (float v : lanes) total += v;
  }
  for (; i < n; i++) total += std::exp(x[i] - shift);
  return total;
}
__attribute__((target("avx2,fma"))) void exp_scale_avx2(float* x, int64_t n, float shift, float scale) {
  const __m256 vs = _mm256_set1_ps(shift), vc = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(vc, exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs))));
  for (; i < n; i++) x[i] = scale * std::exp(x[i] - shift);
}

const bool use_avx2 = has_avx2();

float row_max(const float* x, int64_t n) { return use_avx2 ? row_max_avx2(x, n) : row_max_generic(x, n); }
double exp_sum(const float* x, int64_t n, float shift) {
  return use_avx2 ? exp_sum_avx2(x, n, shift) : exp_sum_generic(x, n, shift);
}
void exp_scale(float* x, int64_t n, float shift, float scale) {
  use_avx2 ? exp_scale_avx2(x, n, shift, scale) : exp_scale_generic(x, n, shift, scale);
}

// log σ(x) without overflow.
double log_sigmoid(double x) { return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x)); }
double sigmoid(double x) { return x >= 0 ? 1 / (1 + std::exp(-x)) : std::exp(x) / (1 + std::exp(x)); }

void check_ids(const int32_t* ids, int64_t n, int64_t vocab, const char* what) {
  for (int64_t i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      fail("tokenNLL: %s id %d at flat position %lld is outside the vocabulary [0, %lld)", what, int(ids[i]),
           (long long)i, (long long)vocab);
    }
  }
}

// op(A) [m, k] · op(B) [k, n] + beta·C, one float32 GEMM (threaded inside).
void gemm(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k, bool ta, bool tb, float beta) {
  matmul(DType::F32, a, b, DType::F32, c, 1, m, n, k, ta, tb, 0, 0, 0, beta);
}

// The logits of rows [r0, r0+nr) x vocabulary [v0, v0+nv) into scratch [nr, nv].
void logits_tile(const float* hf, const float* tok_emb, float* scratch, int64_t r0, int64_t nr, int64_t v0,
                 int64_t nv, int64_t dim) {
  gemm(hf + r0 * dim, tok_emb + v0 * dim, scratch, nr, nv, dim, false, true, 0.f);
}

std::vector<float>& scratch_of(int64_t n) {
  static thread_local std::vector<float> scratch;
  scratch.resize(size_t(n));
  return scratch;
}

// Runs fn(b) for every segment: one segment per thread when there are enough to go round (their small
// GEMMs then run serially inside), else one after another with each GEMM threaded.
template <typename Fn>
void for_each_segment(int64_t batch, Fn&& fn) {
  if (batch >= num_threads()) {
    parallel_for(0, size_t(batch), 1, [&](size_t lo, size_t hi) {
      for (size_t b = lo; b < hi; b++) fn(int64_t(b));
    });
  } else {
    for (int64_t b = 0; b < batch; b++) fn(b);
  }
}

size_t row_grain(int64_t cols) { return size_t(std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1))); }

}  // namespace

// ---------------------------------------------------------------- logits + cross-entropy

void token_nll_forward(const float* hf, const float* tok_emb, const int32_t* targets, float* nll, float* lse,
                       int64_t rows, int64_t vocab, int64_t dim, int64_t row_chunk, int64_t vocab_chunk) {
  check_ids(targets, rows, vocab, "target");
  if (rows == 0) return;
  row_chunk = std::min(row_chunk, rows);
  vocab_chunk = std::min(vocab_chunk, vocab);
  std::vector<float>& scratch = scratch_of(row_chunk * vocab_chunk);
  std::vector<float> run_max(static_cast<size_t>(row_chunk)), target_logit(static_cast<size_t>(row_chunk));
  std::vector<double> run_sum(static_cast<size_t>(row_chunk));
  for (int64_t r0 = 0; r0 < rows; r0 += row_chunk) {
    int64_t nr = std::min(row_chunk, rows - r0);
    std::fill(run_max.begin(), run_max.end(), -INFINITY);
    std::fill(run_sum.begin(), run_sum.end(), 0.0);
    for (int64_t v0 = 0; v0 < vocab; v0 += vocab_chunk) {
      int64_t nv = std::min(vocab_chunk, vocab - v0);
      logits_tile(hf, tok_emb, scratch.data(), r0, nr, v0, nv, dim);
      // Online logsumexp: each row's running (max, Σ exp(· − max)) absorbs this tile.
      parallel_for(0, size_t(nr), row_grain(nv), [&](size_t lo, size_t hi) {
        for (size_t r = lo; r < hi; r++) {
          const float* row = scratch.data() + int64_t(r) * nv;
          float m = std::max(run_max[r], row_max(row, nv));
          run_sum[r] = run_sum[r] * std::exp(double(run_max[r]) - m) + exp_sum(row, nv, m);
          run_max[r] = m;
          int64_t y = targets[r0 + int64_t(r)];
          if (y >= v0 && y < v0 + nv) target_logit[r] = row[y - v0];
        }
      });
    }
    for (int64_t r = 0; r < nr; r++) {
      double l = double(run_max[size_t(r)]) + std::log(run_sum[size_t(r)]);
      lse[r0 + r] = float(l);
      nll[r0 + r] = float(l - target_logit[size_t(r)]);
    }
  }
}

void token_nll_backward(const float* hf, const float* tok_emb, const int32_t* targets, const float* lse,
                        const float* coef, float* dhf, float* dtok_emb, int64_t rows, int64_t vocab, int64_t dim,
                        int64_t row_chunk, int64_t vocab_chunk) {
  check_ids(targets, rows, vocab, "target");
  if (rows == 0) {
    std::fill(dtok_emb, dtok_emb + vocab * dim, 0.f);
    return;
  }
  row_chunk = std::min(row_chunk, rows);
  vocab_chunk = std::min(vocab_chunk, vocab);
  std::vector<float>& scratch = scratch_of(row_chunk * vocab_chunk);
  for (int64_t r0 = 0; r0 < rows; r0 += row_chunk) {
    int64_t nr = std::min(row_chunk, rows - r0);
    for (int64_t v0 = 0; v0 < vocab; v0 += vocab_chunk) {
      int64_t nv = std::min(vocab_chunk, vocab - v0);
      logits_tile(hf, tok_emb, scratch.data(), r0, nr, v0, nv, dim);
      // dlogits = coef·(softmax − onehot), in place of the logits.
      parallel_for(0, size_t(nr), row_grain(nv), [&](size_t lo, size_t hi) {
        for (size_t r = lo; r < hi; r++) {
          int64_t g = r0 + int64_t(r);
          float* row = scratch.data() + int64_t(r) * nv;
          exp_scale(row, nv, lse[g], coef[g]);
          int64_t y = targets[g];
          if (y >= v0 && y < v0 + nv) row[y - v0] -= coef[g];
        }
      });
      // Each output block is first written (beta 0), then accumulated in tile order: deterministic.
      gemm(scratch.data(), tok_emb + v0 * dim, dhf + r0 * dim, nr, dim, nv, false, false, v0 == 0 ? 0.f : 1.f);
      gemm(scratch.data(), hf + r0 * dim, dtok_emb + v0 * dim, nv, dim, nr, true, false, r0 == 0 ? 0.f : 1.f);
    }
  }
}

// ---------------------------------------------------------------- copy mixture

void copy_mix_forward(const float* cq, const float* ck, const float* gen_logit, const int32_t* inputs,
                      const int32_t* targets, float* nll, float* stats, int64_t batch, int64_t len, int64_t dim,
                      int64_t vocab) {
  check_ids(inputs, batch * len, vocab, "input");
  check_ids(targets, batch * len, vocab, "target");
  if (batch * len == 0) return;
  const float scale = float(1.0 / std::sqrt(double(dim)));
  for_each_segment(batch, [&](int64_t b) {
    int64_t base = b * len;
    std::vector<float>& scores = scratch_of(len * len);
    gemm(cq + base * dim, ck + base * dim, scores.data(), len, len, dim, false, true, 0.f);
    parallel_for(0, size_t(len), row_grain(len), [&](size_t lo, size_t hi) {
      for (size_t pi = lo; pi < hi; pi++) {
        int64_t p = int64_t(pi), r = base + p;
        float* e = scores.data() + p * len;
        int32_t y = targets[r];
        float mx = -INFINITY, mx_match = -INFINITY;
        for (int64_t j = 0; j <= p; j++) {
          e[j] *= scale;
          mx = std::max(mx, e[j]);
          if (inputs[base + j] == y) mx_match = std::max(mx_match, e[j]);
        }
        double sum = 0, sum_match = 0;
        for (int64_t j = 0; j <= p; j++) {
          sum += std::exp(double(e[j]) - mx);
          if (inputs[base + j] == y) sum_match += std::exp(double(e[j]) - mx_match);
        }
        double lse_all = mx + std::log(sum);
        double g = gen_logit[r];
        double gen_term = log_sigmoid(g) - double(nll[r]);
        double log_p = gen_term, w = 1;
        double lse_match = -INFINITY;
        if (mx_match > -INFINITY) {
          lse_match = mx_match + std::log(sum_match);
          double copy_term = log_sigmoid(-g) + lse_match - lse_all;
          double top = std::max(gen_term, copy_term);
          log_p = top + std::log(std::exp(gen_term - top) + std::exp(copy_term - top));
          w = std::exp(gen_term - log_p);
        }
        nll[r] = float(-log_p);
        stats[3 * r] = float(w);
        stats[3 * r + 1] = float(lse_all);
        stats[3 * r + 2] = float(lse_match);
      }
    });
  });
}

void copy_mix_backward(const float* cq, const float* ck, const float* gen_logit, const int32_t* inputs,
                       const int32_t* targets, const float* stats, const float* dnll, float* coef, float* dcq,
                       float* dck, float* dgen, int64_t batch, int64_t len, int64_t dim) {
  if (batch * len == 0) return;
  const float scale = float(1.0 / std::sqrt(double(dim)));
  for_each_segment(batch, [&](int64_t b) {
    int64_t base = b * len;
    std::vector<float>& scores = scratch_of(len * len);
    gemm(cq + base * dim, ck + base * dim, scores.data(), len, len, dim, false, true, 0.f);
    // Row p of the scores becomes dE[p, ·]·scale: (1 − w)·(β − q)·dnll, q the posterior over matching p'.
    parallel_for(0, size_t(len), row_grain(len), [&](size_t lo, size_t hi) {
      for (size_t pi = lo; pi < hi; pi++) {
        int64_t p = int64_t(pi), r = base + p;
        float* e = scores.data() + p * len;
        double w = stats[3 * r], lse_all = stats[3 * r + 1], lse_match = stats[3 * r + 2];
        double go = dnll[r];
        coef[r] = float(go * w);
        dgen[r] = float(go * (sigmoid(gen_logit[r]) - w));
        double copy_weight = go * (1 - w);
        int32_t y = targets[r];
        for (int64_t j = 0; j < len; j++) {
          double d = 0;
          if (j <= p && copy_weight != 0) {
            double s = float(e[j] * scale);  // as rounded in the forward
            double q = inputs[base + j] == y ? std::exp(s - lse_match) : 0;
            d = copy_weight * (std::exp(s - lse_all) - q) * scale;
          }
          e[j] = float(d);
        }
      }
    });
    gemm(scores.data(), ck + base * dim, dcq + base * dim, len, dim, len, false, false, 0.f);
    gemm(scores.data(), cq + base * dim, dck + base * dim, len, dim, len, true, false, 0.f);
  });
}

// ---------------------------------------------------------------- decoding

void copy_mix_probs(const float* logits, const float* cq, const float* ck, const float* gen_logit,
                    const int32_t* tokens, const int32_t* lengths, float* probs, int64_t batch, int64_t len,
                    int64_t dim, int64_t vocab) {
  const double scale = 1.0 / std::sqrt(double(dim));
  parallel_for(0, size_t(batch), 1, [&](size_t lo, size_t hi) {
    std::vector<double> p(static_cast<size_t>(vocab)), e(static_cast<size_t>(len));
    for (size_t bi = lo; bi < hi; bi++) {
      const int64_t b = int64_t(bi);
      const float* lg = logits + b * vocab;
      float mx = -INFINITY;
      for (int64_t v = 0; v < vocab; v++) mx = std::max(mx, lg[v]);
      double total = 0;
      for (int64_t v = 0; v < vocab; v++) total += (p[size_t(v)] = std::exp(double(lg[v]) - mx));
      const int64_t n = gen_logit ? std::min<int64_t>(std::max<int32_t>(lengths[b], 0), len) : 0;
      // σ(g) and σ(−g) each computed directly, so that neither rounds to 0 next to a 1.
      const double g = n > 0 ? double(gen_logit[b]) : INFINITY;
      const double pgen = n > 0 ? 1.0 / (1.0 + std::exp(-g)) : 1.0, pcopy = n > 0 ? 1.0 / (1.0 + std::exp(g)) : 0.0;
      for (int64_t v = 0; v < vocab; v++) p[size_t(v)] *= pgen / total;
      if (n > 0) {
        double emx = -INFINITY, etotal = 0;
        for (int64_t j = 0; j < n; j++) {
          const float* k = ck + (b * len + j) * dim;
          const float* q = cq + b * dim;
          // Four partial sums (fixed order): one chain of dependent double adds made this latency-bound.
          double part[4] = {0, 0, 0, 0};
          int64_t i = 0;
          for (; i + 4 <= dim; i += 4)
            for (int u = 0; u < 4; u++) part[u] += double(q[i + u]) * double(k[i + u]);
          for (; i < dim; i++) part[0] += double(q[i]) * double(k[i]);
          e[size_t(j)] = ((part[0] + part[1]) + (part[2] + part[3])) * scale;
          emx = std::max(emx, e[size_t(j)]);
        }
        for (int64_t j = 0; j < n; j++) etotal += (e[size_t(j)] = std::exp(e[size_t(j)] - emx));
        for (int64_t j = 0; j < n; j++) {
          const int32_t y = tokens[b * len + j];
          if (y >= 0 && y < vocab) p[size_t(y)] += pcopy * e[size_t(j)] / etotal;
        }
      }
      for (int64_t v = 0; v < vocab; v++) probs[b * vocab + v] = float(p[size_t(v)]);
    }
  });
}

}  // namespace mg::cpu
