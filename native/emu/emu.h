// The CUDA emulator's core: what the CUDA sources (native/cuda) run on when the emulated addon compiles them with
// the host C++ compiler. A grid runs block by block on the thread pool; each block's threads are fibers with their
// own stacks (real per-thread state), switched only at __syncthreads and at warp collectives (shuffles, mma,
// ldmatrix), so a barrier is a real barrier and a warp exchanges values only when all its lanes have arrived.
// Between two barriers the threads run in an order that changes from interval to interval: warp by warp with
// each warp as far ahead as it can go (forward, then reversed), or all warps in lockstep (lane-interleaved), so a
// missing barrier reads another order's data: races show as wrong results, deterministically. Shared memory is one arena per block, poisoned (all ones: NaN) before each block;
// PTX primitives address it by 32-bit shared addresses, bounds- and alignment-checked. A device error (out of
// bounds, divergent barrier, exited lane in a collective) ends the launch and comes back as a CUDA error with
// a message naming the kernel, block and thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- CUDA's vector and index types (global names, as in the CUDA headers) ----

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

typedef struct mg_emu_stream* cudaStream_t;
typedef struct mg_emu_event* cudaEvent_t;

namespace mg_emu {

// ---- the running thread ----

struct Thread;
struct Worker;

// What the CUDA built-ins read: set by the scheduler before it resumes a thread.
struct Current {
  Thread* thread = nullptr;
  uint3 block_idx{0, 0, 0};
  dim3 block_dim, grid_dim;
};
extern thread_local Current current;

uint3& thread_idx();  // of current.thread
int lane();           // threadIdx linearized, mod 32

// Ends the launch with this message (plus the kernel, block and thread); thrown inside a kernel.
[[noreturn]] void device_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// ---- synchronization ----

void syncthreads();
// Every lane in `mask` deposits `bytes` (at most kSlotBytes) and waits for the others; returns the base of this
// collective's slots (lane j's deposit at base + j·kSlotBytes), valid until this lane's next collective.
constexpr size_t kSlotBytes = 32;
const unsigned char* warp_exchange(unsigned mask, const void* mine, size_t bytes);

template <typename T>
T slot_value(const unsigned char* base, int lane) {
  T v;
  std::memcpy(&v, base + size_t(lane) * kSlotBytes, sizeof v);
  return v;
}

// ---- shared memory ----

// The block's static __shared__ variable number `id` (the build rewrites each declaration into a call).
void* shared_static(int id, size_t bytes, size_t align);
template <typename T>
T& shared_var(int id, size_t align = alignof(T)) {
  return *static_cast<T*>(shared_static(id, sizeof(T), align < alignof(T) ? alignof(T) : align));
}
// The block's dynamic shared memory (extern __shared__), as many bytes as the launch asked for.
void* shared_dynamic();
// Shared window addresses (what __cvta_generic_to_shared gives and the PTX primitives take).
uint32_t shared_address(const void* p);
// The host pointer of [addr, addr + bytes) in the block's shared memory, checked for bounds and alignment.
unsigned char* shared_pointer(uint32_t addr, size_t bytes, size_t align, const char* what);

// ---- launches ----

struct LaunchDims {
  dim3 grid, block;
  size_t shared_bytes;
  cudaStream_t stream;
  LaunchDims(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr) : grid(g), block(b), shared_bytes(s), stream(st) {}
};

// Runs the grid: entry(closure) on every thread of every block. Returns a cudaError_t value (0 on success).
int run_grid(const char* name, const void* kernel, const LaunchDims& dims, void (*entry)(const void*), const void* closure);

// The launches per kernel since the last call (the emulated addon's emulatorLaunches(), for the report).
std::map<std::string, long long> take_launch_counts();

// "gemm_f32_kernel<true, false>" from the __PRETTY_FUNCTION__ of launch<K> below.
std::string kernel_name_from(const char* pretty);

template <typename F>
struct KernelParams;
template <typename... P>
struct KernelParams<void (*)(P...)> {
  using Tuple = std::tuple<std::remove_cv_t<std::remove_reference_t<P>>...>;
};

// A kernel launch `K<<<dims>>>(args)` where K names one function (explicit template arguments, if any), rewritten
// by the build to launch<&K>(LaunchDims(dims), args). Each thread gets its own copy of the parameters, as on a GPU.
template <auto K, typename... A>
void launch(const LaunchDims& dims, A&&... args) {
  using Tuple = typename KernelParams<decltype(K)>::Tuple;
  const Tuple params(std::forward<A>(args)...);
  static const std::string name = kernel_name_from(__PRETTY_FUNCTION__);
  run_grid(name.c_str(), reinterpret_cast<const void*>(K), dims,
           [](const void* closure) {
             Tuple mine = *static_cast<const Tuple*>(closure);
             std::apply(K, mine);
           },
           &params);
}

// "fill_kernel [T = float]": a kernel named without its template arguments, with the bindings of the host
// function that launches it (from that function's __PRETTY_FUNCTION__).
std::string kernel_name_in(const char* kernel, const char* context);

// A launch whose kernel template arguments are deduced from the arguments (`fill_kernel<<<…>>>(p, n, v)`),
// rewritten to launch_call("fill_kernel", __PRETTY_FUNCTION__, LaunchDims(dims), [](const auto&... a) {
// fill_kernel(a...); }, args): the call deduces them, and copies the arguments into each thread's parameters.
template <typename Call, typename... A>
void launch_call(const char* kernel, const char* context, const LaunchDims& dims, const Call& call, A&&... args) {
  using Tuple = std::tuple<std::decay_t<A>...>;
  struct Closure {
    const Call* call;
    Tuple params;
  };
  const Closure closure{&call, Tuple(std::forward<A>(args)...)};
  const std::string name = kernel_name_in(kernel, context);
  run_grid(name.c_str(), nullptr, dims,
           [](const void* c) {
             const Closure& cl = *static_cast<const Closure*>(c);
             std::apply(*cl.call, cl.params);
           },
           &closure);
}

// Registers `kernel`'s cudaFuncAttributeMaxDynamicSharedMemorySize (launches past 48 KiB need it, as on a GPU).
void set_max_dynamic_shared(const void* kernel, int bytes);

// ---- PTX primitives, emulated from the PTX ISA's definitions (native/cuda/ptx/*.cuh call these) ----

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: d = a·b + c over the warp's fragments.
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16
void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr, bool trans);
// cp.async.cg.shared.global, 16 bytes (src_bytes 0: zero-fill); the data lands only at a wait_group that covers it.
void cp_async16(uint32_t dst, const void* src, int src_bytes);
void cp_async_commit();
void cp_async_wait(int newest_pending);
// st.shared.v4.b32
void st_shared_v4(uint32_t addr, uint32_t a, uint32_t b, uint32_t c, uint32_t d);

// ---- Hopper (MEMGPT_EMU_SM=90): mbarrier, TMA, wgmma ----

// The compute capability the emulated device reports: 80 (default) or 90 (MEMGPT_EMU_SM=90, with TMA and wgmma).
int device_sm();
// Suspends a thread that polls for something another thread must do (an mbarrier phase): it runs again after
// the others, and if no thread makes progress in a whole pass the block is deadlocked (an error).
void spin();
void mbarrier_init(uint32_t bar, uint32_t count);
void mbarrier_arrive(uint32_t bar);
void mbarrier_expect_tx(uint32_t bar, uint32_t bytes);  // then arrive, as mbarrier.arrive.expect_tx
bool mbarrier_try_wait_parity(uint32_t bar, uint32_t parity);
// cp.async.bulk.tensor.2d …tile.mbarrier::complete_tx::bytes: the box at element coordinates (c0, c1) of the
// tensor map into shared memory at dst, 128-byte swizzled, out-of-range elements zero; its bytes complete on bar.
void tma_load_2d(uint32_t dst, const void* map, uint32_t bar, int c0, int c1);
// wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16 (scale-d 1): queued; it reads shared memory and adds into
// d when a wgmma.wait_group covers its commit group (as the hardware may read any time until then).
void wgmma_bf16(float* d, int n, uint64_t desc_a, uint64_t desc_b, bool trans_a, bool trans_b);
void wgmma_commit();
void wgmma_wait(int newest_pending);

// ---- atomics (blocks run in parallel on the thread pool: these are real atomics) ----

template <typename T>
T atomic_add(T* p, T v) {
  if constexpr (std::is_integral_v<T>) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
  } else {
    T old, desired;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do {
      desired = old + v;
    } while (!__atomic_compare_exchange(p, &old, &desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
  }
}

}  // namespace mg_emu
