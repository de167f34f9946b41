// CPU kernels of the op family "attention": fused causal self-attention with RoPE, the memory read and its gate.
//
// FlashAttention on the CPU. The forward runs one task per (batch, head, block of kQB query rows) and walks the
// keys in tiles of kKB with an online softmax, so scores exist only a [kQB, kKB] tile at a time, never [T, T].
// It keeps, per row, the logsumexp of the self part and of the memory part (float32, [B, H, T]); with memory it
// also saves A and R (each [B, T, D], the size of one third of qkv), because the gate gradient and the
// D_i = rowsum(dA_i ∘ A_i) terms need A and R separately and they cannot be recovered from O = g·R + (1 − g)·A.
// The backward recomputes the score tiles from q, k and the logsumexps. It runs one task per (batch, head), so
// the thread that owns a head owns its dk, dv, dmk, dmv accumulators: no races, and a fixed summation order
// (deterministic whatever the thread count). Tiles are stored key-major-transposed so the inner loops run
// contiguously over keys (or over the head width) and vectorise without reassociating sums; each task body is
// compiled twice, for AVX2+FMA and for plain x86-64, and picked at run time.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/threadpool.h"
#include "kernels.h"
#include "simd.h"

namespace mg::cpu {
namespace {

constexpr int64_t kQB = 32;  // query rows per block
constexpr int64_t kKB = 64;  // keys per tile

#define MG_INLINE inline __attribute__((always_inline))

struct Dims {
  int64_t B, T, H, d, S;
  bool rope;
  int64_t D() const { return H * d; }
  float scale() const { return float(1.0 / std::sqrt(double(d))); }
};

// cos(pθ_i), sin(pθ_i) for p < T, i < d/2, θ_i = 10000^(−2i/d): computed in double, stored as float, once a call.
struct RopeTable {
  std::vector<float> cos, sin;
  int64_t half = 0;
  RopeTable(const Dims& s) {
    if (!s.rope) return;
    half = s.d / 2;
    cos.resize(size_t(s.T * half));
    sin.resize(size_t(s.T * half));
    for (int64_t p = 0; p < s.T; p++) {
      for (int64_t i = 0; i < half; i++) {
        double angle = double(p) * std::pow(10000.0, -2.0 * double(i) / double(s.d));
        cos[size_t(p * half + i)] = float(std::cos(angle));
        sin[size_t(p * half + i)] = float(std::sin(angle));
      }
    }
  }
};

// Rotate-half RoPE of one head row z at position p.
MG_INLINE void rope_rotate(const float* __restrict z, float* __restrict out, const RopeTable& rt, int64_t p) {
  const float* c = rt.cos.data() + p * rt.half;
  const float* s = rt.sin.data() + p * rt.half;
  const int64_t h = rt.half;
  for (int64_t i = 0; i < h; i++) {
    float a = z[i], b = z[i + h];
    out[i] = a * c[i] - b * s[i];
    out[i + h] = a * s[i] + b * c[i];
  }
}

// out += Rᵀ·dz: the gradient through rope_rotate (R is a rotation, so its transpose undoes it).
MG_INLINE void rope_rotate_back_add(const float* __restrict dz, float* __restrict out, const RopeTable& rt, int64_t p) {
  const float* c = rt.cos.data() + p * rt.half;
  const float* s = rt.sin.data() + p * rt.half;
  const int64_t h = rt.half;
  for (int64_t i = 0; i < h; i++) {
    float da = dz[i], db = dz[i + h];
    out[i] += da * c[i] + db * s[i];
    out[i + h] += db * c[i] - da * s[i];
  }
}

MG_INLINE void axpy(float alpha, const float* __restrict x, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

MG_INLINE float dot(const float* x, const float* y, int64_t n) {
  double acc = 0;
  for (int64_t i = 0; i < n; i++) acc += double(x[i]) * y[i];
  return float(acc);
}

// x[j] = exp(x[j] − shift) for j < n, returning their sum: the softmax numerators of one row (arguments ≤ 0
// up to rounding). The AVX2 version uses simd.h's Cephes expf, 8 lanes at a time, because a scalar
// libm exp per score costs about as much as the dot products around it.
float exp_row_generic(float* x, int64_t n, float shift) {
  float sum = 0.f;
  for (int64_t j = 0; j < n; j++) {
    x[j] = std::exp(x[j] - shift);
    sum += x[j];
  }
  return sum;
}

__attribute__((target("avx2,fma"))) float exp_row_avx2(float* x, int64_t n, float shift) {
  const __m256 sh = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + j), sh));
    _mm256_storeu_ps(x + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  for (; j < n; j++) {
    x[j] = std::exp(x[j] - shift);
    sum += x[j];
  }
  return sum;
}

using ExpRow = float (*)(float*, int64_t, float);
const ExpRow exp_row = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? exp_row_avx2 : exp_row_generic;
}();

MG_INLINE float sigmoid(float x) { return float(1.0 / (1.0 + std::exp(-double(x)))); }

// s[r·kKB + j] = scale · Σ_i q[r·ldq + i] · kt[i·kKB + j] for r < rows, j < nk: a tile of q·kᵀ with the key
// tile stored transposed ([d, kKB]). Four query rows at a time share each load of kt.
MG_INLINE void score_tile(const float* q, int64_t ldq, int64_t rows, const float* kt, int64_t nk, int64_t d,
                          float scale, float* s) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    float* __restrict s0 = s + r * kKB;
    float* __restrict s1 = s0 + kKB;
    float* __restrict s2 = s1 + kKB;
    float* __restrict s3 = s2 + kKB;
    for (int64_t j = 0; j < nk; j++) s0[j] = s1[j] = s2[j] = s3[j] = 0.f;
    const float* q0 = q + r * ldq;
    for (int64_t i = 0; i < d; i++) {
      const float* __restrict kr = kt + i * kKB;
      float a0 = q0[i], a1 = q0[ldq + i], a2 = q0[2 * ldq + i], a3 = q0[3 * ldq + i];
      for (int64_t j = 0; j < nk; j++) {
        float kv = kr[j];
        s0[j] += a0 * kv;
        s1[j] += a1 * kv;
        s2[j] += a2 * kv;
        s3[j] += a3 * kv;
      }
    }
  }
  for (; r < rows; r++) {
    float* __restrict s0 = s + r * kKB;
    for (int64_t j = 0; j < nk; j++) s0[j] = 0.f;
    for (int64_t i = 0; i < d; i++) {
      const float* __restrict kr = kt + i * kKB;
      float a0 = q[r * ldq + i];
      for (int64_t j = 0; j < nk; j++) s0[j] += a0 * kr[j];
    }
  }
  if (scale != 1.f) {
    for (int64_t x = 0; x < rows * kKB; x++) s[x] *= scale;
  }
}

// Copies nk rows (row j at src + j·ld, optionally rotated at position pos0 + j) into a transposed [d, kKB] tile.
MG_INLINE void load_tile_t(const float* src, int64_t ld, int64_t nk, int64_t d, const RopeTable* rt, int64_t pos0,
                           float* tmp, float* tile) {
  for (int64_t j = 0; j < nk; j++) {
    const float* row = src + j * ld;
    if (rt) {
      rope_rotate(row, tmp, *rt, pos0 + j);
      row = tmp;
    }
    for (int64_t i = 0; i < d; i++) tile[i * kKB + j] = row[i];
  }
}

struct ForwardScratch {
  std::vector<float> q, kt, s, tmp, m, l;
  explicit ForwardScratch(int64_t d)
      : q(size_t(kQB * d)), kt(size_t(d * kKB)), s(size_t(kQB * kKB)), tmp(size_t(d)), m(kQB), l(kQB) {}
};

// Online-softmax attention of `rows` query rows (q, leading dim ldq; query r is at position qpos0 + r) over nk
// keys/values (row j at k + j·ld, v + j·ld). Causal: query p sees keys j ≤ p. Keys are rotated when rt is set.
// Writes out (rows × d, normalised) and lse (rows).
MG_INLINE void attend_rows(const float* q, int64_t ldq, int64_t rows, int64_t qpos0, const float* k, const float* v,
                           int64_t ld, int64_t nk, bool causal, const RopeTable* rt, int64_t d, float scale,
                           ForwardScratch& w, float* out, float* lse) {
  float* m = w.m.data();
  float* l = w.l.data();
  for (int64_t r = 0; r < rows; r++) {
    m[r] = -INFINITY;
    l[r] = 0.f;
    std::fill(out + r * d, out + (r + 1) * d, 0.f);
  }
  int64_t k_end = causal ? std::min(nk, qpos0 + rows) : nk;
  for (int64_t k0 = 0; k0 < k_end; k0 += kKB) {
    int64_t n = std::min(kKB, k_end - k0);
    load_tile_t(k + k0 * ld, ld, n, d, rt, k0, w.tmp.data(), w.kt.data());
    score_tile(q, ldq, rows, w.kt.data(), n, d, scale, w.s.data());
    for (int64_t r = 0; r < rows; r++) {
      int64_t valid = causal ? std::min(n, qpos0 + r - k0 + 1) : n;
      if (valid <= 0) continue;
      float* sr = w.s.data() + r * kKB;
      float mx = m[r];
      for (int64_t j = 0; j < valid; j++) mx = std::max(mx, sr[j]);
      float* o = out + r * d;
      if (mx > m[r] && m[r] != -INFINITY) {
        float corr = std::exp(m[r] - mx);
        l[r] *= corr;
        for (int64_t i = 0; i < d; i++) o[i] *= corr;
      }
      m[r] = mx;
      l[r] += exp_row(sr, valid, mx);
      for (int64_t j = 0; j < valid; j++) axpy(sr[j], v + (k0 + j) * ld, o, d);
    }
  }
  for (int64_t r = 0; r < rows; r++) {
    float inv = 1.f / l[r];
    for (int64_t i = 0; i < d; i++) out[r * d + i] *= inv;
    lse[r] = m[r] + std::log(l[r]);
  }
}

// One forward task: batch b, head h, query rows [t0, t0 + rows).
MG_INLINE void forward_task(const Dims& s, const RopeTable& rt, const float* qkv, const float* mem_kv,
                            const float* gate_logits, float* out, float* lse_self, float* lse_mem, float* save_a,
                            float* save_r, int64_t b, int64_t h, int64_t t0, ForwardScratch& w, float* a_blk,
                            float* r_blk) {
  const int64_t D = s.D(), d = s.d, rows = std::min(kQB, s.T - t0);
  const float scale = s.scale();
  const float* qsrc = qkv + (b * s.T + t0) * 3 * D + h * d;  // unrotated q rows, leading dim 3D
  const float* q = qsrc;
  int64_t ldq = 3 * D;
  if (s.rope) {
    for (int64_t r = 0; r < rows; r++) rope_rotate(qsrc + r * 3 * D, w.q.data() + r * d, rt, t0 + r);
    q = w.q.data();
    ldq = d;
  }
  const float* kbase = qkv + b * s.T * 3 * D + D + h * d;
  const float* vbase = kbase + D;
  const int64_t lse_row = (b * s.H + h) * s.T + t0;
  attend_rows(q, ldq, rows, t0, kbase, vbase, 3 * D, s.T, true, s.rope ? &rt : nullptr, d, scale, w, a_blk,
              lse_self + lse_row);
  if (s.S == 0) {
    for (int64_t r = 0; r < rows; r++) std::copy(a_blk + r * d, a_blk + (r + 1) * d, out + (b * s.T + t0 + r) * D + h * d);
    return;
  }
  const float* mk = mem_kv + b * s.S * 2 * D + h * d;
  attend_rows(qsrc, 3 * D, rows, 0, mk, mk + D, 2 * D, s.S, false, nullptr, d, scale, w, r_blk, lse_mem + lse_row);
  for (int64_t r = 0; r < rows; r++) {
    int64_t t = t0 + r;
    float g = sigmoid(gate_logits[(b * s.T + t) * s.H + h]);
    const float* ar = a_blk + r * d;
    const float* rr = r_blk + r * d;
    float* o = out + (b * s.T + t) * D + h * d;
    for (int64_t i = 0; i < d; i++) o[i] = g * rr[i] + (1.f - g) * ar[i];
    if (save_a) std::copy(ar, ar + d, save_a + (b * s.T + t) * D + h * d);
    if (save_r) std::copy(rr, rr + d, save_r + (b * s.T + t) * D + h * d);
  }
}

struct ForwardArgs {
  const Dims* s;
  const RopeTable* rt;
  const float *qkv, *mem_kv, *gate_logits;
  float *out, *lse_self, *lse_mem, *save_a, *save_r;
};

MG_INLINE void forward_range(const ForwardArgs& a, size_t lo, size_t hi) {
  const Dims& s = *a.s;
  ForwardScratch w(s.d);
  std::vector<float> a_blk(size_t(kQB * s.d)), r_blk(size_t(kQB * s.d));
  const int64_t blocks = (s.T + kQB - 1) / kQB;
  for (size_t task = lo; task < hi; task++) {
    int64_t qb = int64_t(task) % blocks, bh = int64_t(task) / blocks;
    forward_task(s, *a.rt, a.qkv, a.mem_kv, a.gate_logits, a.out, a.lse_self, a.lse_mem, a.save_a, a.save_r,
                 bh / s.H, bh % s.H, qb * kQB, w, a_blk.data(), r_blk.data());
  }
}

__attribute__((target("avx2,fma"))) void forward_range_avx2(const ForwardArgs& a, size_t lo, size_t hi) {
  forward_range(a, lo, hi);
}
void forward_range_generic(const ForwardArgs& a, size_t lo, size_t hi) { forward_range(a, lo, hi); }

// ---------------------------------------------------------------- backward

struct BackwardArgs {
  const Dims* s;
  const RopeTable* rt;
  const float *qkv, *mem_kv, *gate_logits, *a, *r, *lse_self, *lse_mem, *d_out;
  float *d_qkv, *d_mem_kv, *d_gate;
};

// Gradient of one attention (self or memory) of head rows, recomputing the probabilities tile by tile:
// P = exp(q·kᵀ·scale − lse), dP = dY·vᵀ, dS = P ∘ (dP − Dsum), dq += dS·k·scale, dk += dSᵀ·q·scale, dv += Pᵀ·dY.
// q rows (ld ldq) at positions 0 … nq−1, key rows (ld ldk, already rotated where needed) and value rows (ld ldv)
// 0 … nk−1; dy (the gradient of this attention's output) and dsum = rowsum(dy ∘ y) are per query row.
// dq, dk, dv are [n, d] contiguous accumulators owned by this task.
MG_INLINE void attend_rows_backward(const float* q, int64_t ldq, int64_t nq, const float* k, int64_t ldk,
                                    const float* v, int64_t ldv, int64_t nk, bool causal, int64_t d, float scale, const float* dy,
                                    const float* dsum, const float* lse, float* dq, float* dk, float* dv,
                                    float* kt, float* vt, float* p, float* dp) {
  for (int64_t t0 = 0; t0 < nq; t0 += kQB) {
    int64_t rows = std::min(kQB, nq - t0);
    int64_t k_end = causal ? std::min(nk, t0 + rows) : nk;
    for (int64_t k0 = 0; k0 < k_end; k0 += kKB) {
      int64_t n = std::min(kKB, k_end - k0);
      load_tile_t(k + k0 * ldk, ldk, n, d, nullptr, 0, nullptr, kt);
      load_tile_t(v + k0 * ldv, ldv, n, d, nullptr, 0, nullptr, vt);
      score_tile(q + t0 * ldq, ldq, rows, kt, n, d, scale, p);
      score_tile(dy + t0 * d, d, rows, vt, n, d, 1.f, dp);
      for (int64_t r = 0; r < rows; r++) {
        int64_t t = t0 + r;
        int64_t valid = causal ? std::max<int64_t>(0, std::min(n, t - k0 + 1)) : n;
        float* pr = p + r * kKB;
        float* dpr = dp + r * kKB;  // becomes dS·scale
        exp_row(pr, valid, lse[t]);
        for (int64_t j = 0; j < valid; j++) dpr[j] = pr[j] * (dpr[j] - dsum[t]) * scale;
        for (int64_t j = valid; j < n; j++) pr[j] = dpr[j] = 0.f;
        float* dqr = dq + t * d;
        for (int64_t j = 0; j < valid; j++) axpy(dpr[j], k + (k0 + j) * ldk, dqr, d);
      }
      for (int64_t j = 0; j < n; j++) {
        float* dkj = dk + (k0 + j) * d;
        float* dvj = dv + (k0 + j) * d;
        for (int64_t r = 0; r < rows; r++) {
          axpy(dp[r * kKB + j], q + (t0 + r) * ldq, dkj, d);
          axpy(p[r * kKB + j], dy + (t0 + r) * d, dvj, d);
        }
      }
    }
  }
}

struct BackwardScratch {
  std::vector<float> qr, kr, dy_a, dy_r, sum_a, sum_r, dq, dk, dv, dq0, dmk, dmv, kt, vt, p, dp;
  BackwardScratch(const Dims& s)
      : qr(s.rope ? size_t(s.T * s.d) : 0), kr(qr.size()), dy_a(size_t(s.T * s.d)), dy_r(s.S ? dy_a.size() : 0),
        sum_a(size_t(s.T)), sum_r(size_t(s.T)), dq(dy_a.size()), dk(dy_a.size()), dv(dy_a.size()), dq0(dy_r.size()),
        dmk(size_t(s.S * s.d)), dmv(dmk.size()), kt(size_t(s.d * kKB)), vt(kt.size()), p(size_t(kQB * kKB)),
        dp(p.size()) {}
};

// The whole backward of batch b, head h: this task alone writes that head's columns of every gradient.
MG_INLINE void backward_head(const BackwardArgs& a, int64_t b, int64_t h, BackwardScratch& w) {
  const Dims& s = *a.s;
  const RopeTable& rt = *a.rt;
  const int64_t T = s.T, S = s.S, d = s.d, D = s.D();
  const float scale = s.scale();
  const float* qsrc = a.qkv + b * T * 3 * D + h * d;  // rows of ld 3D
  const float* ksrc = qsrc + D;
  const float* vsrc = qsrc + 2 * D;
  const float* q = qsrc;
  const float* k = ksrc;
  int64_t ldqk = 3 * D;
  if (s.rope) {
    for (int64_t t = 0; t < T; t++) {
      rope_rotate(qsrc + t * 3 * D, w.qr.data() + t * d, rt, t);
      rope_rotate(ksrc + t * 3 * D, w.kr.data() + t * d, rt, t);
    }
    q = w.qr.data();
    k = w.kr.data();
    ldqk = d;
  }
  // Split dO between the two attentions; D_i terms; the gate gradient dO·(R − A)·g(1 − g).
  for (int64_t t = 0; t < T; t++) {
    const int64_t row = (b * T + t) * D + h * d;
    const float* dout = a.d_out + row;
    const float* ar = a.a + row;
    float* dya = w.dy_a.data() + t * d;
    if (S == 0) {
      std::copy(dout, dout + d, dya);
      w.sum_a[t] = dot(dya, ar, d);
      continue;
    }
    const int64_t gi = (b * T + t) * s.H + h;
    const float g = sigmoid(a.gate_logits[gi]);
    const float* rr = a.r + row;
    float* dyr = w.dy_r.data() + t * d;
    double diff = 0;
    for (int64_t i = 0; i < d; i++) {
      dya[i] = (1.f - g) * dout[i];
      dyr[i] = g * dout[i];
      diff += double(dout[i]) * (double(rr[i]) - double(ar[i]));
    }
    w.sum_a[t] = dot(dya, ar, d);
    w.sum_r[t] = dot(dyr, rr, d);
    a.d_gate[gi] = float(diff * g * (1.0 - g));
  }
  std::fill(w.dq.begin(), w.dq.end(), 0.f);
  std::fill(w.dk.begin(), w.dk.end(), 0.f);
  std::fill(w.dv.begin(), w.dv.end(), 0.f);
  const float* lse_self = a.lse_self + (b * s.H + h) * T;
  attend_rows_backward(q, ldqk, T, k, ldqk, vsrc, 3 * D, T, true, d, scale, w.dy_a.data(), w.sum_a.data(), lse_self,
                       w.dq.data(), w.dk.data(), w.dv.data(), w.kt.data(), w.vt.data(), w.p.data(), w.dp.data());
  if (S > 0) {
    std::fill(w.dq0.begin(), w.dq0.end(), 0.f);
    std::fill(w.dmk.begin(), w.dmk.end(), 0.f);
    std::fill(w.dmv.begin(), w.dmv.end(), 0.f);
    const float* mk = a.mem_kv + b * S * 2 * D + h * d;
    attend_rows_backward(qsrc, 3 * D, T, mk, 2 * D, mk + D, 2 * D, S, false, d, scale, w.dy_r.data(), w.sum_r.data(),
                         a.lse_mem + (b * s.H + h) * T, w.dq0.data(), w.dmk.data(), w.dmv.data(), w.kt.data(),
                         w.vt.data(), w.p.data(), w.dp.data());
    for (int64_t j = 0; j < S; j++) {
      float* dst = a.d_mem_kv + (b * S + j) * 2 * D + h * d;
      std::copy(w.dmk.data() + j * d, w.dmk.data() + (j + 1) * d, dst);
      std::copy(w.dmv.data() + j * d, w.dmv.data() + (j + 1) * d, dst + D);
    }
  }
  for (int64_t t = 0; t < T; t++) {
    float* dst = a.d_qkv + (b * T + t) * 3 * D + h * d;
    const float* dq = w.dq.data() + t * d;
    const float* dk = w.dk.data() + t * d;
    if (s.rope) {
      std::fill(dst, dst + d, 0.f);
      std::fill(dst + D, dst + D + d, 0.f);
      rope_rotate_back_add(dq, dst, rt, t);
      rope_rotate_back_add(dk, dst + D, rt, t);
    } else {
      std::copy(dq, dq + d, dst);
      std::copy(dk, dk + d, dst + D);
    }
    if (S > 0) axpy(1.f, w.dq0.data() + t * d, dst, d);
    std::copy(w.dv.data() + t * d, w.dv.data() + (t + 1) * d, dst + 2 * D);
  }
}

MG_INLINE void backward_range(const BackwardArgs& a, size_t lo, size_t hi) {
  BackwardScratch w(*a.s);
  for (size_t bh = lo; bh < hi; bh++) backward_head(a, int64_t(bh) / a.s->H, int64_t(bh) % a.s->H, w);
}

__attribute__((target("avx2,fma"))) void backward_range_avx2(const BackwardArgs& a, size_t lo, size_t hi) {
  backward_range(a, lo, hi);
}
void backward_range_generic(const BackwardArgs& a, size_t lo, size_t hi) { backward_range(a, lo, hi); }

bool use_avx2() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
}

void check_dims(const Dims& s) {
  if (s.H < 1 || s.d < 1) fail("attention: %lld heads of width %lld", (long long)s.H, (long long)s.d);
  if (s.rope && s.d % 2) fail("attention: rope needs an even head width, got d = %lld", (long long)s.d);
}

}  // namespace

void attention_forward(int64_t B, int64_t T, int64_t H, int64_t d, int64_t S, bool rope, const float* qkv,
                       const float* mem_kv, const float* gate_logits, float* out, float* lse_self, float* lse_mem,
                       float* save_a, float* save_r) {
  const Dims s{B, T, H, d, S, rope};
  check_dims(s);
  if (B == 0 || T == 0) return;
  const RopeTable rt(s);
  const ForwardArgs a{&s, &rt, qkv, mem_kv, gate_logits, out, lse_self, lse_mem, save_a, save_r};
  const size_t tasks = size_t(B * H * ((T + kQB - 1) / kQB));
  const bool avx2 = use_avx2();
  parallel_for(0, tasks, 1, [&](size_t lo, size_t hi) {
    if (avx2) forward_range_avx2(a, lo, hi);
    else forward_range_generic(a, lo, hi);
  });
}

void attention_backward(int64_t B, int64_t T, int64_t H, int64_t d, int64_t S, bool rope, const float* qkv,
                        const float* mem_kv, const float* gate_logits, const float* a_saved, const float* r_saved,
                        const float* lse_self, const float* lse_mem, const float* d_out, float* d_qkv,
                        float* d_mem_kv, float* d_gate_logits) {
  const Dims s{B, T, H, d, S, rope};
  check_dims(s);
  if (B == 0) return;
  if (T == 0) {  // the memory gets no gradient from an empty segment
    if (S) std::fill(d_mem_kv, d_mem_kv + B * S * 2 * H * d, 0.f);
    return;
  }
  const RopeTable rt(s);
  const BackwardArgs a{&s, &rt, qkv, mem_kv, gate_logits, a_saved, r_saved, lse_self, lse_mem, d_out,
                       d_qkv, d_mem_kv, d_gate_logits};
  const bool avx2 = use_avx2();
  parallel_for(0, size_t(B * H), 1, [&](size_t lo, size_t hi) {
    if (avx2) backward_range_avx2(a, lo, hi);
    else backward_range_generic(a, lo, hi);
  });
}

}  // namespace mg::cpu
