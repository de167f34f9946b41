// CUDA kernels of the op family "optim": multi-tensor AdamW and SGD, the global sum of squares
// (gradient norm) and in-place scaling (clipping). As on the CPU, the work is a list of fixed-size
// chunks cut across all the tensors; the chunk descriptors go to the device in one copy and one
// launch covers a whole model (one CUDA block per chunk), like PyTorch's multi_tensor_apply.
#include <algorithm>
#include <cstdint>
#include <mutex>
#include <vector>

#include "kernels.h"
#include "runtime.h"

namespace mg::cuda {
namespace {

constexpr int64_t kChunk = 1 << 16;  // elements per block: enough work to hide a block's start-up
constexpr int kThreads = 256;

struct Chunk {
  float* w;        // the tensor updated (params; or the tensor scaled / summed)
  const float* g;  // its gradient (AdamW, SGD)
  float* m;
  float* v;
  int64_t n;       // elements in this chunk
  float decay, step, bc2;  // AdamW's per-tensor scalars
};

// Device copy of the chunk list, grown on demand and never freed. Reusing it call after call is safe
// because the copy that refills it is queued on stream() behind the kernels that read it.
Chunk* device_chunks(const std::vector<Chunk>& chunks) {
  static std::mutex mu;
  static Chunk* buffer = nullptr;
  static size_t capacity = 0;
  std::lock_guard<std::mutex> lock(mu);
  if (chunks.size() > capacity) {
    if (buffer) {
      synchronize_stream("optim chunk list");
      check(cudaFree(buffer), "optim chunk list");
      buffer = nullptr;
      capacity = 0;
    }
    size_t want = std::max<size_t>(chunks.size(), 1024);
    check(cudaMalloc(&buffer, want * sizeof(Chunk)), "optim chunk list");
    capacity = want;
  }
  // From pageable memory the call returns once the data is staged, so `chunks` may go away after it.
  check(cudaMemcpyAsync(buffer, chunks.data(), chunks.size() * sizeof(Chunk), cudaMemcpyHostToDevice, stream()),
        "optim chunk list");
  return buffer;
}

// Cuts every tensor into chunks of kChunk elements; `fill` sets the per-tensor fields.
template <typename Fill>
std::vector<Chunk> chunks_of(int64_t count, const int64_t* sizes, Fill&& fill) {
  std::vector<Chunk> chunks;
  for (int64_t t = 0; t < count; t++) {
    for (int64_t b = 0; b < sizes[t]; b += kChunk) {
      Chunk c{};
      fill(c, t, b);
      c.n = std::min(kChunk, sizes[t] - b);
      chunks.push_back(c);
    }
  }
  return chunks;
}

// The CPU's arithmetic and rounding order, with every product and sum rounded on its own (no fused
// multiply-add), so both backends give the same bits.
struct AdamW {
  float beta1, beta2, c1, c2, eps;
  __device__ void update(float& w, float g, float& m, float& v, const Chunk& c) const {
    float mi = __fadd_rn(__fmul_rn(beta1, m), __fmul_rn(c1, g));
    float vi = __fadd_rn(__fmul_rn(beta2, v), __fmul_rn(__fmul_rn(c2, g), g));
    m = mi;
    v = vi;
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), c.bc2), eps);
    w = __fsub_rn(__fmul_rn(w, c.decay), __fmul_rn(c.step, __fdiv_rn(mi, denom)));
  }
};

__device__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Memory-bound: 16-byte loads and stores (4 elements a thread) when every stream of the chunk is
// aligned, else one element at a time.
__global__ void adamw_kernel(const Chunk* chunks, AdamW k) {
  const Chunk c = chunks[blockIdx.x];
  int64_t done = 0;
  if (aligned16(c.w) && aligned16(c.g) && aligned16(c.m) && aligned16(c.v)) {
    const int64_t quads = c.n / 4;
    for (int64_t q = threadIdx.x; q < quads; q += blockDim.x) {
      float4 w = reinterpret_cast<float4*>(c.w)[q], g = reinterpret_cast<const float4*>(c.g)[q];
      float4 m = reinterpret_cast<float4*>(c.m)[q], v = reinterpret_cast<float4*>(c.v)[q];
      k.update(w.x, g.x, m.x, v.x, c);
      k.update(w.y, g.y, m.y, v.y, c);
      k.update(w.z, g.z, m.z, v.z, c);
      k.update(w.w, g.w, m.w, v.w, c);
      reinterpret_cast<float4*>(c.w)[q] = w;
      reinterpret_cast<float4*>(c.m)[q] = m;
      reinterpret_cast<float4*>(c.v)[q] = v;
    }
    done = quads * 4;
  }
  for (int64_t i = done + threadIdx.x; i < c.n; i += blockDim.x) k.update(c.w[i], c.g[i], c.m[i], c.v[i], c);
}

__global__ void sgd_kernel(const Chunk* chunks, float lr) {
  const Chunk c = chunks[blockIdx.x];
  for (int64_t i = threadIdx.x; i < c.n; i += blockDim.x) c.w[i] = __fsub_rn(c.w[i], __fmul_rn(lr, c.g[i]));
}

__global__ void scale_kernel(const Chunk* chunks, float factor) {
  const Chunk c = chunks[blockIdx.x];
  for (int64_t i = threadIdx.x; i < c.n; i += blockDim.x) c.w[i] = __fmul_rn(c.w[i], factor);
}

// Σ x² of one chunk per block, in double: each thread's strided sum, then a tree over the block in a
// fixed order, so the result depends only on the chunking, never on scheduling.
__global__ void sum_squares_kernel(const Chunk* chunks, double* partial) {
  __shared__ double sums[kThreads];
  const Chunk c = chunks[blockIdx.x];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < c.n; i += blockDim.x) {
    double x = c.w[i];
    acc += x * x;
  }
  sums[threadIdx.x] = acc;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = sums[0];
}

// The chunk partials in chunk order, by one block: thread t sums partials t, t + 256, …; then the tree.
__global__ void sum_partials_kernel(const double* partial, int64_t count, double* total) {
  __shared__ double sums[kThreads];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  sums[threadIdx.x] = acc;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) *total = sums[0];
}

// One block per chunk; gridDim.x allows 2^31 − 1 blocks, far beyond any model (2^16 elements each).
template <typename Launch>
void launch_chunks(const std::vector<Chunk>& chunks, const char* op, Launch&& launch) {
  if (chunks.empty()) return;
  if (chunks.size() > size_t(0x7fffffff)) fail("%s: %zu chunks is too many", op, chunks.size());
  launch(device_chunks(chunks), unsigned(chunks.size()));
  check_launch(op);
}

}  // namespace

void adamw_step(int64_t count, const int64_t* sizes, float* const* w, const float* const* g, float* const* m,
                float* const* v, const float* decay, const float* step_size, const float* bc2_sqrt, float beta1,
                float beta2, float eps) {
  auto chunks = chunks_of(count, sizes, [&](Chunk& c, int64_t t, int64_t b) {
    c = Chunk{w[t] + b, g[t] + b, m[t] + b, v[t] + b, 0, decay[t], step_size[t], bc2_sqrt[t]};
  });
  launch_chunks(chunks, "adamwStep", [&](const Chunk* dc, unsigned blocks) {
    adamw_kernel<<<blocks, kThreads, 0, stream()>>>(dc, AdamW{beta1, beta2, 1.f - beta1, 1.f - beta2, eps});
  });
}

void sgd_step(int64_t count, const int64_t* sizes, float* const* w, const float* const* g, float lr) {
  auto chunks = chunks_of(count, sizes, [&](Chunk& c, int64_t t, int64_t b) { c.w = w[t] + b, c.g = g[t] + b; });
  launch_chunks(chunks, "sgdStep", [&](const Chunk* dc, unsigned blocks) {
    sgd_kernel<<<blocks, kThreads, 0, stream()>>>(dc, lr);
  });
}

double sum_squares(int64_t count, const int64_t* sizes, const float* const* x) {
  // The kernel only reads through c.w here.
  auto chunks = chunks_of(count, sizes, [&](Chunk& c, int64_t t, int64_t b) { c.w = const_cast<float*>(x[t]) + b; });
  if (chunks.empty()) return 0;
  // Partials, then the total at the end of the same scratch.
  auto* scratch = static_cast<double*>(reduction_scratch((chunks.size() + 1) * sizeof(double)));
  double* total = scratch + chunks.size();
  launch_chunks(chunks, "sumSquares", [&](const Chunk* dc, unsigned blocks) {
    sum_squares_kernel<<<blocks, kThreads, 0, stream()>>>(dc, scratch);
  });
  sum_partials_kernel<<<1, kThreads, 0, stream()>>>(scratch, int64_t(chunks.size()), total);
  check_launch("sumSquares");
  double result = 0;
  check(cudaMemcpyAsync(&result, total, sizeof(double), cudaMemcpyDeviceToHost, stream()), "sumSquares");
  synchronize_stream("sumSquares");
  return result;
}

void scale_tensors(int64_t count, const int64_t* sizes, float* const* x, float factor) {
  auto chunks = chunks_of(count, sizes, [&](Chunk& c, int64_t t, int64_t b) { c.w = x[t] + b; });
  launch_chunks(chunks, "scaleTensors", [&](const Chunk* dc, unsigned blocks) {
    scale_kernel<<<blocks, kThreads, 0, stream()>>>(dc, factor);
  });
}

}  // namespace mg::cuda
