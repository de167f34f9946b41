// Batched GEMM on the GPU for the generic matmul op: a plain shared-memory tiled kernel with float32 FMA
// (64 x 64 tile of C per 256-thread block, 4 x 4 outputs per thread), correct for every shape, transposition
// and batch stride. The model's large GEMMs are the linear layers', on tensor cores in linear.cu; this one
// serves the small products around them (the memory's pointer queries, user code).
#include "elem.cuh"
#include "kernels.h"

namespace mg::cuda {
namespace {

constexpr int BM = 64, BN = 64, BK = 16;  // C tile and the K slice staged in shared memory per step
constexpr int TM = 4, TN = 4;             // outputs per thread: 16 x 16 threads cover the tile
constexpr int kGemmThreads = (BM / TM) * (BN / TN);
constexpr int kMaxGridYZ = 65535;         // gridDim.y and gridDim.z limits: larger M and batch loop
static_assert(BM * BK % kGemmThreads == 0 && BK * BN % kGemmThreads == 0, "tile loads split evenly");

// C[b] = op(A[b]) op(B[b]) + beta C[b]; see kernels.inc for the layouts.
// Thread (ty, tx) owns rows ty + 16 i and columns tx + 16 j of the tile: in the
// inner loop a warp reads two A values (broadcast) and 16 consecutive B values
// (no bank conflicts), and its stores to C are 16 consecutive columns.
template <typename TAB, typename TC>
__global__ void __launch_bounds__(kGemmThreads)
    gemm_kernel(const TAB* a, const TAB* b, TC* c, int64_t batch, int64_t m, int64_t n, int64_t k, bool trans_a,
                bool trans_b, int64_t stride_a, int64_t stride_b, int64_t stride_c, float beta) {
  // +4 columns of padding: where neighbouring threads stage neighbouring k (A
  // stored [M, K], B stored [N, K]), their stores conflict 2-way instead of 16-way.
  __shared__ float As[BK][BM + 4];  // As[kk][i] = op(A)[row0 + i][k0 + kk]
  __shared__ float Bs[BK][BN + 4];  // Bs[kk][j] = op(B)[k0 + kk][col0 + j]
  const int tid = threadIdx.x;
  const int tx = tid % (BN / TN), ty = tid / (BN / TN);
  const int64_t lda = trans_a ? m : k, ldb = trans_b ? k : n;
  const int64_t tiles_m = (m + BM - 1) / BM;
  const int64_t col0 = int64_t(blockIdx.x) * BN;

  // Both loops have the same trip count for every thread of the block, so the
  // barriers inside are reached by all of them.
  for (int64_t bz = blockIdx.z; bz < batch; bz += gridDim.z) {
    const TAB* ab = a + bz * stride_a;
    const TAB* bb = b + bz * stride_b;
    TC* cb = c + bz * stride_c;
    for (int64_t tm = blockIdx.y; tm < tiles_m; tm += gridDim.y) {
      const int64_t row0 = tm * BM;
      float acc[TM][TN] = {};
      for (int64_t k0 = 0; k0 < k; k0 += BK) {
        // Stage the tiles, zero outside the matrices. The thread-to-element map
        // follows the stored layout, so that neighbouring threads read
        // neighbouring addresses.
#pragma unroll
        for (int p = 0; p < BM * BK / kGemmThreads; p++) {
          int e = tid + p * kGemmThreads;
          int i = trans_a ? e % BM : e / BK;   // trans_a: A stored [K, M], walk along M
          int kk = trans_a ? e / BM : e % BK;  // else: A stored [M, K], walk along K
          int64_t gi = row0 + i, gk = k0 + kk;
          float v = 0.f;
          if (gi < m && gk < k) v = load(ab + (trans_a ? gk * lda + gi : gi * lda + gk));
          As[kk][i] = v;
        }
#pragma unroll
        for (int p = 0; p < BK * BN / kGemmThreads; p++) {
          int e = tid + p * kGemmThreads;
          int j = trans_b ? e / BK : e % BN;   // trans_b: B stored [N, K], walk along K
          int kk = trans_b ? e % BK : e / BN;  // else: B stored [K, N], walk along N
          int64_t gj = col0 + j, gk = k0 + kk;
          float v = 0.f;
          if (gj < n && gk < k) v = load(bb + (trans_b ? gj * ldb + gk : gk * ldb + gj));
          Bs[kk][j] = v;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk++) {
          float av[TM], bv[TN];
#pragma unroll
          for (int i = 0; i < TM; i++) av[i] = As[kk][ty + i * (BM / TM)];
#pragma unroll
          for (int j = 0; j < TN; j++) bv[j] = Bs[kk][tx + j * (BN / TN)];
#pragma unroll
          for (int i = 0; i < TM; i++) {
#pragma unroll
            for (int j = 0; j < TN; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
          }
        }
        __syncthreads();  // before the next step overwrites the tiles
      }
#pragma unroll
      for (int i = 0; i < TM; i++) {
        int64_t gi = row0 + ty + i * (BM / TM);
        if (gi >= m) continue;
#pragma unroll
        for (int j = 0; j < TN; j++) {
          int64_t gj = col0 + tx + j * (BN / TN);
          if (gj >= n) continue;
          TC* p = cb + gi * n + gj;
          float v = acc[i][j];
          if (beta != 0.f) v = fmaf(beta, load(p), v);  // C is not read when beta is 0: it may hold NaNs
          store(p, v);
        }
      }
    }
  }
}

}  // namespace

void matmul(DType ab_dtype, const void* a, const void* b, DType c_dtype, void* c, int64_t batch, int64_t m, int64_t n,
            int64_t k, bool trans_a, bool trans_b, int64_t stride_a, int64_t stride_b, int64_t stride_c, float beta) {
  MG_CHECK(c_dtype == DType::F32 || c_dtype == DType::BF16, "matmul: output dtype %s is not supported",
           dtype_name(c_dtype));
  if (batch <= 0 || m <= 0 || n <= 0) return;
  // Batches run concurrently here, so a C shared across the batch would be a race.
  MG_CHECK(batch == 1 || stride_c != 0, "matmul: strideC is 0 with batch %lld: every batch would write the same C",
           (long long)batch);
  int64_t tiles_n = (n + BN - 1) / BN, tiles_m = (m + BM - 1) / BM;
  MG_CHECK(tiles_n <= INT32_MAX, "matmul: n = %lld is too large", (long long)n);
  dim3 grid(unsigned(tiles_n), unsigned(std::min<int64_t>(tiles_m, kMaxGridYZ)),
            unsigned(std::min<int64_t>(batch, kMaxGridYZ)));
  cudaStream_t s = stream();
  dispatch_float(ab_dtype, "matmul", [&](auto tag) {
    using TAB = decltype(tag);
    const TAB* ap = static_cast<const TAB*>(a);
    const TAB* bp = static_cast<const TAB*>(b);
    if (c_dtype == DType::F32)
      gemm_kernel<<<grid, kGemmThreads, 0, s>>>(ap, bp, static_cast<float*>(c), batch, m, n, k, trans_a, trans_b,
                                                stride_a, stride_b, stride_c, beta);
    else
      gemm_kernel<<<grid, kGemmThreads, 0, s>>>(ap, bp, static_cast<uint16_t*>(c), batch, m, n, k, trans_a, trans_b,
                                                stride_a, stride_b, stride_c, beta);
  });
  check_launch("matmul");
}

}  // namespace mg::cuda
