// CUDA kernels of the op family "classifier": the output head (tied logits, cross-entropy) and the copy
// mixture, computing what native/cpu/classifier.cpp computes (contract: native/common/classifier.inc).
//
// Everything is built on one float32 SIMT GEMM tile (gemm_tile below: a 128 x 128 tile of C per
// 256-thread block, 8 x 8 outputs per thread, k staged 8 at a time through double-buffered shared
// memory), with the work after the GEMM fused into the tile's epilogue:
//  - tokenNLL forward: the logits tiles hf·tok_embᵀ live only in registers; each block takes a row tile
//    and a run of vocabulary tiles and keeps an online (max, Σ exp) per row; the per-block partials are
//    combined per row in a fixed order, in double. The [rows, V] logits never exist.
//  - tokenNLL backward: each logits tile is recomputed and turned into dlogits in the epilogue, into a
//    scratch of up to 64 MiB (all rows x a vocabulary chunk); then dhf and dtok_emb are GEMMs of that
//    chunk (one launch for both), each output written by one thread and accumulated over chunks in
//    chunk order: deterministic, no atomics.
//  - the copy mixture: the causal scores cq·ckᵀ of a segment, tile by tile (tiles above the diagonal
//    are skipped), reduced to per-tile statistics (forward) or turned into dE (backward), then per-row
//    work in double exactly as the CPU does it.
// The row_chunk / vocab_chunk arguments of tokenNLL are not used here: they size the CPU's scratch
// (1024 x 1024 by default), which is far too small a grid for a GPU; this file picks its own tiling
// from the shapes alone (never from the device), so results do not depend on the GPU either.
#include <cmath>
#include <cstdint>

#include "elem.cuh"
#include "ids.cuh"
#include "kernels.h"

namespace mg::cuda {
namespace {

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// ---------------------------------------------------------------- the GEMM tile

constexpr int BM = 128, BN = 128, BK = 8;  // the C tile of a block and the k slice per step
constexpr int kGemmThreads = 256;          // 16 x 16 threads, 8 x 8 outputs each
constexpr int kPad = 4;                    // shared rows of 132 floats: conflict-free transposed stores
static_assert(BM == BN, "one loader serves both operands");
static_assert(BM * BK == 4 * kGemmThreads, "each thread stages 4 elements of each operand");

// A logical [rows, K] operand: element (i, k) at p[i·ld + k] when k_major, else p[k·ld + i]; segment s
// starts at p + s·seg_stride. vec: 16-byte loads allowed (p 16-byte aligned, ld and seg_stride
// multiples of 4).
struct Operand {
  const float* p;
  int64_t ld;
  int64_t seg_stride;
  bool k_major;
  bool vec;
};

Operand operand(const float* p, int64_t ld, int64_t seg_stride, bool k_major) {
  return Operand{p, ld, seg_stride, k_major, aligned16(p) && ld % 4 == 0 && seg_stride % 4 == 0};
}

struct GemmSmem {
  float a[2][BK][BM + kPad];  // a[buf][k][i] = A(m0 + i, k0 + k)
  float b[2][BK][BN + kPad];  // b[buf][k][j] = B(n0 + j, k0 + k)
};

// This thread's share of staging one operand's [128, BK] slices (rows [i0, i0 + 128), k [kb + 8s,
// kb + 8s + 8) at step s): 4 elements, zero outside the operand's rows and outside k < ke. K-major:
// thread t takes row t/2, k (t%2)·4 + [0, 4); else k t/32, rows (t%32)·4 + [0, 4): either way
// neighbouring threads read neighbouring addresses. The layout is a template parameter and k is kept
// as a 32-bit offset from kb (the hosts check K < 2^31), to keep registers for the accumulators.
template <bool KMAJOR>
struct Stager {
  const float* src;  // this thread's first element in the current slice
  int64_t step;      // how far src moves per slice (BK·ld; k-major moves BK)
  int k;             // its k − kb
  int rows_ok;       // k-major: 1 when the row exists; else how many of the 4 rows exist (0 to 4)
  bool vec;          // 16-byte loads: k-major, when the operand allows them; else, also all 4 rows exist
};

template <bool KMAJOR>
__device__ __forceinline__ Stager<KMAJOR> make_stager(const Operand& op, const float* base, int64_t rows, int64_t i0,
                                                      int64_t kb) {
  const int t = threadIdx.x;
  Stager<KMAJOR> s;
  s.vec = op.vec;
  if constexpr (KMAJOR) {
    const int64_t i = i0 + (t >> 1);
    s.k = (t & 1) * 4;
    s.src = base + i * op.ld + kb + s.k;  // only read when the row exists
    s.step = BK;
    s.rows_ok = i < rows ? 1 : 0;
  } else {
    const int64_t i = i0 + (t & 31) * 4;
    s.k = t >> 5;
    s.src = base + (kb + s.k) * op.ld + i;
    s.step = BK * op.ld;
    s.rows_ok = rows - i >= 4 ? 4 : rows - i <= 0 ? 0 : int(rows - i);
    s.vec = op.vec && s.rows_ok == 4;
  }
  return s;
}

// kn = ke − kb: the k offsets that exist.
template <bool KMAJOR>
__device__ __forceinline__ void stage_load(const Stager<KMAJOR>& s, int kn, float (&r)[4]) {
#pragma unroll
  for (int e = 0; e < 4; e++) r[e] = 0.f;
  if constexpr (KMAJOR) {
    if (!s.rows_ok) return;
    if (s.vec && s.k + 3 < kn) {
      const float4 v = *reinterpret_cast<const float4*>(s.src);
      r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
      return;
    }
#pragma unroll
    for (int e = 0; e < 4; e++) {
      if (s.k + e < kn) r[e] = s.src[e];
    }
  } else {
    if (s.k >= kn) return;
    if (s.vec) {
      const float4 v = *reinterpret_cast<const float4*>(s.src);
      r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
      return;
    }
#pragma unroll
    for (int e = 0; e < 4; e++) {
      if (e < s.rows_ok) r[e] = s.src[e];
    }
  }
}

template <bool KMAJOR>
__device__ __forceinline__ void stage_next(Stager<KMAJOR>& s) {
  s.src += s.step;
  s.k += BK;
}

template <bool KMAJOR>
__device__ __forceinline__ void store_slice(const float (&r)[4], float (*s)[BM + kPad]) {
  const int t = threadIdx.x;
  if constexpr (KMAJOR) {
    const int i = t >> 1, k = (t & 1) * 4;
#pragma unroll
    for (int e = 0; e < 4; e++) s[k + e][i] = r[e];
  } else {
    *reinterpret_cast<float4*>(&s[t >> 5][(t & 31) * 4]) = make_float4(r[0], r[1], r[2], r[3]);
  }
}

// Thread (tx, ty) = (t % 16, t / 16) owns rows ty·4 + [0, 4) and 64 + ty·4 + [0, 4) of the tile, and
// columns tx·4 + [0, 4) and 64 + tx·4 + [0, 4): its shared reads are float4s, broadcast for A.
__device__ __forceinline__ int tile_row(int i) { return (i >> 2) * 64 + int(threadIdx.x >> 4) * 4 + (i & 3); }
__device__ __forceinline__ int tile_col(int j) { return (j >> 2) * 64 + int(threadIdx.x & 15) * 4 + (j & 3); }

// acc[i][j] = Σ_{k ∈ [kb, ke)} A(m0 + tile_row(i), k) · B(n0 + tile_col(j), k), k in increasing order
// (so every output's rounding is fixed). A has M rows, B has N; outside them the sums are 0. A_K / B_K:
// whether A / B are k-major (must match the operands' k_major). Must be called by the whole block; it
// may be called again at once (its loop ends with a barrier).
template <bool A_K, bool B_K>
__device__ __forceinline__ void gemm_tile(const Operand& A, const float* a_base, int64_t M, const Operand& B,
                                          const float* b_base, int64_t N, int64_t m0, int64_t n0, int64_t kb,
                                          int64_t ke, GemmSmem& sm, float (&acc)[8][8]) {
#pragma unroll
  for (int i = 0; i < 8; i++) {
#pragma unroll
    for (int j = 0; j < 8; j++) acc[i][j] = 0.f;
  }
  if (ke <= kb) return;
  const int kn = int(ke - kb);
  const int steps = (kn + BK - 1) / BK;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  Stager<A_K> sa = make_stager<A_K>(A, a_base, M, m0, kb);
  Stager<B_K> sb = make_stager<B_K>(B, b_base, N, n0, kb);
  float ra[4], rb[4];
  stage_load(sa, kn, ra);
  stage_load(sb, kn, rb);
  store_slice<A_K>(ra, sm.a[0]);
  store_slice<B_K>(rb, sm.b[0]);
  __syncthreads();
  for (int step = 0; step < steps; step++) {
    const int cur = step & 1;
    const bool more = step + 1 < steps;
    if (more) {  // the next slice's global loads overlap this slice's arithmetic
      stage_next(sa);
      stage_next(sb);
      stage_load(sa, kn, ra);
      stage_load(sb, kn, rb);
    }
#pragma unroll
    for (int k = 0; k < BK; k++) {
      const float4 a0 = *reinterpret_cast<const float4*>(&sm.a[cur][k][ty * 4]);
      const float4 a1 = *reinterpret_cast<const float4*>(&sm.a[cur][k][64 + ty * 4]);
      const float4 b0 = *reinterpret_cast<const float4*>(&sm.b[cur][k][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&sm.b[cur][k][64 + tx * 4]);
      const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; i++) {
#pragma unroll
        for (int j = 0; j < 8; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
    }
    // The other buffer was last read in the previous step, which ended with a barrier.
    if (more) {
      store_slice<A_K>(ra, sm.a[cur ^ 1]);
      store_slice<B_K>(rb, sm.b[cur ^ 1]);
    }
    __syncthreads();
  }
}

// C[m0 + tile_row(i), n0 + tile_col(j)] = acc (+ C when accumulate), inside [M, N]; C row-major with
// leading dimension ldc. vec: float4 stores (C 16-byte aligned and ldc a multiple of 4).
__device__ __forceinline__ void store_tile(float* c, int64_t ldc, bool vec, bool accumulate, int64_t M, int64_t N,
                                           int64_t m0, int64_t n0, const float (&acc)[8][8]) {
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const int64_t m = m0 + tile_row(i);
    if (m >= M) continue;
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int64_t n = n0 + tile_col(4 * h);
      float* p = c + m * ldc + n;
      if (vec && n + 3 < N) {
        float4 v = make_float4(acc[i][4 * h], acc[i][4 * h + 1], acc[i][4 * h + 2], acc[i][4 * h + 3]);
        if (accumulate) {
          const float4 o = *reinterpret_cast<const float4*>(p);
          v.x += o.x, v.y += o.y, v.z += o.z, v.w += o.w;
        }
        *reinterpret_cast<float4*>(p) = v;
      } else {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          if (n + e < N) p[e] = accumulate ? acc[i][4 * h + e] + p[e] : acc[i][4 * h + e];
        }
      }
    }
  }
}

// Max and sum over the 16 threads that share a tile row (lanes with the same ty: one half-warp). The
// xor butterfly gives every lane the same bits.
__device__ __forceinline__ float row_max16(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
__device__ __forceinline__ float row_sum16(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// exp(from − to), 0 when from is −inf (also when both are: nothing was summed at `from`).
__device__ __forceinline__ float rescale(float from, float to) { return from == -INFINITY ? 0.f : expf(from - to); }

// ---------------------------------------------------------------- tokenNLL forward

// Block (split, row tile): logits of rows [m0, m0 + 128) x vocabulary tiles [t0, t1), never stored. Each
// row keeps its running max and Σ exp(logit − max) (every one of its 16 threads holds the same copy);
// the block's pair goes to part[split·rows + row]. The thread holding a row's target logit writes it to
// tlogit (one writer per row in the grid).
__global__ void __launch_bounds__(kGemmThreads, 2) nll_partial_kernel(Operand hf, Operand emb, const int32_t* targets,
                                                                  float2* part, float* tlogit, int64_t rows,
                                                                  int64_t vocab, int64_t dim, int64_t tiles_per_split,
                                                                  int64_t row_tiles) {
  __shared__ __align__(16) GemmSmem sm;
  const int64_t vocab_tiles = ceil_div(vocab, BN);
  const int64_t t0 = int64_t(blockIdx.x) * tiles_per_split, t1 = min(vocab_tiles, t0 + tiles_per_split);
  for (int64_t rt = blockIdx.y; rt < row_tiles; rt += gridDim.y) {  // block-uniform
    const int64_t m0 = rt * BM;
    float run_max[8], run_sum[8];
    int32_t target[8];  // −1 for rows past the end: no column matches
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int64_t m = m0 + tile_row(i);
      run_max[i] = -INFINITY;
      run_sum[i] = 0.f;
      target[i] = m < rows ? targets[m] : -1;
    }
    for (int64_t vt = t0; vt < t1; vt++) {
      const int64_t n0 = vt * BN;
      float acc[8][8];
      gemm_tile<true, true>(hf, hf.p, rows, emb, emb.p, vocab, m0, n0, 0, dim, sm, acc);
#pragma unroll
      for (int i = 0; i < 8; i++) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 8; j++) {
          if (n0 + tile_col(j) < vocab) mx = fmaxf(mx, acc[i][j]);
        }
        const float m_new = fmaxf(run_max[i], row_max16(mx));
        float s = 0.f;
#pragma unroll
        for (int j = 0; j < 8; j++) {
          if (n0 + tile_col(j) < vocab) s += expf(acc[i][j] - m_new);
          if (n0 + tile_col(j) == target[i]) tlogit[m0 + tile_row(i)] = acc[i][j];
        }
        run_sum[i] = run_sum[i] * rescale(run_max[i], m_new) + row_sum16(s);
        run_max[i] = m_new;
      }
    }
    if ((threadIdx.x & 15) == 0) {
#pragma unroll
      for (int i = 0; i < 8; i++) {
        const int64_t m = m0 + tile_row(i);
        if (m < rows) part[int64_t(blockIdx.x) * rows + m] = make_float2(run_max[i], run_sum[i]);
      }
    }
  }
}

// lse = max + log Σ_split sum·exp(max_split − max), in split order and in double; nll = lse − target logit.
__global__ void nll_finish_kernel(const float2* part, const float* tlogit, float* nll, float* lse, int64_t rows,
                                  int64_t splits) {
  for (int64_t r = global_thread(); r < rows; r += grid_threads()) {
    float mx = -INFINITY;
    for (int64_t s = 0; s < splits; s++) mx = fmaxf(mx, part[s * rows + r].x);
    double sum = 0;
    for (int64_t s = 0; s < splits; s++) {
      const float2 p = part[s * rows + r];
      if (p.x != -INFINITY) sum += double(p.y) * exp(double(p.x) - double(mx));
    }
    const double l = double(mx) + log(sum);
    lse[r] = float(l);
    nll[r] = float(l - double(tlogit[r]));
  }
}

// ---------------------------------------------------------------- tokenNLL backward

// dl[r, c] = coef·(softmax − onehot) for rows [r0, r0 + nr) x vocabulary [v0, v0 + nv), from the
// recomputed logits: coef·exp(logit − lse), minus coef at the target, as the CPU rounds it. One tile per
// block; dl is [nr, nv].
__global__ void __launch_bounds__(kGemmThreads, 2) dlogits_kernel(Operand hf, Operand emb, const int32_t* targets,
                                                              const float* lse, const float* coef, float* dl,
                                                              int64_t r0, int64_t nr, int64_t v0, int64_t nv,
                                                              int64_t dim) {
  __shared__ __align__(16) GemmSmem sm;
  const float* a = hf.p + r0 * hf.ld;
  const float* b = emb.p + v0 * emb.ld;
  const bool vec = nv % 4 == 0;  // dl is the 256-byte aligned scratch
  for (int64_t mt = blockIdx.y; mt < ceil_div(nr, BM); mt += gridDim.y) {  // block-uniform
    const int64_t m0 = mt * BM, n0 = int64_t(blockIdx.x) * BN;
    float acc[8][8];
    gemm_tile<true, true>(hf, a, nr, emb, b, nv, m0, n0, 0, dim, sm, acc);
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int64_t m = m0 + tile_row(i);
      if (m >= nr) continue;
      const float l = lse[r0 + m], c = coef[r0 + m];
      const int64_t y = int64_t(targets[r0 + m]) - v0;
#pragma unroll
      for (int j = 0; j < 8; j++) {
        acc[i][j] = c * expf(acc[i][j] - l);
        if (n0 + tile_col(j) == y) acc[i][j] -= c;
      }
    }
    store_tile(dl, nv, vec, false, nr, nv, m0, n0, acc);
  }
}

// One GEMM of a two-GEMM launch: C[M, N] (+)= A·Bᵀ over k ∈ [0, K), each operand read per segment.
struct GemmJob {
  Operand a, b;
  float* c;
  int64_t ldc, c_seg_stride;
  int64_t M, N, K;
  bool c_vec, accumulate;
  bool causal_a;  // copy head: A's row p only meets k ≤ p (k range ends at the tile's last row)
  bool causal_b;  // copy head: A's row q only meets k ≥ q (k range starts at the tile's first row)
  int64_t tiles_n, tiles;  // tiles along N, and in all (per segment)
};

GemmJob gemm_job(Operand a, Operand b, float* c, int64_t ldc, int64_t c_seg_stride, int64_t M, int64_t N, int64_t K,
                 bool accumulate) {
  GemmJob j{a, b, c, ldc, c_seg_stride, M, N, K, false, accumulate, false, false, ceil_div(N, BN), 0};
  j.c_vec = aligned16(c) && ldc % 4 == 0 && c_seg_stride % 4 == 0;
  j.tiles = ceil_div(M, BM) * j.tiles_n;
  return j;
}

// The tiles of one job, for every segment. A_K: whether A is k-major (B is not, in both jobs here).
template <bool A_K>
__device__ __forceinline__ void run_job(GemmJob g, int64_t tile, int64_t segments, GemmSmem& sm) {
  const int64_t m0 = (tile / g.tiles_n) * BM, n0 = (tile % g.tiles_n) * BN;
  const int64_t kb = g.causal_b ? m0 : 0;
  const int64_t ke = g.causal_a ? min(g.K, m0 + BM) : g.K;
  for (int64_t s = blockIdx.y; s < segments; s += gridDim.y) {  // block-uniform
    float acc[8][8];
    gemm_tile<A_K, false>(g.a, g.a.p + s * g.a.seg_stride, g.M, g.b, g.b.p + s * g.b.seg_stride, g.N, m0, n0, kb, ke,
                          sm, acc);
    store_tile(g.c + s * g.c_seg_stride, g.ldc, g.c_vec, g.accumulate, g.M, g.N, m0, n0, acc);
  }
}

// Blocks [0, first.tiles) compute the tiles of `first` (A k-major), the next second.tiles blocks those of
// `second` (A m-major); both have an m-major B. Their outputs are independent: they run side by side to
// fill the GPU. blockIdx.y walks the segments.
__global__ void __launch_bounds__(kGemmThreads, 2) two_gemms_kernel(GemmJob first, GemmJob second, int64_t segments) {
  __shared__ __align__(16) GemmSmem sm;
  if (int64_t(blockIdx.x) < first.tiles) run_job<true>(first, blockIdx.x, segments, sm);
  else run_job<false>(second, int64_t(blockIdx.x) - first.tiles, segments, sm);
}

void launch_two_gemms(const GemmJob& first, const GemmJob& second, int64_t segments, const char* op) {
  const int64_t blocks = first.tiles + second.tiles;
  if (blocks == 0 || segments == 0) return;
  MG_CHECK(first.a.k_major && !first.b.k_major && !second.a.k_major && !second.b.k_major,
           "%s: GEMM operand layouts not supported", op);
  MG_CHECK(first.K < INT32_MAX && second.K < INT32_MAX, "%s: reduction of %lld is too long", op,
           (long long)std::max(first.K, second.K));
  MG_CHECK(blocks <= INT32_MAX, "%s: %lld tiles is too many", op, (long long)blocks);
  dim3 grid(unsigned(blocks), unsigned(std::min<int64_t>(segments, 65535)));
  two_gemms_kernel<<<grid, kGemmThreads, 0, stream()>>>(first, second, segments);
  check_launch(op);
}

// ---------------------------------------------------------------- copy mixture

// Tile (rt, kt) of the causal scores of a segment, kt ≤ rt (blockIdx.x = rt·tiles + kt; blocks above the
// diagonal return at once). blockIdx.y walks the segments.
struct CausalTile {
  int64_t rt, kt;
  bool skip;
};
__device__ __forceinline__ CausalTile causal_tile(int64_t tiles) {
  const int64_t rt = int64_t(blockIdx.x) / tiles, kt = int64_t(blockIdx.x) % tiles;
  return CausalTile{rt, kt, kt > rt};
}

// Per row p and key tile kt: (max, Σ exp(e − max)) over the key positions q ≤ p of the tile, and the
// same over those with inputs[q] = targets[p] (−inf, 0 when none), e = (cq·ck)[p, q]·scale rounded to
// float as on the CPU. part [rows, tiles] float4.
__global__ void __launch_bounds__(kGemmThreads, 2) copy_stats_kernel(Operand cq, Operand ck, const int32_t* inputs,
                                                                 const int32_t* targets, float4* part, int64_t batch,
                                                                 int64_t len, int64_t dim, float scale) {
  __shared__ __align__(16) GemmSmem sm;
  const int64_t tiles = ceil_div(len, BM);
  const CausalTile ct = causal_tile(tiles);
  if (ct.skip) return;
  const int64_t m0 = ct.rt * BM, n0 = ct.kt * BN;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {  // block-uniform
    const int64_t base = b * len;
    float acc[8][8];
    gemm_tile<true, true>(cq, cq.p + base * cq.ld, len, ck, ck.p + base * ck.ld, len, m0, n0, 0, dim, sm, acc);
    int32_t key[8];
#pragma unroll
    for (int j = 0; j < 8; j++) {
      const int64_t q = n0 + tile_col(j);
      key[j] = q < len ? inputs[base + q] : 0;
    }
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int64_t p = m0 + tile_row(i);
      const int32_t y = p < len ? targets[base + p] : 0;
      float mx = -INFINITY, mx_match = -INFINITY;
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const int64_t q = n0 + tile_col(j);
        acc[i][j] = __fmul_rn(acc[i][j], scale);
        if (q <= p && q < len) {
          mx = fmaxf(mx, acc[i][j]);
          if (key[j] == y) mx_match = fmaxf(mx_match, acc[i][j]);
        }
      }
      mx = row_max16(mx);
      mx_match = row_max16(mx_match);
      float s = 0.f, s_match = 0.f;
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const int64_t q = n0 + tile_col(j);
        if (q <= p && q < len) {
          s += expf(acc[i][j] - mx);
          if (key[j] == y) s_match += expf(acc[i][j] - mx_match);
        }
      }
      s = row_sum16(s);
      s_match = row_sum16(s_match);
      if ((threadIdx.x & 15) == 0 && p < len) part[(base + p) * tiles + ct.kt] = make_float4(mx, s, mx_match, s_match);
    }
  }
}

__device__ __forceinline__ double log_sigmoid(double x) { return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)); }
__device__ __forceinline__ double sigmoid(double x) { return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)); }

// Σ_t s_t·exp(m_t − M) over partials with finite m_t, in tile order; M = max m_t. (−inf, 0) when none.
struct LogSum {
  float max;
  double sum;
};

// Per row: the tile statistics combined in tile order (double), then the mixture exactly as the CPU.
__global__ void copy_finish_kernel(const float4* part, const float* gen_logit, float* nll, float* stats, int64_t rows,
                                   int64_t len) {
  const int64_t tiles = ceil_div(len, BM);
  for (int64_t r = global_thread(); r < rows; r += grid_threads()) {
    const int64_t p = r % len, last = p / BM;  // key tiles 0 .. last hold positions q ≤ p
    const float4* pr = part + r * tiles;
    LogSum all{-INFINITY, 0.0}, match{-INFINITY, 0.0};
    for (int64_t t = 0; t <= last; t++) {
      all.max = fmaxf(all.max, pr[t].x);
      match.max = fmaxf(match.max, pr[t].z);
    }
    for (int64_t t = 0; t <= last; t++) {
      const float4 v = pr[t];
      if (v.x != -INFINITY) all.sum += double(v.y) * exp(double(v.x) - double(all.max));
      if (v.z != -INFINITY) match.sum += double(v.w) * exp(double(v.z) - double(match.max));
    }
    const double lse_all = double(all.max) + log(all.sum);
    const double g = gen_logit[r];
    const double gen_term = log_sigmoid(g) - double(nll[r]);
    double log_p = gen_term, w = 1;
    double lse_match = -INFINITY;
    if (match.max > -INFINITY) {
      lse_match = double(match.max) + log(match.sum);
      const double copy_term = log_sigmoid(-g) + lse_match - lse_all;
      const double top = fmax(gen_term, copy_term);
      log_p = top + log(exp(gen_term - top) + exp(copy_term - top));
      w = exp(gen_term - log_p);
    }
    nll[r] = float(-log_p);
    stats[3 * r] = float(w);
    stats[3 * r + 1] = float(lse_all);
    stats[3 * r + 2] = float(lse_match);
  }
}

// coef = dnll·w and dgen = dnll·(σ(gen) − w), per row.
__global__ void copy_coef_kernel(const float* gen_logit, const float* stats, const float* dnll, float* coef,
                                 float* dgen, int64_t rows) {
  for (int64_t r = global_thread(); r < rows; r += grid_threads()) {
    const double w = stats[3 * r], go = dnll[r];
    coef[r] = float(go * w);
    dgen[r] = float(go * (sigmoid(gen_logit[r]) - w));
  }
}

// dE[p, q]·scale for segments [b0, b0 + count) into de [count, len, len]: (1 − w)·dnll·(β − q_match)·scale
// for q ≤ p (in double from the recomputed scores, as the CPU), 0 above the diagonal inside the diagonal
// tiles. Tiles wholly above the diagonal are neither computed nor written: nothing reads them.
__global__ void __launch_bounds__(kGemmThreads, 2) copy_de_kernel(Operand cq, Operand ck, const int32_t* inputs,
                                                              const int32_t* targets, const float* stats,
                                                              const float* dnll, float* de, int64_t b0, int64_t count,
                                                              int64_t len, int64_t dim, float scale) {
  __shared__ __align__(16) GemmSmem sm;
  const int64_t tiles = ceil_div(len, BM);
  const CausalTile ct = causal_tile(tiles);
  if (ct.skip) return;
  const int64_t m0 = ct.rt * BM, n0 = ct.kt * BN;
  const bool vec = len % 4 == 0;  // de is the 256-byte aligned scratch
  for (int64_t bl = blockIdx.y; bl < count; bl += gridDim.y) {  // block-uniform
    const int64_t base = (b0 + bl) * len;
    float acc[8][8];
    gemm_tile<true, true>(cq, cq.p + base * cq.ld, len, ck, ck.p + base * ck.ld, len, m0, n0, 0, dim, sm, acc);
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int64_t p = m0 + tile_row(i);
      if (p >= len) continue;
      const int64_t r = base + p;
      const double w = stats[3 * r], lse_all = stats[3 * r + 1], lse_match = stats[3 * r + 2];
      const double copy_weight = double(dnll[r]) * (1 - w);
      const int32_t y = targets[r];
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const int64_t q = n0 + tile_col(j);
        double d = 0;
        if (q <= p && copy_weight != 0) {
          const double s = __fmul_rn(acc[i][j], scale);  // as rounded in the forward
          const double qm = inputs[base + q] == y ? exp(s - lse_match) : 0;
          d = copy_weight * (exp(s - lse_all) - qm) * double(scale);
        }
        acc[i][j] = float(d);
      }
    }
    store_tile(de + bl * len * len, len, vec, false, len, len, m0, n0, acc);
  }
}

// The most floats of GEMM-fed scratch (dlogits, dE) kept at once: 64 MiB.
constexpr int64_t kScratchFloats = int64_t(1) << 24;

// Fails with the CPU's message when an id of `what` ("input", "target") lies outside [0, vocab); waits for the
// stream, so nothing is written first.
void require_in_vocab(const int32_t* ids, int64_t rows, int64_t vocab, const char* what, const char* op) {
  int32_t bad = 0;
  const int64_t at = first_bad_id(ids, rows, vocab, &bad, op);
  if (at >= 0) {
    fail("tokenNLL: %s id %d at flat position %lld is outside the vocabulary [0, %lld)", what, int(bad), (long long)at,
         (long long)vocab);
  }
}

}  // namespace

// ---------------------------------------------------------------- logits + cross-entropy

void token_nll_forward(const float* hf, const float* tok_emb, const int32_t* targets, float* nll, float* lse,
                       int64_t rows, int64_t vocab, int64_t dim, int64_t row_chunk, int64_t vocab_chunk) {
  require_in_vocab(targets, rows, vocab, "target", "tokenNLL");
  if (rows == 0) return;
  MG_CHECK(dim < INT32_MAX, "tokenNLL: the width %lld is too large", (long long)dim);
  cudaStream_t s = stream();
  // Splits of the vocabulary: enough (row tile, split) blocks to fill a large GPU several times over
  // (about 1024), each split a run of whole vocabulary tiles. From the shapes only.
  const int64_t row_tiles = ceil_div(rows, BM), vocab_tiles = ceil_div(vocab, BN);
  int64_t splits = std::clamp<int64_t>(ceil_div(1024, row_tiles), 1, vocab_tiles);
  const int64_t per_split = ceil_div(vocab_tiles, splits);
  splits = ceil_div(vocab_tiles, per_split);  // no empty split
  // Scratch: the partials [splits, rows] float2, then the target logits [rows].
  const size_t part_bytes = (size_t(splits * rows) * sizeof(float2) + 255) & ~size_t(255);
  char* scratch = static_cast<char*>(reduction_scratch(part_bytes + size_t(rows) * sizeof(float)));
  float2* part = reinterpret_cast<float2*>(scratch);
  float* tlogit = reinterpret_cast<float*>(scratch + part_bytes);
  const Operand a = operand(hf, dim, 0, true), b = operand(tok_emb, dim, 0, true);
  MG_CHECK(splits <= INT32_MAX, "tokenNLL: %lld vocabulary splits is too many", (long long)splits);
  dim3 grid(unsigned(splits), unsigned(std::min<int64_t>(row_tiles, 65535)));
  nll_partial_kernel<<<grid, kGemmThreads, 0, s>>>(a, b, targets, part, tlogit, rows, vocab, dim, per_split,
                                                   row_tiles);
  check_launch("tokenNLL");
  nll_finish_kernel<<<blocks_for(rows), kThreads, 0, s>>>(part, tlogit, nll, lse, rows, splits);
  check_launch("tokenNLL");
}

void token_nll_backward(const float* hf, const float* tok_emb, const int32_t* targets, const float* lse,
                        const float* coef, float* dhf, float* dtok_emb, int64_t rows, int64_t vocab, int64_t dim,
                        int64_t row_chunk, int64_t vocab_chunk) {
  require_in_vocab(targets, rows, vocab, "target", "tokenNLL backward");
  cudaStream_t s = stream();
  if (rows == 0) {
    if (vocab * dim > 0) {
      check(cudaMemsetAsync(dtok_emb, 0, size_t(vocab * dim) * sizeof(float), s), "tokenNLL backward");
    }
    return;
  }
  if (dim == 0) return;  // dhf and dtok_emb are empty
  MG_CHECK(dim < INT32_MAX, "tokenNLL backward: the width %lld is too large", (long long)dim);
  // dlogits chunks of all rows (up to 8192) x as many vocabulary entries as 64 MiB hold (whole tiles).
  // Each chunk then feeds two GEMMs in one launch: dhf[rows] += dl·tok_emb[chunk] and
  // dtok_emb[chunk] (+)= dlᵀ·hf[rows]; both grids have (chunk or rows)/128 x dim/128 tiles.
  const int64_t rc = std::min<int64_t>(rows, 8192);
  const int64_t vc = std::min<int64_t>(vocab, std::max<int64_t>(BN, kScratchFloats / rc / BN * BN));
  float* dl = static_cast<float*>(reduction_scratch(size_t(rc * vc) * sizeof(float)));
  const Operand hf_k = operand(hf, dim, 0, true), emb_k = operand(tok_emb, dim, 0, true);
  for (int64_t r0 = 0; r0 < rows; r0 += rc) {
    const int64_t nr = std::min(rc, rows - r0);
    for (int64_t v0 = 0; v0 < vocab; v0 += vc) {
      const int64_t nv = std::min(vc, vocab - v0);
      MG_CHECK(ceil_div(nv, BN) <= INT32_MAX, "tokenNLL backward: vocabulary chunk too large");
      dim3 grid(unsigned(ceil_div(nv, BN)), unsigned(std::min<int64_t>(ceil_div(nr, BM), 65535)));
      dlogits_kernel<<<grid, kGemmThreads, 0, s>>>(hf_k, emb_k, targets, lse, coef, dl, r0, nr, v0, nv, dim);
      check_launch("tokenNLL backward");
      // dhf[r0 + m, n] (+)= Σ_k dl[m, k]·tok_emb[v0 + k, n]: A = dl (k-major), B(n, k) = tok_emb[v0 + k, n].
      GemmJob to_hf = gemm_job(operand(dl, nv, 0, true), operand(tok_emb + v0 * dim, dim, 0, false), dhf + r0 * dim,
                               dim, 0, nr, dim, nv, v0 > 0);
      // dtok_emb[v0 + m, n] (+)= Σ_k dl[k, m]·hf[r0 + k, n].
      GemmJob to_emb = gemm_job(operand(dl, nv, 0, false), operand(hf + r0 * dim, dim, 0, false),
                                dtok_emb + v0 * dim, dim, 0, nv, dim, nr, r0 > 0);
      launch_two_gemms(to_hf, to_emb, 1, "tokenNLL backward");
    }
  }
}

// ---------------------------------------------------------------- copy mixture

void copy_mix_forward(const float* cq, const float* ck, const float* gen_logit, const int32_t* inputs,
                      const int32_t* targets, float* nll, float* stats, int64_t batch, int64_t len, int64_t dim,
                      int64_t vocab) {
  const int64_t rows = batch * len;
  require_in_vocab(inputs, rows, vocab, "input", "tokenNLL");
  require_in_vocab(targets, rows, vocab, "target", "tokenNLL");
  if (rows == 0) return;
  MG_CHECK(dim < INT32_MAX, "tokenNLL: the width %lld is too large", (long long)dim);
  cudaStream_t s = stream();
  const float scale = float(1.0 / std::sqrt(double(dim)));
  const int64_t tiles = ceil_div(len, BM);
  MG_CHECK(tiles * tiles <= INT32_MAX, "tokenNLL: segments of %lld positions are too long", (long long)len);
  float4* part = static_cast<float4*>(reduction_scratch(size_t(rows * tiles) * sizeof(float4)));
  const Operand q = operand(cq, dim, 0, true), k = operand(ck, dim, 0, true);
  dim3 grid(unsigned(tiles * tiles), unsigned(std::min<int64_t>(batch, 65535)));
  copy_stats_kernel<<<grid, kGemmThreads, 0, s>>>(q, k, inputs, targets, part, batch, len, dim, scale);
  check_launch("tokenNLL");
  copy_finish_kernel<<<blocks_for(rows), kThreads, 0, s>>>(part, gen_logit, nll, stats, rows, len);
  check_launch("tokenNLL");
}

void copy_mix_backward(const float* cq, const float* ck, const float* gen_logit, const int32_t* inputs,
                       const int32_t* targets, const float* stats, const float* dnll, float* coef, float* dcq,
                       float* dck, float* dgen, int64_t batch, int64_t len, int64_t dim) {
  const int64_t rows = batch * len;
  if (rows == 0) return;
  cudaStream_t s = stream();
  const float scale = float(1.0 / std::sqrt(double(dim)));
  copy_coef_kernel<<<blocks_for(rows), kThreads, 0, s>>>(gen_logit, stats, dnll, coef, dgen, rows);
  check_launch("tokenNLL backward");
  if (dim == 0) return;
  MG_CHECK(dim < INT32_MAX, "tokenNLL backward: the width %lld is too large", (long long)dim);
  const int64_t tiles = ceil_div(len, BM);
  MG_CHECK(tiles * tiles <= INT32_MAX, "tokenNLL backward: segments of %lld positions are too long", (long long)len);
  // dE [segments, len, len] for as many segments at a time as 64 MiB hold (at least one).
  const int64_t group = std::clamp<int64_t>(kScratchFloats / (len * len), 1, batch);
  float* de = static_cast<float*>(reduction_scratch(size_t(group * len * len) * sizeof(float)));
  const Operand q = operand(cq, dim, 0, true), k = operand(ck, dim, 0, true);
  for (int64_t b0 = 0; b0 < batch; b0 += group) {
    const int64_t count = std::min(group, batch - b0);
    dim3 grid(unsigned(tiles * tiles), unsigned(std::min<int64_t>(count, 65535)));
    copy_de_kernel<<<grid, kGemmThreads, 0, s>>>(q, k, inputs, targets, stats, dnll, de, b0, count, len, dim, scale);
    check_launch("tokenNLL backward");
    // dcq[p, n] = Σ_{q ≤ p} dE[p, q]·ck[q, n]; dck[q, n] = Σ_{p ≥ q} dE[p, q]·cq[p, n]; per segment.
    const int64_t seg = len * dim;
    GemmJob to_q = gemm_job(operand(de, len, len * len, true), operand(ck + b0 * seg, dim, seg, false),
                            dcq + b0 * seg, dim, seg, len, dim, len, false);
    to_q.causal_a = true;
    GemmJob to_k = gemm_job(operand(de, len, len * len, false), operand(cq + b0 * seg, dim, seg, false),
                            dck + b0 * seg, dim, seg, len, dim, len, false);
    to_k.causal_b = true;
    launch_two_gemms(to_q, to_k, count, "tokenNLL backward");
  }
}

// ---------------------------------------------------------------- decoding

// copy_mix_probs: one block of kThreads per sequence. The softmax of the logits and of the copy scores are block
// reductions in double, as the CPU sums them; the copy weights are then added into their tokens by one thread, in
// order j = 0, 1, … (a token can occur many times: atomics would make the sum's order, and so its rounding, vary).
__global__ void copy_mix_probs_kernel(const float* logits, const float* cq, const float* ck, const float* gen_logit,
                                      const int32_t* tokens, const int32_t* lengths, float* probs, double* scratch,
                                      int64_t len, int64_t dim, int64_t vocab) {
  __shared__ float red[32];
  __shared__ double dred[32];
  const int64_t b = blockIdx.x;
  const float* lg = logits + b * vocab;
  float mx = -INFINITY;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) mx = fmaxf(mx, lg[v]);
  mx = block_max(mx, red);
  double total = 0;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) total += exp(double(lg[v]) - mx);
  total = block_sum(total, dred);
  const int64_t n = gen_logit ? min(max(int64_t(lengths[b]), int64_t(0)), len) : 0;
  const double g = n > 0 ? double(gen_logit[b]) : 0.0;
  const double pgen = n > 0 ? 1.0 / (1.0 + exp(-g)) : 1.0, pcopy = n > 0 ? 1.0 / (1.0 + exp(g)) : 0.0;
  float* out = probs + b * vocab;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) out[v] = float(exp(double(lg[v]) - mx) * (pgen / total));
  if (n == 0) return;
  double* e = scratch + b * len;
  const double scale = 1.0 / sqrt(double(dim));
  double emx = -INFINITY;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float* k = ck + (b * len + j) * dim;
    const float* q = cq + b * dim;
    double dot = 0;
    for (int64_t i = 0; i < dim; i++) dot += double(q[i]) * double(k[i]);
    e[j] = dot * scale;
    emx = fmax(emx, e[j]);
  }
  emx = block_max(emx, dred);
  double etotal = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) etotal += (e[j] = exp(e[j] - emx));
  etotal = block_sum(etotal, dred);  // its barriers publish e and out
  if (threadIdx.x == 0) {
    for (int64_t j = 0; j < n; j++) {
      const int32_t y = tokens[b * len + j];
      if (y >= 0 && y < vocab) out[y] = float(double(out[y]) + pcopy * e[j] / etotal);
    }
  }
}

void copy_mix_probs(const float* logits, const float* cq, const float* ck, const float* gen_logit,
                    const int32_t* tokens, const int32_t* lengths, float* probs, int64_t batch, int64_t len,
                    int64_t dim, int64_t vocab) {
  if (batch > INT32_MAX) fail("copyMixProbs: %lld rows are more than one launch can have", (long long)batch);
  double* scratch = gen_logit ? static_cast<double*>(reduction_scratch(size_t(batch * len) * sizeof(double))) : nullptr;
  copy_mix_probs_kernel<<<unsigned(batch), kThreads, 0, stream()>>>(logits, cq, ck, gen_logit, tokens, lengths, probs,
                                                                    scratch, len, dim, vocab);
  check_launch("copyMixProbs");
}

}  // namespace mg::cuda
