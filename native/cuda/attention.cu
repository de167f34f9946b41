// CUDA kernels of the op family "attention" (native/common/attention.inc): causal self-attention with RoPE, the
// memory read and its gate, forward and backward, computing what native/cpu/attention.cpp computes.
//
// Storage is float32 or bfloat16 (the kernels are templates on the element type E); the math is float32 either way:
// bfloat16 is widened as the tiles are loaded, and each output is rounded once, as it is stored.
//
// FlashAttention-2 in float32 SIMT arithmetic. Scores exist only as one tile in shared memory and registers at a
// time, never [T, T] in device memory. Every tile kernel runs 256 threads seen as a 16 × 16 grid (ty, tx):
// a thread owns the tile rows ty + 16·i and, of a score tile, the columns tx + 16·j, of a head-width tile the
// columns tx + 16·c. So the 16 threads that share a row are one half of a warp: row max and row sum are shuffles
// within the half-warp, and every sum runs in a fixed order (deterministic, no atomics anywhere).
//
// Forward (one block per batch, head and block of 64 query rows): the online softmax over key tiles of 64, q and
// k rotated while they are loaded; then, with memory, the same pass over the S memory slots with the unrotated q
// and no mask; then the gate. It writes lse_self / lse_mem and (nullable) A and R for the backward.
// Backward: (1) a row kernel computes per (row, head) g, D_a = rowsum(dA ∘ A), D_r = rowsum(dR ∘ R) with
// dA = (1 − g)·dOut, dR = g·dOut (the gate makes them differ), and d_gate_logits; (2) a kernel over key blocks
// keeps its K, V tile in shared memory and accumulates dK, dV in registers over the query tiles, for the self
// part (causal, rope) and, launched again, for the memory slots (dmk, dmv); (3) a kernel over query blocks
// accumulates dQ in registers over the key tiles, then over the memory slots, and writes
// dq = Rᵀ·dq_self + dq_mem. Every output element has one writer: gradients are written, never accumulated.
// Decoding (attention_decode): one block per (sequence, head) reads one query row against the cached rows.
//
// The two inner products are dot_tile (S = A·Bᵀ, both operands row-major with the head width contiguous, the
// layout mma.sync m16n8k16 takes for its A and B fragments) and acc_tile (O += P·V, V row-major). For bfloat16
// with a head width that is a multiple of 16, the kernels' TC instantiation replaces them with tensor-core
// products (tc_abt, tc_acc_av: mma.sync m16n8k16, bf16 operands, fp32 accumulation; see "tensor cores" below):
// the float32 tiles, the barriers and the softmax bookkeeping around them stay; the accumulators that are only
// summed into (O, dK, dV, dQ) live in mma fragments and cross to the 16 × 16 layout through shared memory.
#include <cmath>
#include <cstdint>
#include <climits>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

#include <cuda_bf16.h>

#include "elem.cuh"
#include "kernels.h"
#include "ptx/sm80.cuh"

namespace mg::cuda {
namespace {

constexpr int kBlock = 256;   // threads of every tile kernel: the 16 × 16 grid above
static_assert(kBlock == 16 * 16, "the tile kernels map threadIdx.x to (ty, tx) = (x / 16, x % 16)");
constexpr int kMaxHeadDim = 128;

// Tile sizes. The forward holds Q, one K-or-V tile and P: 83 KB of shared memory at a head width of 128.
// The backward kernels hold four [rows, head width] tiles, so at a head width of 128 they use 32-row tiles to
// stay under the 99 KB a block may have on sm_86 / sm_89 (the sm_80 code runs there too).
constexpr int kFwdQ = 64;  // query rows per forward block
constexpr int kFwdK = 64;  // keys per forward tile
template <int DM> struct BwdTiles {
  static constexpr int kRows = DM <= 64 ? 64 : 32;  // resident rows: keys (dK/dV kernel) or queries (dQ kernel)
  static constexpr int kCols = 32;                   // streamed rows: queries (dK/dV) or keys (dQ)
};

__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// E is the storage type of the op's tensors (float for float32, uint16_t for bfloat16); the logsumexps, the RoPE
// table and the backward's row scratch are float32 whatever E is.
template <typename E>
struct FwdParams {
  int64_t T, H, d, S, D;
  float scale;
  bool joint;          // SPEC v2's gate: σ(logit + lse_mem − lse_self)
  bool mem_positions;  // SPEC v2 with rope: the slots read by the query rotated at p + S, slot j rotated at j
  const E* qkv;
  const E* mem_kv;
  const E* gate_logits;
  const float* cos_t;  // RoPE table [T (+ S with mem_positions), d/2]; nullptr without rope
  const float* sin_t;
  E* out;
  float* lse_self;
  float* lse_mem;
  E* save_a;
  E* save_r;
};

template <typename E>
struct BwdParams {
  int64_t T, H, d, S, D;
  float scale;
  bool mem_positions;  // as FwdParams (the joint gate is all in the row kernel: it folds into dsum_a / dsum_r)
  const E* qkv;
  const E* mem_kv;
  const float* lse_self;
  const float* lse_mem;
  const E* d_out;
  const float* cos_t;   // RoPE table [T (+ S with mem_positions), d/2]; nullptr without rope
  const float* sin_t;
  const float* dsum_a;  // [B, H, T]: rowsum(dA ∘ A), less d lse_self with the joint gate
  const float* dsum_r;  // [B, H, T]: rowsum(dR ∘ R), less d lse_mem with the joint gate; with memory only
  const float* g;       // [B, H, T]: sigmoid(gate_logits); with memory only (nullptr: dA = dOut)
  E* d_qkv;
  E* d_mem_kv;
};

// The CPU's gate, in double: σ(x) = 1 / (1 + e^−x), rounded once.
__device__ __forceinline__ float sigmoid_ref(float x) { return float(1.0 / (1.0 + exp(-double(x)))); }

__device__ __forceinline__ float half_warp_max(float v) {
  for (int offset = 8; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

__device__ __forceinline__ float half_warp_sum(float v) {
  for (int offset = 8; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// dst[r·(DM+1) + c] for r < ROWS, c < DM: row r of src (src + r·ld, columns 0 … d−1; float32 or bfloat16, widened
// here), zero where r ≥ n or c ≥ d,
// so the fixed-width loops below may run over the padding. With a RoPE table, row r is rotated at position
// pos0 + r (rotate-half, as the CPU's rope_rotate). With g (indexed by row), the row is scaled by 1 − g[r]
// (complement) or g[r]: dA and dR made from dOut on the fly. The odd stride DM + 1 keeps the column reads of
// dot_tile free of bank conflicts.
template <int DM, int ROWS, typename E>
__device__ __forceinline__ void load_tile(float* dst, const E* src, int64_t ld, int n, int d, const float* cos_t,
                                          const float* sin_t, int64_t pos0, const float* g, bool complement) {
  const int half = d >> 1;
  for (int idx = threadIdx.x; idx < ROWS * DM; idx += kBlock) {
    const int r = idx / DM, c = idx % DM;
    float v = 0.f;
    if (r < n && c < d) {
      const E* row = src + r * ld;
      if (cos_t) {
        const int i = c < half ? c : c - half;
        const int64_t at = (pos0 + r) * half + i;
        const float cs = cos_t[at], sn = sin_t[at];
        const float a = load(row + i), b = load(row + i + half);
        v = c < half ? a * cs - b * sn : a * sn + b * cs;
      } else {
        v = load(row + c);
      }
      if (g) v = (complement ? 1.f - g[r] : g[r]) * v;
    }
    dst[r * (DM + 1) + c] = v;
  }
}

// s[i][j] = Σ_c A[ty + 16i][c] · B[tx + 16j][c] over the padded width (both tiles of stride DM + 1): a
// [16·RI, 16·CJ] block of A·Bᵀ. Within a warp, A is read at two addresses (broadcast) and B at 16 rows whose
// odd stride puts them in 16 different banks. (The mma.sync replacement point: A and B are K-contiguous.)
template <int DM, int RI, int CJ>
__device__ __forceinline__ void dot_tile(float (&s)[RI][CJ], const float* A, const float* B) {
  const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
#pragma unroll
  for (int i = 0; i < RI; i++)
#pragma unroll
    for (int j = 0; j < CJ; j++) s[i][j] = 0.f;
#pragma unroll 8
  for (int c = 0; c < DM; c++) {
    float a[RI], b[CJ];
#pragma unroll
    for (int i = 0; i < RI; i++) a[i] = A[(ty + 16 * i) * (DM + 1) + c];
#pragma unroll
    for (int j = 0; j < CJ; j++) b[j] = B[(tx + 16 * j) * (DM + 1) + c];
#pragma unroll
    for (int i = 0; i < RI; i++)
#pragma unroll
      for (int j = 0; j < CJ; j++) s[i][j] = fmaf(a[i], b[j], s[i][j]);
  }
}

// acc[i][c] += Σ_{k < n} P[ty + 16i][k] · V[k][tx + 16c] (P of stride PLD, V of stride DM + 1), k in order:
// P·V, or Pᵀ·dY and dSᵀ·Q in the backward. P is broadcast, V read contiguously.
template <int DM, int RI, int PLD>
__device__ __forceinline__ void acc_tile(float (&acc)[RI][DM / 16], const float* P, const float* V, int n) {
  const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
#pragma unroll 4
  for (int k = 0; k < n; k++) {
    float p[RI];
#pragma unroll
    for (int i = 0; i < RI; i++) p[i] = P[(ty + 16 * i) * PLD + k];
#pragma unroll
    for (int c = 0; c < DM / 16; c++) {
      const float v = V[k * (DM + 1) + tx + 16 * c];
#pragma unroll
      for (int i = 0; i < RI; i++) acc[i][c] = fmaf(p[i], v, acc[i][c]);
    }
  }
}

// dst[r·ld + col] = acc (rounded to E) for the rows r < n and columns col < d this thread owns.
template <int DM, int RI, typename E>
__device__ __forceinline__ void store_rows(E* dst, int64_t ld, const float (&acc)[RI][DM / 16], int n, int d) {
  const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
#pragma unroll
  for (int i = 0; i < RI; i++) {
    const int r = ty + 16 * i;
    if (r >= n) continue;
#pragma unroll
    for (int c = 0; c < DM / 16; c++) {
      const int col = tx + 16 * c;
      if (col < d) store(dst + r * ld + col, acc[i][c]);
    }
  }
}

// acc ← Rᵀ·acc per row (row r at position pos0 + r, r < n): the gradient through the rotation, as the CPU's
// rope_rotate_back_add. Column i pairs with i + d/2, which another thread may own, so the rows go through buf
// ([16·RI, DM + 1] floats of shared memory, free on entry).
template <int DM, int RI>
__device__ __forceinline__ void rotate_back(float (&acc)[RI][DM / 16], float* buf, int64_t pos0, int n, int d,
                                            const float* cos_t, const float* sin_t) {
  const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15, half = d >> 1;
  __syncthreads();  // buf's earlier readers are done
#pragma unroll
  for (int i = 0; i < RI; i++)
#pragma unroll
    for (int c = 0; c < DM / 16; c++) buf[(ty + 16 * i) * (DM + 1) + tx + 16 * c] = acc[i][c];
  __syncthreads();
#pragma unroll
  for (int i = 0; i < RI; i++) {
    const int r = ty + 16 * i;
    if (r >= n) continue;
    const float* row = buf + r * (DM + 1);
#pragma unroll
    for (int c = 0; c < DM / 16; c++) {
      const int col = tx + 16 * c;
      if (col >= d) continue;
      const int k = col < half ? col : col - half;
      const int64_t at = (pos0 + r) * half + k;
      const float cs = cos_t[at], sn = sin_t[at];
      acc[i][c] = col < half ? row[col] * cs + row[col + half] * sn : row[col] * cs - row[k] * sn;
    }
  }
}

// ---------------------------------------------------------------- tensor cores (bfloat16, d % 16 == 0)
//
// The bf16 instantiation replaces dot_tile and acc_tile with mma.sync.m16n8k16 (bf16 operands, fp32
// accumulation) where the head width is a multiple of 16; everything else — the float32 tiles in shared memory,
// the 16 × 16 thread layout of the softmax bookkeeping, the barriers — stays. Operand fragments are read from the
// float32 tiles and converted as they are loaded (cvt.rn.bf16x2.f32: round to nearest even). Fragment layouts
// (PTX ISA, mma.m16n8k16 .bf16), with g = lane / 4 and t = lane % 4:
//   A (16 × 16, row-major): a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..2t+1), a[2] = (g, 2t+8..2t+9),
//                           a[3] = (g+8, 2t+8..2t+9), the lower column in the low half of each register;
//   B (16 × 8, k × n):      b[0] = (k 2t..2t+1, n g), b[1] = (k 2t+8..2t+9, n g), the lower k in the low half;
//   C (16 × 8, fp32):       c[0..1] = (g, 2t..2t+1), c[2..3] = (g+8, 2t..2t+1).
// The eight warps split an [R, C] result as R/16 row blocks × 128/R column groups: warp w takes rows
// 16·(w % (R/16)) + 0..15 and a run of C·R/128 columns (n tiles of 8), so no two warps write one element and each
// element's sum runs over k in a fixed order (deterministic; no atomics).
//
// Precision. A value that is already bf16 (q, k, v, dOut and the memory as stored) is exact as an operand. One
// that is not — q and k after RoPE, dY = (1 − g)·dOut or g·dOut, P, dS — is split into hi = bf16(x) and
// lo = bf16(x − hi) (x − hi is exact in fp32), and the product sums hi·hi + hi·lo + lo·hi: about 2^-17 relative
// per operand, so the bf16 path keeps the float32 path's accuracy (its outputs are within the bf16 rounding they
// get once). FlashAttention-2 instead rounds P (and dS) to bf16 for the P·V (dS·K) products; that is standard,
// and it is what kRoundP = true does for P. Simulated on the tests' shapes it gives the output about 1.3× and the
// gate gradient up to 2× the error of a naive bf16 computation (the tests' bar is 2×), hence false.
constexpr bool kRoundP = false;

// Two floats as a bf16x2 register, lo in the low half (round to nearest even, as f32_to_bf16).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return uint32_t(__bfloat16_as_ushort(v.x)) | (uint32_t(__bfloat16_as_ushort(v.y)) << 16);
}

// The hi and (when split) lo parts of the pair (x0, x1): hi = bf16(x), lo = bf16(x − hi).
__device__ __forceinline__ void split_bf16(float x0, float x1, bool split, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
  hi = uint32_t(__bfloat16_as_ushort(h.x)) | (uint32_t(__bfloat16_as_ushort(h.y)) << 16);
  lo = split ? pack_bf16(x0 - __low2float(h), x1 - __high2float(h)) : 0u;
}

// c += a·b for one m16n8k16 tile.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  ptx::mma_bf16(c, a, b[0], b[1]);
}

// c += a·b with the split parts: hi·hi, then hi·lo and lo·hi where an operand is split (lo·lo is below them).
__device__ __forceinline__ void mma_split(float (&c)[4], const uint32_t (&a_hi)[4], const uint32_t (&a_lo)[4],
                                          bool a_split, const uint32_t (&b_hi)[2], const uint32_t (&b_lo)[2],
                                          bool b_split) {
  mma_bf16(c, a_hi, b_hi);
  if (b_split) mma_bf16(c, a_hi, b_lo);
  if (a_split) mma_bf16(c, a_lo, b_hi);
}

// The A fragment at rows r0.., columns k0.. of a row-major float tile of stride ld.
__device__ __forceinline__ void load_a(uint32_t (&hi)[4], uint32_t (&lo)[4], const float* A, int ld, int r0, int k0,
                                       bool split) {
  const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
  const float* p0 = A + (r0 + g) * ld + k0 + 2 * t;
  const float* p1 = p0 + 8 * ld;
  split_bf16(p0[0], p0[1], split, hi[0], lo[0]);
  split_bf16(p1[0], p1[1], split, hi[1], lo[1]);
  split_bf16(p0[8], p0[9], split, hi[2], lo[2]);
  split_bf16(p1[8], p1[9], split, hi[3], lo[3]);
}

// The B fragment for A·Bᵀ: B's rows n0.. are the n index, its columns k0.. the k index (B row-major, stride ld).
__device__ __forceinline__ void load_b_nk(uint32_t (&hi)[2], uint32_t (&lo)[2], const float* B, int ld, int n0,
                                          int k0, bool split) {
  const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
  const float* p = B + (n0 + g) * ld + k0 + 2 * t;
  split_bf16(p[0], p[1], split, hi[0], lo[0]);
  split_bf16(p[8], p[9], split, hi[1], lo[1]);
}

// The B fragment for A·V: V's rows k0.. are the k index, its columns n0.. the n index (V row-major, stride ld).
__device__ __forceinline__ void load_b_kn(uint32_t (&hi)[2], uint32_t (&lo)[2], const float* V, int ld, int k0,
                                          int n0, bool split) {
  const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
  const float* p = V + (k0 + 2 * t) * ld + n0 + g;
  split_bf16(p[0], p[ld], split, hi[0], lo[0]);
  split_bf16(p[8 * ld], p[9 * ld], split, hi[1], lo[1]);
}

// This warp's part of an [R, C] result in the split described above.
template <int R, int C>
struct WarpTile {
  static_assert(R == 32 || R == 64, "16-row blocks that divide the eight warps");
  static constexpr int kRowBlocks = R / 16, kColGroups = kBlock / 32 / kRowBlocks, kCols = C / kColGroups;
  static constexpr int kTiles = kCols / 8;  // n tiles of 8 columns
  static_assert(kCols % 8 == 0 && kTiles >= 1, "whole n tiles per warp");
  __device__ static int row0() { return 16 * ((threadIdx.x >> 5) % kRowBlocks); }
  __device__ static int col0() { return kCols * ((threadIdx.x >> 5) / kRowBlocks); }
};

// An [R, C] float accumulator held in mma C fragments (this warp's WarpTile part): the tensor-core counterpart of
// the 16 × 16 layout's acc arrays. It crosses to that layout through shared memory (store), after a barrier.
template <int R, int C>
struct FragAcc {
  using W = WarpTile<R, C>;
  float c[W::kTiles][4];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int nt = 0; nt < W::kTiles; nt++) c[nt][0] = c[nt][1] = c[nt][2] = c[nt][3] = 0.f;
  }
  // Row r scaled by f[r] (shared memory).
  __device__ __forceinline__ void scale_rows(const float* f) {
    const int g = (threadIdx.x & 31) >> 2;
    const float f0 = f[W::row0() + g], f1 = f[W::row0() + g + 8];
#pragma unroll
    for (int nt = 0; nt < W::kTiles; nt++) {
      c[nt][0] *= f0;
      c[nt][1] *= f0;
      c[nt][2] *= f1;
      c[nt][3] *= f1;
    }
  }
  // buf[r·ld + col] = the accumulator, every element of [R, C].
  __device__ __forceinline__ void store(float* buf, int ld) const {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const int r = W::row0() + g;
#pragma unroll
    for (int nt = 0; nt < W::kTiles; nt++) {
      const int col = W::col0() + 8 * nt + 2 * t;
      buf[r * ld + col] = c[nt][0];
      buf[r * ld + col + 1] = c[nt][1];
      buf[(r + 8) * ld + col] = c[nt][2];
      buf[(r + 8) * ld + col + 1] = c[nt][3];
    }
  }
};

// out[r·out_ld + c] = Σ_{k < kd} A[r][k]·B[c][k] for r < R, c < C (A: [R, ≥ kd], B: [C, ≥ kd], both row-major of
// stride ld): the tensor-core dot_tile, written to shared memory (every element; the n tiles at or past n_cols,
// whose B rows are the tile's zero padding, are skipped and written as 0). kd is the head width, a multiple of
// 16. The caller puts a barrier between this and the reads of out, and before it if out had readers.
template <int R, int C>
__device__ __forceinline__ void tc_abt(float* out, int out_ld, const float* A, bool a_split, const float* B,
                                       bool b_split, int ld, int kd, int n_cols) {
  using W = WarpTile<R, C>;
  FragAcc<R, C> acc;
  acc.zero();
  const int r0 = W::row0(), c0 = W::col0();
  for (int k0 = 0; k0 < kd; k0 += 16) {
    uint32_t a_hi[4], a_lo[4];
    load_a(a_hi, a_lo, A, ld, r0, k0, a_split);
#pragma unroll
    for (int nt = 0; nt < W::kTiles; nt++) {
      const int n0 = c0 + 8 * nt;
      if (n0 >= n_cols) break;  // uniform within the warp, as mma.sync needs
      uint32_t b_hi[2], b_lo[2];
      load_b_nk(b_hi, b_lo, B, ld, n0, k0, b_split);
      mma_split(acc.c[nt], a_hi, a_lo, a_split, b_hi, b_lo, b_split);
    }
  }
  acc.store(out, out_ld);
}

// acc += Σ_{k < nk} P[r][k]·V[k][c] (P: [R, ≥ nk] of stride pld, V: [≥ nk, C] of stride vld), the tensor-core
// acc_tile. k runs in steps of 16 up to nk rounded up: P's columns and V's rows past nk must be zero there (the
// masks write P = 0, load_tile zero-fills V's rows). The n tiles at or past n_cols (the head width; columns the
// store never writes) are skipped.
template <int R, int C>
__device__ __forceinline__ void tc_acc_av(FragAcc<R, C>& acc, const float* P, int pld, bool p_split, const float* V,
                                          int vld, bool v_split, int nk, int n_cols) {
  using W = WarpTile<R, C>;
  const int r0 = W::row0(), c0 = W::col0();
  for (int k0 = 0; k0 < nk; k0 += 16) {
    uint32_t a_hi[4], a_lo[4];
    load_a(a_hi, a_lo, P, pld, r0, k0, p_split);
#pragma unroll
    for (int nt = 0; nt < W::kTiles; nt++) {
      const int n0 = c0 + 8 * nt;
      if (n0 >= n_cols) break;
      uint32_t b_hi[2], b_lo[2];
      load_b_kn(b_hi, b_lo, V, vld, k0, n0, v_split);
      mma_split(acc.c[nt], a_hi, a_lo, p_split, b_hi, b_lo, v_split);
    }
  }
}

// ---------------------------------------------------------------- forward

// One key tile of the online softmax, for the rows this thread owns: masks s (query p sees keys j ≤ p when causal,
// keys j < n of the tile at k0), scales it, and turns it into the numerators exp(s − m_new); updates the row
// maxima m and sums l, and gives each row's factor corr = exp(m_old − m_new) by which its output must be scaled.
template <int RI, int CJ>
__device__ __forceinline__ void softmax_tile(float (&s)[RI][CJ], float (&m)[RI], float (&l)[RI], float (&corr)[RI],
                                             int n, bool causal, int64_t k0, int64_t q0, float scale) {
  const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
#pragma unroll
  for (int i = 0; i < RI; i++) {
    const int64_t qpos = q0 + ty + 16 * i;
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < CJ; j++) {
      const int kj = tx + 16 * j;
      const bool ok = kj < n && (!causal || k0 + kj <= qpos);
      s[i][j] = ok ? s[i][j] * scale : -INFINITY;
      mx = fmaxf(mx, s[i][j]);
    }
    mx = half_warp_max(mx);
    const float m_new = fmaxf(m[i], mx);
    // m_new = −∞ only while a row has seen no key: its acc and l are 0, so any finite factor will do.
    corr[i] = m_new == -INFINITY ? 1.f : expf(m[i] - m_new);
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < CJ; j++) {
      s[i][j] = s[i][j] == -INFINITY ? 0.f : expf(s[i][j] - m_new);
      sum += s[i][j];
    }
    sum = half_warp_sum(sum);
    l[i] = l[i] * corr[i] + sum;
    m[i] = m_new;
  }
}

// Online-softmax attention of the query tile qs (rows at positions q0 + r) over nk keys/values (row j at
// k + j·ld, v + j·ld; keys rotated at position j when cos_t is set). Causal: query p sees keys j ≤ p. Leaves
// the normalised output in acc and each row's logsumexp in lse. kvs holds the key tile, then the value tile
// (one buffer: the forward's shared memory stays at 83 KB for a head width of 128); ps holds P.
// Rows past the segment see zero queries: finite, never stored.
template <int DM, typename E>
__device__ __forceinline__ void attend(const float* qs, float* kvs, float* ps, const E* k, const E* v,
                                       int64_t ld, int64_t nk, bool causal, int64_t q0, int d, const float* cos_t,
                                       const float* sin_t, float scale, float (&acc)[kFwdQ / 16][DM / 16],
                                       float (&lse)[kFwdQ / 16]) {
  constexpr int RI = kFwdQ / 16, CJ = kFwdK / 16, NC = DM / 16, PLD = kFwdK + 1;
  const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
  float m[RI], l[RI];
#pragma unroll
  for (int i = 0; i < RI; i++) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int c = 0; c < NC; c++) acc[i][c] = 0.f;
  }
  const int64_t k_end = causal ? min64(nk, q0 + kFwdQ) : nk;
  for (int64_t k0 = 0; k0 < k_end; k0 += kFwdK) {
    const int n = int(min64(kFwdK, k_end - k0));
    __syncthreads();  // the previous tile's P·V reads of kvs and ps are done; qs is visible
    load_tile<DM, kFwdK>(kvs, k + k0 * ld, ld, n, d, cos_t, sin_t, k0, nullptr, false);
    __syncthreads();
    float s[RI][CJ], corr[RI];
    dot_tile<DM, RI, CJ>(s, qs, kvs);
    softmax_tile<RI, CJ>(s, m, l, corr, n, causal, k0, q0, scale);
#pragma unroll
    for (int i = 0; i < RI; i++)
#pragma unroll
      for (int c = 0; c < NC; c++) acc[i][c] *= corr[i];
    __syncthreads();  // every thread is done reading the keys: kvs takes the values
#pragma unroll
    for (int i = 0; i < RI; i++)
#pragma unroll
      for (int j = 0; j < CJ; j++) ps[(ty + 16 * i) * PLD + tx + 16 * j] = s[i][j];
    load_tile<DM, kFwdK>(kvs, v + k0 * ld, ld, n, d, nullptr, nullptr, 0, nullptr, false);
    __syncthreads();
    acc_tile<DM, RI, PLD>(acc, ps, kvs, n);
  }
#pragma unroll
  for (int i = 0; i < RI; i++) {
    const float inv = 1.f / l[i];
#pragma unroll
    for (int c = 0; c < NC; c++) acc[i][c] *= inv;
    lse[i] = m[i] + logf(l[i]);
  }
}

// attend on tensor cores (bfloat16, d a multiple of 16): the same tiles, barriers and softmax bookkeeping, with
// S = Q·Kᵀ staged through ps (tc_abt) and the output accumulated in mma fragments (o) instead of the 16 × 16
// layout. Each row's rescale factor reaches the fragments through corr_s ([kFwdQ] floats of shared memory):
// written before the barrier that precedes the P and V stores, read after the one that follows them, and not
// written again before the next tile's first barrier. Rotated q and k (rope: the self part) are split into
// hi + lo bf16 parts; so is P (see kRoundP).
template <int DM, typename E>
__device__ __forceinline__ void attend_tc(const float* qs, float* kvs, float* ps, float* corr_s, const E* k,
                                          const E* v, int64_t ld, int64_t nk, bool causal, int64_t q0, int d,
                                          const float* cos_t, const float* sin_t, float scale,
                                          float (&acc)[kFwdQ / 16][DM / 16], float (&lse)[kFwdQ / 16]) {
  constexpr int RI = kFwdQ / 16, CJ = kFwdK / 16, NC = DM / 16, PLD = kFwdK + 1, LD = DM + 1;
  const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
  const bool qk_split = cos_t != nullptr;
  float m[RI], l[RI];
#pragma unroll
  for (int i = 0; i < RI; i++) {
    m[i] = -INFINITY;
    l[i] = 0.f;
  }
  FragAcc<kFwdQ, DM> o;
  o.zero();
  const int64_t k_end = causal ? min64(nk, q0 + kFwdQ) : nk;
  for (int64_t k0 = 0; k0 < k_end; k0 += kFwdK) {
    const int n = int(min64(kFwdK, k_end - k0));
    __syncthreads();  // the previous tile's P·V reads of kvs, ps and corr_s are done; qs is visible
    load_tile<DM, kFwdK>(kvs, k + k0 * ld, ld, n, d, cos_t, sin_t, k0, nullptr, false);
    __syncthreads();
    tc_abt<kFwdQ, kFwdK>(ps, PLD, qs, qk_split, kvs, qk_split, LD, d, n);
    __syncthreads();  // the score tile is in ps
    float s[RI][CJ], corr[RI];
#pragma unroll
    for (int i = 0; i < RI; i++)
#pragma unroll
      for (int j = 0; j < CJ; j++) s[i][j] = ps[(ty + 16 * i) * PLD + tx + 16 * j];
    softmax_tile<RI, CJ>(s, m, l, corr, n, causal, k0, q0, scale);
    if (tx == 0) {
#pragma unroll
      for (int i = 0; i < RI; i++) corr_s[ty + 16 * i] = corr[i];
    }
    __syncthreads();  // every thread is done reading the keys and the scores: kvs takes the values, ps P
#pragma unroll
    for (int i = 0; i < RI; i++)
#pragma unroll
      for (int j = 0; j < CJ; j++) ps[(ty + 16 * i) * PLD + tx + 16 * j] = s[i][j];
    load_tile<DM, kFwdK>(kvs, v + k0 * ld, ld, n, d, nullptr, nullptr, 0, nullptr, false);
    __syncthreads();
    o.scale_rows(corr_s);
    tc_acc_av(o, ps, PLD, !kRoundP, kvs, LD, false, n, d);
  }
  __syncthreads();  // every warp's last P·V is done with kvs: it takes the output, to hand it to the 16 × 16 layout
  o.store(kvs, LD);
  __syncthreads();
#pragma unroll
  for (int i = 0; i < RI; i++) {
    const float inv = 1.f / l[i];
#pragma unroll
    for (int c = 0; c < NC; c++) acc[i][c] = kvs[(ty + 16 * i) * LD + tx + 16 * c] * inv;
    lse[i] = m[i] + logf(l[i]);
  }
}

// One block per (batch b, head h, block of kFwdQ query rows), blockIdx.x = (b·H + h)·q_blocks + query block.
// TC: the tensor-core products (attend_tc), for bfloat16 with d a multiple of 16.
template <int DM, typename E, bool TC>
__global__ void __launch_bounds__(kBlock) attention_forward_kernel(FwdParams<E> p) {
  constexpr int RI = kFwdQ / 16, NC = DM / 16, LD = DM + 1;
  extern __shared__ float smem[];
  float* qs = smem;              // [kFwdQ, LD]
  float* kvs = qs + kFwdQ * LD;  // [kFwdK, LD]
  float* ps = kvs + kFwdK * LD;  // [kFwdQ, kFwdK + 1]
  float* corr_s = ps + kFwdQ * (kFwdK + 1);  // [kFwdQ], TC only
  const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
  const int64_t T = p.T, D = p.D, q_blocks = (T + kFwdQ - 1) / kFwdQ;
  const int64_t bh = int64_t(blockIdx.x) / q_blocks, q0 = int64_t(blockIdx.x) % q_blocks * kFwdQ;
  const int64_t b = bh / p.H, h = bh % p.H;
  const int d = int(p.d), nq = int(min64(kFwdQ, T - q0));
  const E* qkv_b = p.qkv + b * T * 3 * D + h * p.d;  // head h's q columns of batch b, rows of stride 3D

  // Self-attention: A and lse_self.
  load_tile<DM, kFwdQ>(qs, qkv_b + q0 * 3 * D, 3 * D, nq, d, p.cos_t, p.sin_t, q0, nullptr, false);
  float a[RI][NC], lse_a[RI];
  if constexpr (TC) {
    attend_tc<DM>(qs, kvs, ps, corr_s, qkv_b + D, qkv_b + 2 * D, 3 * D, T, true, q0, d, p.cos_t, p.sin_t, p.scale,
                  a, lse_a);
  } else {
    attend<DM>(qs, kvs, ps, qkv_b + D, qkv_b + 2 * D, 3 * D, T, true, q0, d, p.cos_t, p.sin_t, p.scale, a, lse_a);
  }
  const int64_t lse_row = bh * T + q0;
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < RI; i++)
      if (ty + 16 * i < nq) p.lse_self[lse_row + ty + 16 * i] = lse_a[i];
  }
  E* out = p.out + (b * T + q0) * D + h * p.d;
  if (p.S == 0) {
    store_rows<DM, RI>(out, D, a, nq, d);
    return;
  }

  // Memory read over the S slots, no mask: the unrotated q (SPEC v1), or (v2 with rope) q rotated at p + S against
  // slot j's key rotated at j, the distances of slots sitting at −S … −1 before the segment.
  const float* mcos = p.mem_positions ? p.cos_t : nullptr;
  const float* msin = p.mem_positions ? p.sin_t : nullptr;
  if (p.cos_t) {
    __syncthreads();  // (attend's barriers already order its reads of qs; this makes it plain)
    load_tile<DM, kFwdQ>(qs, qkv_b + q0 * 3 * D, 3 * D, nq, d, mcos, msin, q0 + p.S, nullptr, false);
  }
  const E* mem_b = p.mem_kv + b * p.S * 2 * D + h * p.d;
  float r[RI][NC], lse_r[RI];
  if constexpr (TC) {
    attend_tc<DM>(qs, kvs, ps, corr_s, mem_b, mem_b + D, 2 * D, p.S, false, 0, d, mcos, msin, p.scale, r, lse_r);
  } else {
    attend<DM>(qs, kvs, ps, mem_b, mem_b + D, 2 * D, p.S, false, 0, d, mcos, msin, p.scale, r, lse_r);
  }
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < RI; i++)
      if (ty + 16 * i < nq) p.lse_mem[lse_row + ty + 16 * i] = lse_r[i];
  }

  // The gate: out = g·R + (1 − g)·A, g per (token, head).
#pragma unroll
  for (int i = 0; i < RI; i++) {
    const int row = ty + 16 * i;
    if (row >= nq) continue;
    const int64_t t = q0 + row;
    const float logit = load(p.gate_logits + (b * T + t) * p.H + h);
    const float g = p.joint ? sigmoid_ref(float(double(logit) + double(lse_r[i]) - double(lse_a[i]))) : sigmoid_ref(logit);
    const int64_t at = row * D;
#pragma unroll
    for (int c = 0; c < NC; c++) {
      const int col = tx + 16 * c;
      if (col >= d) continue;
      store(out + at + col, g * r[i][c] + (1.f - g) * a[i][c]);
      if (p.save_a) store(p.save_a + (b * T + t) * D + h * p.d + col, a[i][c]);
      if (p.save_r) store(p.save_r + (b * T + t) * D + h * p.d + col, r[i][c]);
    }
  }
}

// ---------------------------------------------------------------- backward

// cos(pθ_i), sin(pθ_i) for p < T, i < d/2, θ_i = 10000^(−2i/d): in double, rounded once, as the CPU's RopeTable.
__global__ void rope_table_kernel(float* cos_t, float* sin_t, int64_t T, int64_t half, int64_t d) {
  for (int64_t idx = global_thread(); idx < T * half; idx += grid_threads()) {
    const int64_t pos = idx / half, i = idx % half;
    const double angle = double(pos) * pow(10000.0, -2.0 * double(i) / double(d));
    cos_t[idx] = float(cos(angle));
    sin_t[idx] = float(sin(angle));
  }
}

// One warp per (b, t, h) (row j = (b·T + t)·H + h, the gate's layout): g, the D terms and the gate gradient
// d_gate = Σ dOut·(R − A) · g(1 − g), sums in double as on the CPU. Outputs [B, H, T] (the lse layout).
// With the joint gate (SPEC v2), g = σ(logit + lse_mem − lse_self): d lse_mem = d_gate and d lse_self = −d_gate
// reach the scores through the D terms (dS = P ∘ (dP − D + d lse)), so D_a gains d_gate and D_r loses it.
template <typename E>
__global__ void backward_rows_kernel(int64_t rows, int64_t T, int64_t H, int64_t d, int64_t S, bool joint,
                                     const float* lse_self, const float* lse_mem, const E* a, const E* r,
                                     const E* gate_logits, const E* d_out, float* dsum_a, float* dsum_r,
                                     float* g_out, E* d_gate) {
  const int lane = threadIdx.x & 31;
  const int64_t D = H * d;
  for (int64_t j = global_thread() >> 5; j < rows; j += grid_threads() >> 5) {
    const int64_t h = j % H, bt = j / H, t = bt % T, b = bt / T;
    const int64_t row = bt * D + h * d, lse_at = (b * H + h) * T + t;
    const E* dout = d_out + row;
    const E* ar = a + row;
    if (S == 0) {
      double acc = 0;
      for (int64_t c = lane; c < d; c += 32) acc += double(load(dout + c)) * double(load(ar + c));
      acc = warp_sum(acc);
      if (lane == 0) dsum_a[lse_at] = float(acc);
      continue;
    }
    const float logit = load(gate_logits + j);
    const float g = joint ? sigmoid_ref(float(double(logit) + double(lse_mem[lse_at]) - double(lse_self[lse_at])))
                          : sigmoid_ref(logit);
    const E* rr = r + row;
    double sa = 0, sr = 0, diff = 0;
    for (int64_t c = lane; c < d; c += 32) {
      const float dy = load(dout + c), av = load(ar + c), rv = load(rr + c);
      sa += double((1.f - g) * dy) * double(av);
      sr += double(g * dy) * double(rv);
      diff += double(dy) * (double(rv) - double(av));
    }
    sa = warp_sum(sa);
    sr = warp_sum(sr);
    diff = warp_sum(diff);
    if (lane == 0) {
      const float dz = float(diff * g * (1.0 - g));
      dsum_a[lse_at] = joint ? float(sa) + dz : float(sa);
      dsum_r[lse_at] = joint ? float(sr) - dz : float(sr);
      g_out[lse_at] = g;
      store(d_gate + j, dz);
    }
  }
}

// dK and dV of one block of kRows keys, over every query tile that sees them:
// P = exp(q·kᵀ·scale − lse), dP = dY·vᵀ, dS = P ∘ (dP − D)·scale, dV += Pᵀ·dY, dK += dSᵀ·q.
// `memory` false: the self part (keys and values from qkv, causal, q and k rotated, dY = dA, lse_self, D_a);
// dK is rotated back and both go to d_qkv. `memory` true: the S slots (no mask, nothing rotated, dY = dR,
// lse_mem, D_r) into d_mem_kv. One block per (b, h, key block); the thread owning a key row owns its sums.
// TC: the four products on tensor cores (bfloat16, d a multiple of 16); dK and dV then live in mma fragments
// until the end, where they cross to the 16 × 16 layout through ks and vs.
template <int DM, typename E, bool TC>
__global__ void __launch_bounds__(kBlock) attention_dkdv_kernel(BwdParams<E> p, bool memory) {
  constexpr int BR = BwdTiles<DM>::kRows, BC = BwdTiles<DM>::kCols;
  constexpr int LD = DM + 1, PLD = BC + 1, RI = BR / 16, CJ = BC / 16, NC = DM / 16;
  extern __shared__ float smem[];
  float* ks = smem;             // [BR, LD] keys (rotated for the self part)
  float* vs = ks + BR * LD;     // [BR, LD] values
  float* qs = vs + BR * LD;     // [BC, LD] queries
  float* dys = qs + BC * LD;    // [BC, LD] dA or dR
  float* ps = dys + BC * LD;    // [BR, PLD] Pᵀ
  float* dss = ps + BR * PLD;   // [BR, PLD] dSᵀ·scale
  float* lse_s = dss + BR * PLD;  // [BC]
  float* dsum_s = lse_s + BC;     // [BC]
  const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
  const int64_t T = p.T, D = p.D, nk = memory ? p.S : T, k_blocks = (nk + BR - 1) / BR;
  const int64_t bh = int64_t(blockIdx.x) / k_blocks, k0 = int64_t(blockIdx.x) % k_blocks * BR;
  const int64_t b = bh / p.H, h = bh % p.H;
  const int d = int(p.d), nkr = int(min64(BR, nk - k0));
  const E* qkv_b = p.qkv + b * T * 3 * D + h * p.d;
  const E* mem_b = memory ? p.mem_kv + b * p.S * 2 * D + h * p.d : nullptr;
  const E* kb = memory ? mem_b : qkv_b + D;
  const E* vb = memory ? mem_b + D : qkv_b + 2 * D;
  const int64_t ld = memory ? 2 * D : 3 * D;
  // The self part is rotated with rope; the memory part too with positional slots, queries at p + S (qpos).
  const bool rotated = memory ? p.mem_positions : p.cos_t != nullptr;
  const float* cos_t = rotated ? p.cos_t : nullptr;
  const float* sin_t = rotated ? p.sin_t : nullptr;
  const int64_t qpos = memory ? p.S : 0;
  const float* lse = (memory ? p.lse_mem : p.lse_self) + bh * T;
  const float* dsum = (memory ? p.dsum_r : p.dsum_a) + bh * T;
  const float* g = p.g ? p.g + bh * T : nullptr;
  const bool causal = !memory;

  load_tile<DM, BR>(ks, kb + k0 * ld, ld, nkr, d, cos_t, sin_t, k0, nullptr, false);
  load_tile<DM, BR>(vs, vb + k0 * ld, ld, nkr, d, nullptr, nullptr, 0, nullptr, false);
  float dk[RI][NC], dv[RI][NC];
  if constexpr (TC) {
    // Rotated q and k, and dY scaled by the gate, are not bf16 values: their fragments are split.
    const bool qk_split = cos_t != nullptr, dy_split = g != nullptr;
    FragAcc<BR, DM> dk_f, dv_f;
    dk_f.zero();
    dv_f.zero();
    for (int64_t q0 = causal ? k0 / BC * BC : 0; q0 < T; q0 += BC) {
      const int nq = int(min64(BC, T - q0));
      __syncthreads();  // the previous tile's readers of qs, dys, ps, dss, lse_s, dsum_s are done
      load_tile<DM, BC>(qs, qkv_b + q0 * 3 * D, 3 * D, nq, d, cos_t, sin_t, q0 + qpos, nullptr, false);
      load_tile<DM, BC>(dys, p.d_out + (b * T + q0) * D + h * p.d, D, nq, d, nullptr, nullptr, 0,
                        g ? g + q0 : nullptr, !memory);
      for (int j = threadIdx.x; j < BC; j += kBlock) {
        lse_s[j] = j < nq ? lse[q0 + j] : 0.f;
        dsum_s[j] = j < nq ? dsum[q0 + j] : 0.f;
      }
      __syncthreads();
      tc_abt<BR, BC>(ps, PLD, ks, qk_split, qs, qk_split, LD, d, nq);  // Sᵀ [keys, queries]
      tc_abt<BR, BC>(dss, PLD, vs, false, dys, dy_split, LD, d, nq);   // dPᵀ
      __syncthreads();
      // Each thread reads its elements of Sᵀ and dPᵀ and overwrites the same ones with Pᵀ and dSᵀ·scale.
#pragma unroll
      for (int i = 0; i < RI; i++) {
        const int kr = ty + 16 * i;
#pragma unroll
        for (int j = 0; j < CJ; j++) {
          const int qj = tx + 16 * j;
          const bool ok = kr < nkr && qj < nq && (!causal || k0 + kr <= q0 + qj);
          const float pv = ok ? expf(ps[kr * PLD + qj] * p.scale - lse_s[qj]) : 0.f;
          const float ds = ok ? pv * (dss[kr * PLD + qj] - dsum_s[qj]) * p.scale : 0.f;
          ps[kr * PLD + qj] = pv;
          dss[kr * PLD + qj] = ds;
        }
      }
      __syncthreads();
      tc_acc_av(dv_f, ps, PLD, !kRoundP, dys, LD, dy_split, nq, d);
      tc_acc_av(dk_f, dss, PLD, true, qs, LD, qk_split, nq, d);
    }
    __syncthreads();  // every warp's last products are done: ks and vs take dK and dV
    dk_f.store(ks, LD);
    dv_f.store(vs, LD);
    __syncthreads();
#pragma unroll
    for (int i = 0; i < RI; i++)
#pragma unroll
      for (int c = 0; c < NC; c++) {
        dk[i][c] = ks[(ty + 16 * i) * LD + tx + 16 * c];
        dv[i][c] = vs[(ty + 16 * i) * LD + tx + 16 * c];
      }
  } else {
#pragma unroll
    for (int i = 0; i < RI; i++)
#pragma unroll
      for (int c = 0; c < NC; c++) dk[i][c] = dv[i][c] = 0.f;

    // Causal: queries before k0 see none of these keys (k0 is a multiple of BC, since BR is).
    for (int64_t q0 = causal ? k0 / BC * BC : 0; q0 < T; q0 += BC) {
      const int nq = int(min64(BC, T - q0));
      __syncthreads();  // the previous tile's readers of qs, dys, ps, dss, lse_s, dsum_s are done
      load_tile<DM, BC>(qs, qkv_b + q0 * 3 * D, 3 * D, nq, d, cos_t, sin_t, q0 + qpos, nullptr, false);
      load_tile<DM, BC>(dys, p.d_out + (b * T + q0) * D + h * p.d, D, nq, d, nullptr, nullptr, 0,
                        g ? g + q0 : nullptr, !memory);
      for (int j = threadIdx.x; j < BC; j += kBlock) {
        lse_s[j] = j < nq ? lse[q0 + j] : 0.f;
        dsum_s[j] = j < nq ? dsum[q0 + j] : 0.f;
      }
      __syncthreads();
      float s[RI][CJ], dp[RI][CJ];
      dot_tile<DM, RI, CJ>(s, ks, qs);    // [keys, queries]
      dot_tile<DM, RI, CJ>(dp, vs, dys);
#pragma unroll
      for (int i = 0; i < RI; i++) {
        const int kr = ty + 16 * i;
#pragma unroll
        for (int j = 0; j < CJ; j++) {
          const int qj = tx + 16 * j;
          const bool ok = kr < nkr && qj < nq && (!causal || k0 + kr <= q0 + qj);
          const float pv = ok ? expf(s[i][j] * p.scale - lse_s[qj]) : 0.f;
          ps[kr * PLD + qj] = pv;
          dss[kr * PLD + qj] = ok ? pv * (dp[i][j] - dsum_s[qj]) * p.scale : 0.f;
        }
      }
      __syncthreads();
      acc_tile<DM, RI, PLD>(dv, ps, dys, nq);
      acc_tile<DM, RI, PLD>(dk, dss, qs, nq);
    }
  }

  if (memory) {
    if (cos_t) rotate_back<DM, RI>(dk, ks, k0, nkr, d, cos_t, sin_t);
    E* dst = p.d_mem_kv + (b * p.S + k0) * 2 * D + h * p.d;
    store_rows<DM, RI>(dst, 2 * D, dk, nkr, d);
    store_rows<DM, RI>(dst + D, 2 * D, dv, nkr, d);
  } else {
    if (cos_t) rotate_back<DM, RI>(dk, ks, k0, nkr, d, cos_t, sin_t);
    E* dst = p.d_qkv + (b * T + k0) * 3 * D + h * p.d;
    store_rows<DM, RI>(dst + D, 3 * D, dk, nkr, d);
    store_rows<DM, RI>(dst + 2 * D, 3 * D, dv, nkr, d);
  }
}

// dq += Σ over the key tiles of dS·k for the query tile in qs (rows q0 + r, r < nq) and its dY tile in dys:
// keys and values rows j < nk at k + j·ld, v + j·ld (keys rotated at position j when cos_t is set); lse and
// dsum indexed by query position. ks / vs take one tile of BC keys each, dss the tile of dS·scale.
template <int DM, typename E>
__device__ __forceinline__ void dq_pass(const float* qs, const float* dys, float* ks, float* vs, float* dss,
                                        const E* k, const E* v, int64_t ld, int64_t nk, bool causal,
                                        int64_t q0, int nq, int d, const float* cos_t, const float* sin_t,
                                        float scale, const float* lse, const float* dsum,
                                        float (&dq)[BwdTiles<DM>::kRows / 16][DM / 16]) {
  constexpr int BR = BwdTiles<DM>::kRows, BC = BwdTiles<DM>::kCols;
  constexpr int PLD = BC + 1, RI = BR / 16, CJ = BC / 16;
  const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
  float lse_r[RI], dsum_r[RI];
#pragma unroll
  for (int i = 0; i < RI; i++) {
    const int r = ty + 16 * i;
    lse_r[i] = r < nq ? lse[q0 + r] : 0.f;
    dsum_r[i] = r < nq ? dsum[q0 + r] : 0.f;
  }
  const int64_t k_end = causal ? min64(nk, q0 + BR) : nk;
  for (int64_t k0 = 0; k0 < k_end; k0 += BC) {
    const int n = int(min64(BC, k_end - k0));
    __syncthreads();  // the previous tile's readers of ks and dss are done; qs and dys are visible
    load_tile<DM, BC>(ks, k + k0 * ld, ld, n, d, cos_t, sin_t, k0, nullptr, false);
    load_tile<DM, BC>(vs, v + k0 * ld, ld, n, d, nullptr, nullptr, 0, nullptr, false);
    __syncthreads();
    float s[RI][CJ], dp[RI][CJ];
    dot_tile<DM, RI, CJ>(s, qs, ks);  // [queries, keys]
    dot_tile<DM, RI, CJ>(dp, dys, vs);
#pragma unroll
    for (int i = 0; i < RI; i++) {
      const int r = ty + 16 * i;
#pragma unroll
      for (int j = 0; j < CJ; j++) {
        const int kj = tx + 16 * j;
        const bool ok = r < nq && kj < n && (!causal || k0 + kj <= q0 + r);
        const float pv = ok ? expf(s[i][j] * scale - lse_r[i]) : 0.f;
        dss[r * PLD + kj] = ok ? pv * (dp[i][j] - dsum_r[i]) * scale : 0.f;
      }
    }
    __syncthreads();
    acc_tile<DM, RI, PLD>(dq, dss, ks, n);
  }
}

// dq_pass on tensor cores (bfloat16, d a multiple of 16), writing dq (not accumulating): S and dP staged through
// dss and ps, dS·scale back into dss, dq accumulated in mma fragments and handed to the 16 × 16 layout through
// dys at the end (dys is free then: the caller reloads it, after a barrier, before reading it again).
// qk_split: q and k are rotated (not bf16 values); dy_split: dY is scaled by the gate.
template <int DM, typename E>
__device__ __forceinline__ void dq_pass_tc(const float* qs, float* dys, float* ks, float* vs, float* dss, float* ps,
                                           const E* k, const E* v, int64_t ld, int64_t nk, bool causal, int64_t q0,
                                           int nq, int d, const float* cos_t, const float* sin_t, float scale,
                                           const float* lse, const float* dsum, bool dy_split,
                                           float (&dq)[BwdTiles<DM>::kRows / 16][DM / 16]) {
  constexpr int BR = BwdTiles<DM>::kRows, BC = BwdTiles<DM>::kCols;
  constexpr int LD = DM + 1, PLD = BC + 1, RI = BR / 16, CJ = BC / 16, NC = DM / 16;
  const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
  const bool qk_split = cos_t != nullptr;
  float lse_r[RI], dsum_r[RI];
#pragma unroll
  for (int i = 0; i < RI; i++) {
    const int r = ty + 16 * i;
    lse_r[i] = r < nq ? lse[q0 + r] : 0.f;
    dsum_r[i] = r < nq ? dsum[q0 + r] : 0.f;
  }
  FragAcc<BR, DM> acc;
  acc.zero();
  const int64_t k_end = causal ? min64(nk, q0 + BR) : nk;
  for (int64_t k0 = 0; k0 < k_end; k0 += BC) {
    const int n = int(min64(BC, k_end - k0));
    __syncthreads();  // the previous tile's readers of ks, ps and dss are done; qs and dys are visible
    load_tile<DM, BC>(ks, k + k0 * ld, ld, n, d, cos_t, sin_t, k0, nullptr, false);
    load_tile<DM, BC>(vs, v + k0 * ld, ld, n, d, nullptr, nullptr, 0, nullptr, false);
    __syncthreads();
    tc_abt<BR, BC>(dss, PLD, qs, qk_split, ks, qk_split, LD, d, n);  // S [queries, keys]
    tc_abt<BR, BC>(ps, PLD, dys, dy_split, vs, false, LD, d, n);     // dP
    __syncthreads();
    // Each thread reads its elements of S and dP and overwrites the same ones of dss with dS·scale.
#pragma unroll
    for (int i = 0; i < RI; i++) {
      const int r = ty + 16 * i;
#pragma unroll
      for (int j = 0; j < CJ; j++) {
        const int kj = tx + 16 * j;
        const bool ok = r < nq && kj < n && (!causal || k0 + kj <= q0 + r);
        const float pv = ok ? expf(dss[r * PLD + kj] * scale - lse_r[i]) : 0.f;
        dss[r * PLD + kj] = ok ? pv * (ps[r * PLD + kj] - dsum_r[i]) * scale : 0.f;
      }
    }
    __syncthreads();
    tc_acc_av(acc, dss, PLD, true, ks, LD, qk_split, n, d);
  }
  __syncthreads();  // every warp's last dS·K is done, and nobody reads dys any more: it takes dq
  acc.store(dys, LD);
  __syncthreads();
#pragma unroll
  for (int i = 0; i < RI; i++)
#pragma unroll
    for (int c = 0; c < NC; c++) dq[i][c] = dys[(ty + 16 * i) * LD + tx + 16 * c];
}

// dq of one block of kRows queries: the self part over the causal key tiles (q and k rotated, dY = dA),
// rotated back, plus the memory part over the S slots (q unrotated, dY = dR). One block per (b, h, query block);
// it alone writes those rows of d_qkv's q columns. TC: dq_pass_tc (bfloat16, d a multiple of 16).
template <int DM, typename E, bool TC>
__global__ void __launch_bounds__(kBlock) attention_dq_kernel(BwdParams<E> p) {
  constexpr int BR = BwdTiles<DM>::kRows, BC = BwdTiles<DM>::kCols;
  constexpr int LD = DM + 1, RI = BR / 16, NC = DM / 16;
  extern __shared__ float smem[];
  float* qs = smem;            // [BR, LD]
  float* dys = qs + BR * LD;   // [BR, LD]
  float* ks = dys + BR * LD;   // [BC, LD]
  float* vs = ks + BC * LD;    // [BC, LD]
  float* dss = vs + BC * LD;   // [BR, BC + 1]
  float* ps = dss + BR * (BC + 1);  // [BR, BC + 1], TC only: dP
  const int64_t T = p.T, D = p.D, q_blocks = (T + BR - 1) / BR;
  const int64_t bh = int64_t(blockIdx.x) / q_blocks, q0 = int64_t(blockIdx.x) % q_blocks * BR;
  const int64_t b = bh / p.H, h = bh % p.H;
  const int d = int(p.d), nq = int(min64(BR, T - q0));
  const E* qkv_b = p.qkv + b * T * 3 * D + h * p.d;
  const E* dout = p.d_out + (b * T + q0) * D + h * p.d;
  const float* g = p.g ? p.g + bh * T + q0 : nullptr;

  load_tile<DM, BR>(qs, qkv_b + q0 * 3 * D, 3 * D, nq, d, p.cos_t, p.sin_t, q0, nullptr, false);
  load_tile<DM, BR>(dys, dout, D, nq, d, nullptr, nullptr, 0, g, true);
  float dq[RI][NC];
  if constexpr (TC) {
    dq_pass_tc<DM>(qs, dys, ks, vs, dss, ps, qkv_b + D, qkv_b + 2 * D, 3 * D, T, true, q0, nq, d, p.cos_t,
                   p.sin_t, p.scale, p.lse_self + bh * T, p.dsum_a + bh * T, g != nullptr, dq);
  } else {
#pragma unroll
    for (int i = 0; i < RI; i++)
#pragma unroll
      for (int c = 0; c < NC; c++) dq[i][c] = 0.f;
    dq_pass<DM>(qs, dys, ks, vs, dss, qkv_b + D, qkv_b + 2 * D, 3 * D, T, true, q0, nq, d, p.cos_t, p.sin_t,
                p.scale, p.lse_self + bh * T, p.dsum_a + bh * T, dq);
  }
  if (p.cos_t) rotate_back<DM, RI>(dq, qs, q0, nq, d, p.cos_t, p.sin_t);

  if (p.S > 0) {
    __syncthreads();  // every thread is done with qs and dys (rotate_back's reads of qs included)
    // The memory read's query: unrotated, or (positional slots) rotated at p + S, slot keys at j.
    const float* mcos = p.mem_positions ? p.cos_t : nullptr;
    const float* msin = p.mem_positions ? p.sin_t : nullptr;
    load_tile<DM, BR>(qs, qkv_b + q0 * 3 * D, 3 * D, nq, d, mcos, msin, q0 + p.S, nullptr, false);
    load_tile<DM, BR>(dys, dout, D, nq, d, nullptr, nullptr, 0, g, false);
    float dq_mem[RI][NC];
    const E* mem_b = p.mem_kv + b * p.S * 2 * D + h * p.d;
    if constexpr (TC) {
      dq_pass_tc<DM>(qs, dys, ks, vs, dss, ps, mem_b, mem_b + D, 2 * D, p.S, false, q0, nq, d, mcos, msin,
                     p.scale, p.lse_mem + bh * T, p.dsum_r + bh * T, true, dq_mem);
    } else {
#pragma unroll
      for (int i = 0; i < RI; i++)
#pragma unroll
        for (int c = 0; c < NC; c++) dq_mem[i][c] = 0.f;
      dq_pass<DM>(qs, dys, ks, vs, dss, mem_b, mem_b + D, 2 * D, p.S, false, q0, nq, d, mcos, msin, p.scale,
                  p.lse_mem + bh * T, p.dsum_r + bh * T, dq_mem);
    }
    if (mcos) rotate_back<DM, RI>(dq_mem, qs, q0 + p.S, nq, d, mcos, msin);
#pragma unroll
    for (int i = 0; i < RI; i++)
#pragma unroll
      for (int c = 0; c < NC; c++) dq[i][c] += dq_mem[i][c];  // the CPU's order: rotated self part, then memory
  }
  store_rows<DM, RI>(p.d_qkv + (b * T + q0) * 3 * D + h * p.d, 3 * D, dq, nq, d);
}

// ---------------------------------------------------------------- decoding

// attention_decode: one block of kDecodeThreads per (sequence, head). Thread c < d appends feature c of the new
// key (rotated) and value to the caches; then the query against the keys before it, walked in chunks of
// kDecodeThreads, one key a thread (the transposed key cache makes those reads coalesced), with an online softmax
// (so any segment length fits the fixed shared memory); thread c < d accumulates output column c over each chunk's
// weights. Then the same over the memory slots, then the gate, as attention_forward_kernel does it.
constexpr int kDecodeThreads = 128;

template <typename E>
struct DecodeParams {
  int64_t T, H, d, S, D;
  float scale;
  bool joint, mem_positions;
  const E* qkv;              // [B, 3D]: the new rows
  const int32_t* positions;  // [B]
  float* keys;               // [B, H, ⌈T/8⌉, d, 8]: rotated, blocked (attention.inc)
  E* values;                 // [B, H, T, d]
  const float* mem_keys;     // [B, H, ⌈S/8⌉, d, 8]: blocked, rotated at j for the positional read
  const E* mem_values;       // [B, H, S, d]
  const E* gate_logits;      // [B, H]
  const float* cos_t;        // RoPE table [T (+ S with mem_positions), d/2]; nullptr without rope
  const float* sin_t;
  E* out;                    // [B, D]
};

// Feature i of key t in a head's blocked keys (attention.inc). A warp's 32 consecutive keys read 4 runs of 32 bytes.
__device__ __forceinline__ int64_t key_at(int64_t t, int i, int d) {
  return ((t / kDecodeKeyBlock) * d + i) * kDecodeKeyBlock + t % kDecodeKeyBlock;
}

// Feature c of row z (head width d) rotated at position pos (rotate-half, as the CPU's rope_rotate).
template <typename E>
__device__ __forceinline__ float rotated(const E* z, int c, int d, const float* cos_t, const float* sin_t, int64_t pos) {
  const int half = d >> 1, i = c < half ? c : c - half;
  const float a = load(z + i), b = load(z + i + half);
  const int64_t at = pos * half + i;
  return c < half ? a * cos_t[at] - b * sin_t[at] : a * sin_t[at] + b * cos_t[at];
}

// Online softmax of the scores score(j) of n keys, weighting the value rows (vals + j·ld): thread c < d gets
// column c of the normalised output in *acc_out; every thread gets the logsumexp. sc and red are shared scratch
// of kDecodeThreads and 32 floats.
template <typename E, typename Score>
__device__ float decode_attend(Score score_of, const E* vals, int64_t ld, int64_t n, int d, float scale, float* sc,
                               float* red, float* acc_out) {
  const int c = threadIdx.x;
  float m = -INFINITY, l = 0.f, acc = 0.f;
  for (int64_t k0 = 0; k0 < n; k0 += kDecodeThreads) {
    const int64_t j = k0 + threadIdx.x;
    const float score = j < n ? score_of(j) * scale : -INFINITY;
    const float m_new = fmaxf(m, block_max(score, red));
    const float e = j < n ? expf(score - m_new) : 0.f;
    sc[threadIdx.x] = e;
    const float corr = m == -INFINITY ? 0.f : expf(m - m_new);
    l = l * corr + block_sum(e, red);  // block_sum's barriers also publish sc
    if (c < d) {
      float chunk = 0.f;
      const int64_t valid = min64(kDecodeThreads, n - k0);
      for (int64_t r = 0; r < valid; r++) chunk += sc[r] * load(vals + (k0 + r) * ld + c);
      acc = acc * corr + chunk;
    }
    m = m_new;
    __syncthreads();  // sc is rewritten by the next chunk
  }
  *acc_out = acc / l;
  return m + logf(l);
}

template <typename E>
__global__ void __launch_bounds__(kDecodeThreads) attention_decode_kernel(DecodeParams<E> p) {
  __shared__ float q[kMaxHeadDim];
  __shared__ float qm[kMaxHeadDim];
  __shared__ float sc[kDecodeThreads];
  __shared__ float red[32];
  const int64_t b = blockIdx.x / p.H, h = blockIdx.x % p.H, D = p.D, T = p.T;
  const int d = int(p.d), c = threadIdx.x;
  E* o = p.out + b * D + h * d;
  const int64_t pos = p.positions[b];
  if (pos < 0 || pos >= T) {
    if (c < d) store(o + c, 0.f);
    return;
  }
  const E* row = p.qkv + b * 3 * D + h * d;
  float* keys = p.keys + (b * p.H + h) * ((T + kDecodeKeyBlock - 1) / kDecodeKeyBlock) * d * kDecodeKeyBlock;
  E* values = p.values + (b * p.H + h) * T * d;
  if (c < d) {
    const float x = load(row + c);
    q[c] = p.cos_t ? rotated(row, c, d, p.cos_t, p.sin_t, pos) : x;
    qm[c] = p.mem_positions ? rotated(row, c, d, p.cos_t, p.sin_t, pos + p.S) : x;
    keys[key_at(pos, c, d)] = p.cos_t ? rotated(row + D, c, d, p.cos_t, p.sin_t, pos) : load(row + D + c);
    values[pos * d + c] = row[2 * D + c];
  }
  __syncthreads();  // the appended key and value, and q, are read by other threads below
  float a_c = 0.f, r_c = 0.f;
  const float lse_self = decode_attend<E>(
      [&](int64_t j) {
        float dot = 0.f;
        for (int i = 0; i < d; i++) dot += q[i] * keys[key_at(j, i, d)];
        return dot;
      },
      values, d, pos + 1, d, p.scale, sc, red, &a_c);
  if (p.S == 0) {
    if (c < d) store(o + c, a_c);
    return;
  }
  // The slots' keys were rotated (or not) once, when the memory was written (attention_decode_memory_kernel).
  const float* mk = p.mem_keys + (b * p.H + h) * ((p.S + kDecodeKeyBlock - 1) / kDecodeKeyBlock) * d * kDecodeKeyBlock;
  const float lse_mem = decode_attend<E>(
      [&](int64_t j) {
        float dot = 0.f;
        for (int i = 0; i < d; i++) dot += qm[i] * mk[key_at(j, i, d)];
        return dot;
      },
      p.mem_values + (b * p.H + h) * p.S * d, d, p.S, d, p.scale, sc, red, &r_c);
  const float logit = load(p.gate_logits + b * p.H + h);
  const float g = p.joint ? sigmoid_ref(float(double(logit) + double(lse_mem) - double(lse_self))) : sigmoid_ref(logit);
  if (c < d) store(o + c, g * r_c + (1.f - g) * a_c);
}

// attention_decode_memory: one block per (sequence, slot); its threads walk the slot's D features, each writing
// feature c of head h: the key (rotated at the slot's position j for the positional read) into the blocked keys, the
// value into the head's contiguous values.
template <typename E>
__global__ void attention_decode_memory_kernel(int64_t S, int64_t H, int d, bool rotate, const E* mem_kv,
                                               const float* cos_t, const float* sin_t, float* mem_keys,
                                               E* mem_values) {
  const int64_t b = blockIdx.x / S, j = blockIdx.x % S, D = H * d;
  const int64_t slot_blocks = (S + kDecodeKeyBlock - 1) / kDecodeKeyBlock;
  const E* row = mem_kv + (b * S + j) * 2 * D;
  for (int64_t col = threadIdx.x; col < D; col += blockDim.x) {
    const int64_t h = col / d;
    const int c = int(col % d);
    const E* k = row + h * d;
    mem_keys[(b * H + h) * slot_blocks * d * kDecodeKeyBlock + key_at(j, c, d)] =
        rotate ? rotated(k, c, d, cos_t, sin_t, j) : load(k + c);
    mem_values[((b * H + h) * S + j) * d + c] = row[D + col];
  }
}

// ---------------------------------------------------------------- host side

void check_dims(int64_t H, int64_t d, bool rope) {
  if (H < 1 || d < 1) fail("attention: %lld heads of width %lld", (long long)H, (long long)d);
  if (rope && d % 2) fail("attention: rope needs an even head width, got d = %lld", (long long)d);
  if (d > kMaxHeadDim)
    fail("attention: head width d = %lld is over %d, the most the CUDA kernels support", (long long)d, kMaxHeadDim);
}

// fn(std::integral_constant<int, DM>) with DM the padded head width the kernels are compiled for.
template <typename Fn>
void with_head_dim(int64_t d, Fn&& fn) {
  if (d <= 32) fn(std::integral_constant<int, 32>{});
  else if (d <= 64) fn(std::integral_constant<int, 64>{});
  else fn(std::integral_constant<int, 128>{});
}

unsigned grid_of(int64_t blocks, const char* op) {
  if (blocks > INT_MAX) fail("%s: %lld blocks are more than one launch can have", op, (long long)blocks);
  return unsigned(blocks);
}

// Lets `kernel` have `bytes` of dynamic shared memory (over the default 48 KB): once per kernel, before its first
// launch (the static in each caller's instantiation).
template <typename Kernel>
bool allow_shared(Kernel kernel, size_t bytes, const char* op) {
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), op);
  return true;
}

constexpr int64_t kAlign = 64;  // floats: each scratch array starts on a 256-byte boundary
int64_t aligned(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// The RoPE table [T, d/2] (cos, then sin), made once per (device, T, d) on the stream and kept (as the CPU keeps its
// RopeTable): made in a scratch, it was one more kernel launch at every attention call, one per layer per decoded
// token. A few hundred KB at the base preset, for the life of the process.
void rope_table(int64_t T, int64_t d, const char* op, const float** cos_t, const float** sin_t) {
  static std::mutex mu;
  static std::map<std::tuple<int, int64_t, int64_t>, float*> tables;
  int device = 0;
  check(cudaGetDevice(&device), op);
  const int64_t half = d / 2;
  std::lock_guard<std::mutex> lock(mu);
  float*& table = tables[{device, T, d}];
  if (!table) {
    void* p = nullptr;
    check(cudaMalloc(&p, size_t(2 * aligned(T * half)) * sizeof(float)), op);
    rope_table_kernel<<<blocks_for(T * half), kThreads, 0, stream()>>>(static_cast<float*>(p), static_cast<float*>(p) + aligned(T * half), T, half, d);
    check_launch(op);
    table = static_cast<float*>(p);
  }
  *cos_t = table;
  *sin_t = table + aligned(T * half);
}

template <int DM, typename E, bool TC>
void launch_forward(const FwdParams<E>& p, int64_t B) {
  constexpr size_t bytes =
      size_t(kFwdQ * (DM + 1) + kFwdK * (DM + 1) + kFwdQ * (kFwdK + 1) + (TC ? kFwdQ : 0)) * sizeof(float);
  static const bool ready = allow_shared(attention_forward_kernel<DM, E, TC>, bytes, "attention_forward");
  (void)ready;
  const unsigned grid = grid_of(B * p.H * ((p.T + kFwdQ - 1) / kFwdQ), "attention_forward");
  attention_forward_kernel<DM, E, TC><<<grid, kBlock, bytes, stream()>>>(p);
  check_launch("attention_forward");
}

template <int DM, typename E, bool TC>
void launch_backward(const BwdParams<E>& p, int64_t B) {
  constexpr int BR = BwdTiles<DM>::kRows, BC = BwdTiles<DM>::kCols, LD = DM + 1;
  constexpr size_t dkdv_bytes = size_t(2 * BR * LD + 2 * BC * LD + 2 * BR * (BC + 1) + 2 * BC) * sizeof(float);
  constexpr size_t dq_bytes = size_t(2 * BR * LD + 2 * BC * LD + (TC ? 2 : 1) * BR * (BC + 1)) * sizeof(float);
  static const bool ready = allow_shared(attention_dkdv_kernel<DM, E, TC>, dkdv_bytes, "attention_backward") &&
                            allow_shared(attention_dq_kernel<DM, E, TC>, dq_bytes, "attention_backward");
  (void)ready;
  const int64_t BH = B * p.H;
  attention_dkdv_kernel<DM, E, TC><<<grid_of(BH * ((p.T + BR - 1) / BR), "attention_backward"), kBlock,
                                     dkdv_bytes, stream()>>>(p, false);
  check_launch("attention_backward");
  if (p.S > 0) {
    attention_dkdv_kernel<DM, E, TC><<<grid_of(BH * ((p.S + BR - 1) / BR), "attention_backward"), kBlock,
                                       dkdv_bytes, stream()>>>(p, true);
    check_launch("attention_backward");
  }
  attention_dq_kernel<DM, E, TC><<<grid_of(BH * ((p.T + BR - 1) / BR), "attention_backward"), kBlock, dq_bytes,
                                   stream()>>>(p);
  check_launch("attention_backward");
}

// Tensor cores for bfloat16 when the head width is a multiple of 16 (whole k steps of mma.m16n8k16); float32, and
// bfloat16 at other widths, take the SIMT kernels.
template <typename E>
bool use_tensor_cores(int64_t d) {
  return std::is_same_v<E, uint16_t> && d % 16 == 0;
}

template <int DM, typename E>
void launch_forward_for(const FwdParams<E>& p, int64_t B) {
  if constexpr (std::is_same_v<E, uint16_t>) {
    if (use_tensor_cores<E>(p.d)) return launch_forward<DM, E, true>(p, B);
  }
  launch_forward<DM, E, false>(p, B);
}

template <int DM, typename E>
void launch_backward_for(const BwdParams<E>& p, int64_t B) {
  if constexpr (std::is_same_v<E, uint16_t>) {
    if (use_tensor_cores<E>(p.d)) return launch_backward<DM, E, true>(p, B);
  }
  launch_backward<DM, E, false>(p, B);
}

}  // namespace

void attention_forward(DType dt, int64_t B, int64_t T, int64_t H, int64_t d, int64_t S, bool rope, int mem_mode,
                       const void* qkv, const void* mem_kv, const void* gate_logits, void* out, float* lse_self,
                       float* lse_mem, void* save_a, void* save_r) {
  check_dims(H, d, rope);
  const bool joint = S > 0 && (mem_mode & kMemJoint);
  const bool mem_positions = S > 0 && rope && (mem_mode & kMemPositions);
  const int64_t rope_rows = T + (mem_positions ? S : 0);
  dispatch_float(dt, "attention_forward", [&](auto tag) {
    using E = decltype(tag);
    if (B == 0 || T == 0) return;
    FwdParams<E> p{T,
                   H,
                   d,
                   S,
                   H * d,
                   float(1.0 / std::sqrt(double(d))),
                   joint,
                   mem_positions,
                   static_cast<const E*>(qkv),
                   static_cast<const E*>(mem_kv),
                   static_cast<const E*>(gate_logits),
                   nullptr,
                   nullptr,
                   static_cast<E*>(out),
                   lse_self,
                   lse_mem,
                   static_cast<E*>(save_a),
                   static_cast<E*>(save_r)};
    if (rope) rope_table(rope_rows, d, "attention_forward", &p.cos_t, &p.sin_t);
    with_head_dim(d, [&](auto dm) { launch_forward_for<decltype(dm)::value>(p, B); });
  });
}

void attention_decode(DType dt, int64_t B, int64_t T, int64_t H, int64_t d, int64_t S, bool rope, int mem_mode,
                      const void* qkv, const int32_t* positions, float* keys, void* values, const float* mem_keys,
                      const void* mem_values, const void* gate_logits, void* out) {
  check_dims(H, d, rope);
  const bool mem_positions = S > 0 && rope && (mem_mode & kMemPositions);
  const int64_t rope_rows = T + (mem_positions ? S : 0);
  dispatch_float(dt, "attention_decode", [&](auto tag) {
    using E = decltype(tag);
    if (B == 0) return;
    DecodeParams<E> p{T, H, d, S, H * d, float(1.0 / std::sqrt(double(d))), S > 0 && (mem_mode & kMemJoint) != 0,
                      mem_positions, static_cast<const E*>(qkv), positions, keys, static_cast<E*>(values),
                      mem_keys, static_cast<const E*>(mem_values), static_cast<const E*>(gate_logits), nullptr,
                      nullptr, static_cast<E*>(out)};
    if (rope) rope_table(rope_rows, d, "attention_decode", &p.cos_t, &p.sin_t);
    attention_decode_kernel<E><<<grid_of(B * H, "attention_decode"), kDecodeThreads, 0, stream()>>>(p);
    check_launch("attention_decode");
  });
}

void attention_decode_memory(DType dt, int64_t B, int64_t S, int64_t H, int64_t d, bool rope, int mem_mode,
                             const void* mem_kv, float* mem_keys, void* mem_values) {
  check_dims(H, d, rope);
  const bool rotate = S > 0 && rope && (mem_mode & kMemPositions);
  dispatch_float(dt, "attention_decode_memory", [&](auto tag) {
    using E = decltype(tag);
    if (B == 0 || S == 0) return;
    const float *cos_t = nullptr, *sin_t = nullptr;
    if (rotate) rope_table(S, d, "attention_decode_memory", &cos_t, &sin_t);
    attention_decode_memory_kernel<E><<<grid_of(B * S, "attention_decode_memory"), 256, 0, stream()>>>(
        S, H, int(d), rotate, static_cast<const E*>(mem_kv), cos_t, sin_t, mem_keys, static_cast<E*>(mem_values));
    check_launch("attention_decode_memory");
  });
}

void attention_backward(DType dt, int64_t B, int64_t T, int64_t H, int64_t d, int64_t S, bool rope, int mem_mode,
                        const void* qkv, const void* mem_kv, const void* gate_logits, const void* a_saved,
                        const void* r_saved, const float* lse_self, const float* lse_mem, const void* d_out,
                        void* d_qkv, void* d_mem_kv, void* d_gate_logits) {
  check_dims(H, d, rope);
  const bool joint = S > 0 && (mem_mode & kMemJoint);
  const bool mem_positions = S > 0 && rope && (mem_mode & kMemPositions);
  const int64_t rope_rows = T + (mem_positions ? S : 0);
  dispatch_float(dt, "attention_backward", [&](auto tag) {
    using E = decltype(tag);
    if (B == 0) return;
    if (T == 0) {  // the memory gets no gradient from an empty segment (+0 is all-zero bits in either dtype)
      if (S) {
        check(cudaMemsetAsync(d_mem_kv, 0, size_t(B * S * 2 * H * d) * sizeof(E), stream()), "attention_backward");
      }
      return;
    }
    // Scratch: D_a, D_r and g, each [B, H, T].
    const int64_t rows = aligned(B * H * T);
    float* scratch = static_cast<float*>(reduction_scratch(size_t((S ? 3 : 1) * rows) * sizeof(float)));
    float* dsum_a = scratch;
    float* dsum_r = S ? dsum_a + rows : nullptr;
    float* g = S ? dsum_a + 2 * rows : nullptr;
    BwdParams<E> p{T,
                   H,
                   d,
                   S,
                   H * d,
                   float(1.0 / std::sqrt(double(d))),
                   mem_positions,
                   static_cast<const E*>(qkv),
                   static_cast<const E*>(mem_kv),
                   lse_self,
                   lse_mem,
                   static_cast<const E*>(d_out),
                   nullptr,
                   nullptr,
                   dsum_a,
                   dsum_r,
                   g,
                   static_cast<E*>(d_qkv),
                   static_cast<E*>(d_mem_kv)};
    if (rope) rope_table(rope_rows, d, "attention_backward", &p.cos_t, &p.sin_t);

    const int64_t n_rows = B * T * H;
    backward_rows_kernel<E><<<blocks_for(n_rows, kThreads / 32), kThreads, 0, stream()>>>(
        n_rows, T, H, d, S, joint, lse_self, lse_mem, static_cast<const E*>(a_saved), static_cast<const E*>(r_saved),
        static_cast<const E*>(gate_logits), static_cast<const E*>(d_out), dsum_a, dsum_r, g,
        static_cast<E*>(d_gate_logits));
    check_launch("attention_backward");
    with_head_dim(d, [&](auto dm) { launch_backward_for<decltype(dm)::value>(p, B); });
  });
}

}  // namespace mg::cuda
