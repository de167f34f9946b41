// Reductions on the GPU: sums over one axis and the row softmax with its
// backward, matching native/cpu/reduce.cpp. Sums accumulate in double, like the
// CPU reference: they are memory-bound, so the wider adds cost nothing visible.
// A sum with too few outputs to fill the GPU is split in two passes (partial sums
// into a scratch buffer, then one pass adding them in a fixed order), so results
// are deterministic: no atomics.
#include <cmath>

#include "elem.cuh"
#include "kernels.h"

namespace mg::cuda {
namespace {

// ---- sum_axis ----

// Split only when fewer warps (inner == 1) or threads (inner > 1) than this would
// run: about a full H100 (132 SMs x 2048 threads) with no second pass otherwise.
constexpr int64_t kTargetThreads = int64_t(1) << 17;
constexpr int64_t kTargetWarps = kTargetThreads / 32;
constexpr int64_t kMinRun = 1024;      // elements a warp sums at least, when split (inner == 1)
constexpr int64_t kMinRows = 32;       // rows a thread sums at least, when split (inner > 1)
// Rows this short (inner == 1) are summed a thread each, by the columns kernel:
// a warp per row would leave most of its lanes idle.
constexpr int64_t kShortRow = 16;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// inner == 1. Output j (of outer * splits) is the sum of the contiguous run
// x[o * reduce + s * chunk, min(o * reduce + (s + 1) * chunk, (o + 1) * reduce)),
// o = j / splits, s = j % splits; one warp per run, coalesced.
template <typename In, typename Out>
__global__ void sum_runs_kernel(const In* x, Out* y, int64_t outer, int64_t reduce, int64_t splits, int64_t chunk,
                                bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int64_t runs = outer * splits;
  // The loop bound is the same for the 32 lanes of a warp, so the shuffles see all of them.
  for (int64_t j = global_thread() >> 5; j < runs; j += grid_threads() >> 5) {
    int64_t o = j / splits, s = j - o * splits;
    int64_t lo = s * chunk, hi = min(reduce, lo + chunk);
    const In* row = x + o * reduce;
    double acc = 0;
    for (int64_t r = lo + lane; r < hi; r += 32) acc += load(row + r);
    acc = warp_sum(acc);
    if (lane == 0) {
      if (accumulate) acc += load(y + j);
      store(y + j, acc);
    }
  }
}

// inner > 1 (or short rows). Output j = (o * splits + s) * inner + i is the sum over rows
// r in [s * chunk, min((s + 1) * chunk, reduce)) of x[(o * reduce + r) * inner + i];
// one thread per output, neighbouring threads reading neighbouring columns.
template <typename In, typename Out>
__global__ void sum_columns_kernel(const In* x, Out* y, int64_t outer, int64_t reduce, int64_t inner, int64_t splits,
                                   int64_t chunk, bool accumulate) {
  const int64_t total = outer * splits * inner;
  for (int64_t j = global_thread(); j < total; j += grid_threads()) {
    int64_t t = j / inner, i = j - t * inner;
    int64_t o = t / splits, s = t - o * splits;
    int64_t lo = s * chunk, hi = min(reduce, lo + chunk);
    const In* p = x + (o * reduce + lo) * inner + i;
    double acc = 0;
    for (int64_t r = lo; r < hi; r++, p += inner) acc += load(p);
    if (accumulate) acc += load(y + j);
    store(y + j, acc);
  }
}

// ---- softmax ----

// Online softmax (Milakov & Gimelshein): a running max and the sum of exp(v - max),
// so a row is read once for both. -inf entries (masked) add nothing; a NaN makes
// the sum NaN, so a row with a NaN is all NaN, as on the CPU.
struct MaxSum {
  float max;
  float sum;
};

__device__ __forceinline__ void add_element(MaxSum& a, float v) {
  if (v > a.max) {
    a.sum = a.sum * expf(a.max - v) + 1.f;  // the first finite v: expf(-inf) = 0
    a.max = v;
  } else if (v != -INFINITY) {
    a.sum += expf(v - a.max);
  }
}

// Symmetric in (a, b) up to the order of one addition, which is commutative, so
// every lane of a butterfly reduction ends with the same bits.
__device__ __forceinline__ void combine(MaxSum& a, MaxSum b) {
  if (b.max > a.max) {
    a.sum = a.sum * expf(a.max - b.max) + b.sum;
    a.max = b.max;
  } else if (b.max != -INFINITY) {
    a.sum += b.sum * expf(b.max - a.max);
  } else {
    a.sum += b.sum;  // 0, or a NaN to pass on
  }
}

__device__ __forceinline__ MaxSum warp_combine(MaxSum a) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    MaxSum b{__shfl_xor_sync(kFullMask, a.max, offset), __shfl_xor_sync(kFullMask, a.sum, offset)};
    combine(a, b);
  }
  return a;
}

__device__ __forceinline__ MaxSum block_combine(MaxSum a, MaxSum* shared) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  a = warp_combine(a);
  if (lane == 0) shared[warp] = a;
  __syncthreads();
  if (warp == 0) {
    a = warp_combine(lane < warps ? shared[lane] : MaxSum{-INFINITY, 0.f});
    if (lane == 0) shared[0] = a;
  }
  __syncthreads();
  a = shared[0];
  __syncthreads();  // shared is written again for the next row
  return a;
}

// Rows up to kWarpRowMax columns: one warp per row. Longer rows: one block per row.
constexpr int64_t kWarpRowMax = 1024;
constexpr int kRowBlock = 256;

// y may alias x: every element is read in the first pass before the reduction
// (which waits for all lanes) and written only after it.
template <typename T>
__global__ void softmax_warp_kernel(const T* x, T* y, int64_t rows, int64_t cols) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = global_thread() >> 5; r < rows; r += grid_threads() >> 5) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    MaxSum a{-INFINITY, 0.f};
    for (int64_t j = lane; j < cols; j += 32) add_element(a, load(xr + j));
    a = warp_combine(a);
    float inv = 1.f / a.sum;
    for (int64_t j = lane; j < cols; j += 32) store(yr + j, expf(load(xr + j) - a.max) * inv);
  }
}

template <typename T>
__global__ void softmax_block_kernel(const T* x, T* y, int64_t rows, int64_t cols) {
  __shared__ MaxSum shared[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {  // the same trip count for the whole block
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    MaxSum a{-INFINITY, 0.f};
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) add_element(a, load(xr + j));
    a = block_combine(a, shared);
    float inv = 1.f / a.sum;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) store(yr + j, expf(load(xr + j) - a.max) * inv);
  }
}

// dx = y * (dy - sum(y * dy)); dx may alias dy (read before the reduction, written after).
template <typename T>
__global__ void softmax_backward_warp_kernel(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = global_thread() >> 5; r < rows; r += grid_threads() >> 5) {
    const T* yr = y + r * cols;
    const T* gr = dy + r * cols;
    T* dr = dx + r * cols;
    float dot = 0.f;
    for (int64_t j = lane; j < cols; j += 32) dot += load(yr + j) * load(gr + j);
    dot = warp_sum(dot);
    for (int64_t j = lane; j < cols; j += 32) store(dr + j, load(yr + j) * (load(gr + j) - dot));
  }
}

template <typename T>
__global__ void softmax_backward_block_kernel(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols) {
  __shared__ float shared[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* yr = y + r * cols;
    const T* gr = dy + r * cols;
    T* dr = dx + r * cols;
    float dot = 0.f;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) dot += load(yr + j) * load(gr + j);
    dot = block_sum(dot, shared);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) store(dr + j, load(yr + j) * (load(gr + j) - dot));
  }
}

}  // namespace

void sum_axis(DType dt, const void* x, void* y, int64_t outer, int64_t reduce, int64_t inner, bool accumulate) {
  if (outer <= 0 || inner <= 0) return;
  cudaStream_t s = stream();
  dispatch_float(dt, "sumAxis", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x);
    T* yp = static_cast<T*>(y);
    if (inner == 1 && reduce > kShortRow) {
      int64_t splits = 1;
      if (outer < kTargetWarps) splits = std::min(ceil_div(kTargetWarps, outer), ceil_div(reduce, kMinRun));
      if (splits <= 1) {
        sum_runs_kernel<<<blocks_for(outer * 32), kThreads, 0, s>>>(xp, yp, outer, reduce, int64_t(1), reduce,
                                                                    accumulate);
        return;
      }
      int64_t chunk = ceil_div(reduce, splits);
      splits = ceil_div(reduce, chunk);  // no empty runs
      // outer * splits < kTargetWarps + outer < 2 * kTargetWarps doubles.
      double* partial = static_cast<double*>(reduction_scratch(size_t(outer * splits) * sizeof(double)));
      sum_runs_kernel<<<blocks_for(outer * splits * 32), kThreads, 0, s>>>(xp, partial, outer, reduce, splits, chunk,
                                                                           false);
      check_launch("sumAxis");
      sum_runs_kernel<<<blocks_for(outer * 32), kThreads, 0, s>>>(static_cast<const double*>(partial), yp, outer,
                                                                  splits, int64_t(1), splits, accumulate);
      return;
    }
    int64_t outputs = outer * inner;
    int64_t splits = 1;
    if (outputs < kTargetThreads) splits = std::min(ceil_div(kTargetThreads, outputs), ceil_div(reduce, kMinRows));
    if (splits <= 1) {
      sum_columns_kernel<<<blocks_for(outputs), kThreads, 0, s>>>(xp, yp, outer, reduce, inner, int64_t(1), reduce,
                                                                  accumulate);
      return;
    }
    int64_t chunk = ceil_div(reduce, splits);
    splits = ceil_div(reduce, chunk);
    // outputs * splits < kTargetThreads + outputs < 2 * kTargetThreads doubles (2 MiB).
    double* partial = static_cast<double*>(reduction_scratch(size_t(outputs * splits) * sizeof(double)));
    sum_columns_kernel<<<blocks_for(outputs * splits), kThreads, 0, s>>>(xp, partial, outer, reduce, inner, splits,
                                                                         chunk, false);
    check_launch("sumAxis");
    sum_columns_kernel<<<blocks_for(outputs), kThreads, 0, s>>>(static_cast<const double*>(partial), yp, outer,
                                                                splits, inner, int64_t(1), splits, accumulate);
  });
  check_launch("sumAxis");
}

void softmax_forward(DType dt, const void* x, void* y, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  cudaStream_t s = stream();
  dispatch_float(dt, "softmaxForward", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x);
    T* yp = static_cast<T*>(y);
    if (cols <= kWarpRowMax)
      softmax_warp_kernel<<<blocks_for(rows * 32), kThreads, 0, s>>>(xp, yp, rows, cols);
    else
      softmax_block_kernel<<<blocks_for(rows, 1), kRowBlock, 0, s>>>(xp, yp, rows, cols);
  });
  check_launch("softmaxForward");
}

void softmax_backward(DType dt, const void* y, const void* dy, void* dx, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  cudaStream_t s = stream();
  dispatch_float(dt, "softmaxBackward", [&](auto tag) {
    using T = decltype(tag);
    const T* yp = static_cast<const T*>(y);
    const T* gp = static_cast<const T*>(dy);
    T* dp = static_cast<T*>(dx);
    if (cols <= kWarpRowMax)
      softmax_backward_warp_kernel<<<blocks_for(rows * 32), kThreads, 0, s>>>(yp, gp, dp, rows, cols);
    else
      softmax_backward_block_kernel<<<blocks_for(rows, 1), kRowBlock, 0, s>>>(yp, gp, dp, rows, cols);
  });
  check_launch("softmaxBackward");
}

}  // namespace mg::cuda
