// The CUDA emulator (see emu.h): fibers and their scheduler, shared memory, the PTX primitives, grid launches
// with their statistics, and the runtime API on host memory.
#include "emu.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "../common/threadpool.h"
#include "include/cuda.h"
#include "include/cuda_runtime.h"

// ---- context switch (x86-64 System V): callee-saved registers, MXCSR and the x87 control word ----

extern "C" void mg_emu_switch(void** save_sp, void* next_sp);
extern "C" void mg_emu_fiber_start();
asm(R"(
.text
.globl mg_emu_switch
.type mg_emu_switch, @function
mg_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size mg_emu_switch, .-mg_emu_switch

.globl mg_emu_fiber_start
.type mg_emu_fiber_start, @function
mg_emu_fiber_start:
  movq %r12, %rdi
  call mg_emu_fiber_main@PLT
  ud2
.size mg_emu_fiber_start, .-mg_emu_fiber_start
)");

namespace mg_emu {

thread_local Current current;

namespace {

struct DeviceError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string format_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

enum class State { Runnable, AtBarrier, AtWarp, Spinning, Done };

struct WgmmaOp {
  float* d;
  int n;
  uint64_t desc_a, desc_b;
  bool trans_a, trans_b;
};

// Asynchronous operations a thread issues, commits in groups and waits for (cp.async, wgmma): wait(N, run) runs
// the operations of every committed group but the newest N, oldest first, and forgets them.
template <typename Op>
struct AsyncQueue {
  std::vector<Op> ops;
  std::vector<size_t> group_ends;  // committed groups: end index into ops
  void clear() {
    ops.clear();
    group_ends.clear();
  }
  void commit() { group_ends.push_back(ops.size()); }
  template <typename Run>
  void wait(int newest_pending, Run&& run) {
    const size_t groups = group_ends.size();
    if (groups <= size_t(newest_pending)) return;
    const size_t done = group_ends[groups - size_t(newest_pending) - 1];
    for (size_t i = 0; i < done; i++) run(ops[i]);
    ops.erase(ops.begin(), ops.begin() + std::ptrdiff_t(done));
    group_ends.erase(group_ends.begin(), group_ends.begin() + std::ptrdiff_t(groups - size_t(newest_pending)));
    for (size_t& end : group_ends) end -= done;
  }
};

struct Mbarrier {
  uint32_t addr, expected, pending, phase;
  int64_t tx;  // transaction bytes still to come in the current phase
};

struct AsyncCopy {
  uint32_t dst;
  const void* src;
  int bytes;  // 16, or 0 for a zero fill
};

}  // namespace

struct Thread {
  void* sp = nullptr;
  uint3 idx{0, 0, 0};
  int linear = 0;
  State state = State::Runnable;
  unsigned mask = 0;     // the lanes of the warp collective this thread waits in
  unsigned gen = 0;      // warp collectives this thread has entered (slot buffer parity)
  AsyncQueue<AsyncCopy> copies;  // cp.async issued and not yet landed
  AsyncQueue<WgmmaOp> wgmmas;    // wgmma issued and not yet waited for
};

namespace {

constexpr size_t kStackBytes = 128 << 10;
constexpr size_t kPage = 4096;
constexpr size_t kMaxThreads = 1024;
constexpr size_t kArenaBytes = 232448;  // 227 KiB, the most one block can have (sm_90)
constexpr unsigned char kPoison = 0xff;  // NaN in float32 and bfloat16

struct WarpSlots {
  alignas(16) unsigned char slot[2][32][kSlotBytes];
};

enum class Order { Forward, Reverse, Interleaved };

}  // namespace

// One per OS thread that runs blocks (the pool's workers and the caller).
struct Worker {
  void* scheduler_sp = nullptr;
  unsigned char* stacks = nullptr;  // kMaxThreads stacks, each below a guard page
  unsigned char* arena = nullptr;   // kArenaBytes, then a guard page
  std::vector<Thread> threads;
  std::vector<WarpSlots> warps;
  // This block's shared memory: statics from the arena's start, the dynamic part ending at the guard page.
  std::vector<std::pair<int, size_t>> statics;  // (declaration id, offset)
  size_t static_top = 0, dynamic_offset = kArenaBytes;
  void (*entry)(const void*) = nullptr;
  const void* closure = nullptr;
  std::string error;
  std::vector<Mbarrier> mbarriers;  // this block's, by shared address
  unsigned long long progress = 0;  // mbarrier events: what a spinning thread may be waiting for

  Worker() {
    const size_t per = kStackBytes + kPage;
    void* s = mmap(nullptr, per * kMaxThreads, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    const size_t lead = kPage - kArenaBytes % kPage;  // so that the arena ends on a page boundary
    void* a = mmap(nullptr, kPage + lead + kArenaBytes + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (s == MAP_FAILED || a == MAP_FAILED) throw std::runtime_error("CUDA emulator: cannot map fiber stacks");
    stacks = static_cast<unsigned char*>(s);
    for (size_t i = 0; i < kMaxThreads; i++) mprotect(stacks + i * per, kPage, PROT_NONE);  // stack overflow guard
    // The arena (1024-byte aligned) ends at a guard page, so an overrun of the dynamic part faults at once; a
    // guard page also lies 1 KiB before its start.
    unsigned char* base = static_cast<unsigned char*>(a);
    mprotect(base, kPage, PROT_NONE);
    arena = base + kPage + lead;
    mprotect(arena + kArenaBytes, kPage, PROT_NONE);
    std::memset(arena, kPoison, kArenaBytes);  // then each block re-poisons only what the one before it used
    threads.resize(kMaxThreads);
    warps.resize(kMaxThreads / 32);
  }
  unsigned char* stack_top(size_t i) { return stacks + i * (kStackBytes + kPage) + kPage + kStackBytes; }
};

namespace {

thread_local Worker* tl_worker = nullptr;

Worker& worker() {
  if (!tl_worker) tl_worker = new Worker();  // kept for the thread's life (pool threads never exit)
  return *tl_worker;
}

std::string format(const char* fmt, va_list ap) {
  char buf[1024];
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  return buf;
}

// Suspends the running thread and returns to its block's scheduler.
void suspend(State state) {
  Thread* t = current.thread;
  t->state = state;
  mg_emu_switch(&t->sp, worker().scheduler_sp);
}

}  // namespace

extern "C" void mg_emu_fiber_main(Thread* t) {
  Worker& w = worker();
  try {
    w.entry(w.closure);
  } catch (const std::exception& e) {
    if (w.error.empty()) w.error = e.what();
  } catch (...) {
    if (w.error.empty()) w.error = "unknown exception";
  }
  t->state = State::Done;
  mg_emu_switch(&t->sp, w.scheduler_sp);
  __builtin_unreachable();
}

uint3& thread_idx() { return current.thread->idx; }
int lane() { return current.thread->linear & 31; }

void device_error(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string msg = format(fmt, ap);
  va_end(ap);
  throw DeviceError(msg);
}

void syncthreads() { suspend(State::AtBarrier); }

const unsigned char* warp_exchange(unsigned mask, const void* mine, size_t bytes) {
  Thread* t = current.thread;
  const int lane = t->linear & 31;
  if (!(mask >> lane & 1u)) device_error("a warp collective whose mask 0x%08x leaves out the calling lane %d", mask, lane);
  WarpSlots& w = worker().warps[size_t(t->linear >> 5)];
  const unsigned buffer = t->gen++ & 1u;
  if (bytes) std::memcpy(w.slot[buffer][lane], mine, bytes);
  t->mask = mask;
  suspend(State::AtWarp);
  return &w.slot[buffer][0][0];
}

// ---- shared memory ----

void* shared_static(int id, size_t bytes, size_t align) {
  Worker& w = worker();
  for (auto& [sid, offset] : w.statics)
    if (sid == id) return w.arena + offset;
  const size_t offset = (w.static_top + align - 1) / align * align;
  if (offset + bytes > w.dynamic_offset)
    device_error("static shared memory (%zu bytes) and dynamic shared memory (%zu bytes) exceed the block's %zu",
                 offset + bytes, kArenaBytes - w.dynamic_offset, kArenaBytes);
  w.statics.push_back({id, offset});
  w.static_top = offset + bytes;
  return w.arena + offset;
}

void* shared_dynamic() { return worker().arena + worker().dynamic_offset; }

uint32_t shared_address(const void* p) {
  Worker& w = worker();
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < w.arena || c > w.arena + kArenaBytes) device_error("__cvta_generic_to_shared of a pointer outside shared memory");
  return uint32_t(c - w.arena);
}

unsigned char* shared_pointer(uint32_t addr, size_t bytes, size_t align, const char* what) {
  Worker& w = worker();
  if (addr % align) device_error("%s: shared address 0x%x is not %zu-byte aligned", what, addr, align);
  // Inside the block's allocation: its statics, or its dynamic part.
  const bool in_static = size_t(addr) + bytes <= w.static_top;
  const bool in_dynamic = addr >= w.dynamic_offset && size_t(addr) + bytes <= kArenaBytes;
  if (!in_static && !in_dynamic)
    device_error("%s: shared bytes [0x%x, 0x%zx) lie outside the block's shared memory (static [0, 0x%zx), dynamic "
                 "[0x%zx, 0x%zx))",
                 what, addr, size_t(addr) + bytes, w.static_top, w.dynamic_offset, kArenaBytes);
  return w.arena + addr;
}

// ---- PTX primitives ----

namespace {
uint16_t half_of(uint32_t word, int h) { return uint16_t(word >> (16 * h)); }
float bf16(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace

void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  struct Frag {
    uint32_t a[4], b[2];
  } mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  const unsigned char* slots = warp_exchange(0xffffffffu, &mine, sizeof mine);
  // PTX ISA, "Matrix Fragments for mma.m16n8k16" (.bf16): groupID g = lane / 4, threadID_in_group t = lane % 4.
  //   A (16x16, row): a[i] holds row g + 8·(i % 2), columns 2t + 8·(i / 2) + {0, 1}.
  //   B (16x8, col):  b[i] holds rows 2t + 8·i + {0, 1}, column g.
  //   C/D (16x8):     c[i] is row g + 8·(i / 2), column 2t + i % 2.
  auto A = [&](int row, int k) {
    const Frag f = slot_value<Frag>(slots, (row % 8) * 4 + (k % 8) / 2);
    return bf16(half_of(f.a[(row / 8) + 2 * (k / 8)], k % 2));
  };
  auto B = [&](int k, int col) {
    const Frag f = slot_value<Frag>(slots, col * 4 + (k % 8) / 2);
    return bf16(half_of(f.b[k / 8], k % 2));
  };
  const int ln = lane(), g = ln >> 2, t = ln & 3;
  for (int i = 0; i < 4; i++) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    double sum = 0;  // bf16 products are exact in double; the tensor core adds them at least this well
    for (int k = 0; k < 16; k++) sum += double(A(row, k)) * double(B(k, col));
    d[i] = float(double(d[i]) + sum);
  }
}

void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr, bool trans) {
  const unsigned char* slots = warp_exchange(0xffffffffu, &addr, sizeof addr);
  // PTX ISA, "ldmatrix": lane l supplies the address of row l % 8 of matrix l / 8 (16 bytes: 8 b16 elements).
  // Without .trans lane l receives, of each matrix, row l / 4, elements 2·(l % 4) + {0, 1}; with .trans
  // element l / 4 of rows 2·(l % 4) + {0, 1}.
  const int ln = lane();
  for (int m = 0; m < 4; m++) {
    auto row = [&](int i) {
      return shared_pointer(slot_value<uint32_t>(slots, 8 * m + i), 16, 16, trans ? "ldmatrix.trans" : "ldmatrix");
    };
    uint16_t lo, hi;
    if (!trans) {
      const unsigned char* p = row(ln / 4);
      std::memcpy(&lo, p + 4 * (ln % 4), 2);
      std::memcpy(&hi, p + 4 * (ln % 4) + 2, 2);
    } else {
      std::memcpy(&lo, row(2 * (ln % 4)) + 2 * (ln / 4), 2);
      std::memcpy(&hi, row(2 * (ln % 4) + 1) + 2 * (ln / 4), 2);
    }
    r[m] = uint32_t(lo) | uint32_t(hi) << 16;
  }
}

void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  shared_pointer(dst, 16, 16, "cp.async");  // checked when issued
  if (src_bytes != 0 && src_bytes != 16) device_error("cp.async: src-size %d (only 0 and 16 are used)", src_bytes);
  if (src_bytes && reinterpret_cast<uintptr_t>(src) % 16) device_error("cp.async: global source not 16-byte aligned");
  current.thread->copies.ops.push_back({dst, src, src_bytes});
}

void cp_async_commit() { current.thread->copies.commit(); }

void cp_async_wait(int newest_pending) {
  current.thread->copies.wait(newest_pending, [](const AsyncCopy& c) {
    unsigned char* dst = shared_pointer(c.dst, 16, 16, "cp.async");
    if (c.bytes) std::memcpy(dst, c.src, 16);
    else std::memset(dst, 0, 16);
  });
}

void st_shared_v4(uint32_t addr, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  const uint32_t v[4] = {a, b, c, d};
  std::memcpy(shared_pointer(addr, 16, 16, "st.shared.v4"), v, 16);
}

// ---- Hopper: mbarrier, TMA, wgmma ----

int device_sm() {
  static const int sm = [] {
    const char* s = std::getenv("MEMGPT_EMU_SM");
    return s && !std::strcmp(s, "90") ? 90 : 80;
  }();
  return sm;
}

void spin() { suspend(State::Spinning); }

namespace {

Mbarrier& mbarrier_at(uint32_t bar, const char* what) {
  shared_pointer(bar, 8, 8, what);
  for (Mbarrier& m : worker().mbarriers)
    if (m.addr == bar) return m;
  device_error("%s: no mbarrier was initialized at shared address 0x%x", what, bar);
}

// A phase completes when all its expected arrivals have come and no transaction bytes are outstanding.
void mbarrier_settle(Mbarrier& m) {
  if (m.pending == 0 && m.tx == 0) {
    m.phase++;
    m.pending = m.expected;
  }
  worker().progress++;
}

// What the emulated cuTensorMapEncodeTiled stores in a CUtensorMap (128 bytes).
struct TensorMap {
  uint64_t magic;
  const unsigned char* base;
  uint64_t dims[2];
  uint64_t row_stride;  // bytes between rows (dimension 1)
  uint32_t box[2];
  uint32_t elem_bytes;
  uint32_t swizzle;
};
constexpr uint64_t kTensorMapMagic = 0x6d67656d75746d61ull;  // "mgemutma"
static_assert(sizeof(TensorMap) <= sizeof(CUtensorMap), "fits the opaque map");

// The 128-byte swizzle, on absolute shared addresses: bits [4, 7) XOR bits [7, 10) (PTX ISA and CUDA's
// CU_TENSOR_MAP_SWIZZLE_128B: 16-byte chunk c of a 128-byte row r within each 1024 bytes lands at c ^ (r % 8)).
uint32_t swizzle128(uint32_t addr) { return addr ^ (((addr >> 7) & 7u) << 4); }

}  // namespace

void mbarrier_init(uint32_t bar, uint32_t count) {
  shared_pointer(bar, 8, 8, "mbarrier.init");
  if (count == 0) device_error("mbarrier.init with a count of 0");
  auto& list = worker().mbarriers;
  for (Mbarrier& m : list)
    if (m.addr == bar) {
      m = {bar, count, count, 0, 0};
      return;
    }
  list.push_back({bar, count, count, 0, 0});
}

void mbarrier_arrive(uint32_t bar) {
  Mbarrier& m = mbarrier_at(bar, "mbarrier.arrive");
  if (m.pending == 0) device_error("mbarrier.arrive at 0x%x: more arrivals than its count %u", bar, m.expected);
  m.pending--;
  mbarrier_settle(m);
}

void mbarrier_expect_tx(uint32_t bar, uint32_t bytes) {
  Mbarrier& m = mbarrier_at(bar, "mbarrier.arrive.expect_tx");
  m.tx += bytes;
  mbarrier_arrive(bar);
}

bool mbarrier_try_wait_parity(uint32_t bar, uint32_t parity) {
  // try_wait.parity p: true once the phase of parity p has completed, i.e. the current phase's parity is not p.
  return (mbarrier_at(bar, "mbarrier.try_wait.parity").phase & 1u) != (parity & 1u);
}

void tma_load_2d(uint32_t dst, const void* map_ptr, uint32_t bar, int c0, int c1) {
  TensorMap map;
  std::memcpy(&map, map_ptr, sizeof map);
  if (map.magic != kTensorMapMagic) device_error("cp.async.bulk.tensor with a tensor map the encoder did not make");
  const uint32_t row_bytes = map.box[0] * map.elem_bytes;
  if (map.swizzle != CU_TENSOR_MAP_SWIZZLE_128B || row_bytes != 128)
    device_error("cp.async.bulk.tensor: only 128-byte box rows with the 128-byte swizzle are emulated");
  if (dst % 1024) device_error("cp.async.bulk.tensor: a 128-byte-swizzled box at shared 0x%x, not 1024-byte aligned", dst);
  shared_pointer(dst, size_t(row_bytes) * map.box[1], 128, "cp.async.bulk.tensor");
  for (uint32_t r = 0; r < map.box[1]; r++) {
    for (uint32_t e = 0; e < map.box[0]; e++) {
      const int64_t x = int64_t(c0) + e, y = int64_t(c1) + r;
      const uint32_t logical = dst + r * row_bytes + e * map.elem_bytes;
      unsigned char* to = shared_pointer(swizzle128(logical), map.elem_bytes, map.elem_bytes, "cp.async.bulk.tensor");
      if (x >= 0 && y >= 0 && uint64_t(x) < map.dims[0] && uint64_t(y) < map.dims[1])
        std::memcpy(to, map.base + uint64_t(y) * map.row_stride + uint64_t(x) * map.elem_bytes, map.elem_bytes);
      else
        std::memset(to, 0, map.elem_bytes);  // out of range: zero, and still counted in the bytes
    }
  }
  Mbarrier& m = mbarrier_at(bar, "cp.async.bulk.tensor");
  m.tx -= int64_t(row_bytes) * map.box[1];
  mbarrier_settle(m);
}

namespace {

// The byte address of element (mn, k) of a wgmma operand in shared memory, from its matrix descriptor (PTX ISA,
// "Matrix Descriptor Format", and the canonical layouts of the swizzled modes; in CUTLASS's notation, in units of
// 16-byte rows of T = 8 bf16, for a swizzle of W = 128, 64 or 32 bytes (S = W / 16 rows):
//   K-major:  Swizzle<log2 S,4,3> o ((8,m),(T,2)) : ((S·T,SBO),(1,T))        8 rows W bytes apart, groups of 8 SBO apart
//   MN-major: Swizzle<log2 S,4,3> o ((T,S,m),(8,k)) : ((1,T,LBO),(S·T,SBO))  W bytes of MN contiguous, then LBO; 8 K
//                                                                           rows W bytes apart, then SBO.)
uint32_t operand_address(uint64_t desc, bool mn_major, int mn, int k) {
  const uint32_t start = uint32_t(desc & 0x3fff) << 4;
  const uint32_t lbo = uint32_t(desc >> 16 & 0x3fff) << 4;
  const uint32_t sbo = uint32_t(desc >> 32 & 0x3fff) << 4;
  const uint32_t base_offset = uint32_t(desc >> 49 & 7), layout = uint32_t(desc >> 62);
  if (layout == 0) device_error("wgmma: an unswizzled (interleaved) descriptor is not emulated");
  if (base_offset != 0) device_error("wgmma: descriptor base offset %u (only 0 is emulated)", base_offset);
  const uint32_t width = layout == 1 ? 128 : layout == 2 ? 64 : 32, per_row = width / 2;  // bytes, bf16 elements
  const uint32_t addr = mn_major ? start + uint32_t(mn) % per_row * 2 + uint32_t(mn) / per_row * lbo +
                                       uint32_t(k % 8) * width + uint32_t(k / 8) * sbo
                                 : start + uint32_t(mn % 8) * width + uint32_t(mn / 8) * sbo + uint32_t(k) * 2;
  // Swizzle<B,4,3>: the B bits above bit 7 XOR into the 16-byte chunk index (B = 3, 2, 1 for 128, 64, 32 bytes).
  const uint32_t bits = layout == 1 ? 7u : layout == 2 ? 3u : 1u;
  return addr ^ (((addr >> 7) & bits) << 4);
}

float operand(uint64_t desc, bool mn_major, int mn, int k) {
  uint16_t h;
  std::memcpy(&h, shared_pointer(operand_address(desc, mn_major, mn, k), 2, 2, "wgmma operand"), 2);
  return bf16(h);
}

// One m64nNk16: this thread's accumulators (PTX ISA, wgmma D fragment for .f32: warp w of the warpgroup holds
// rows 16w + g and 16w + g + 8, g = lane / 4; d[4j + i] is row 16w + g + 8·(i / 2), column 8j + 2·(lane % 4) + i % 2).
void run_wgmma(const WgmmaOp& op, int tw) {
  const int warp = tw / 32, ln = tw % 32;
  float a[2][16];
  for (int h = 0; h < 2; h++)
    for (int k = 0; k < 16; k++) a[h][k] = operand(op.desc_a, op.trans_a, 16 * warp + ln / 4 + 8 * h, k);
  for (int j = 0; j < op.n / 8; j++) {
    for (int c = 0; c < 2; c++) {
      const int col = 8 * j + 2 * (ln % 4) + c;
      float b[16];
      for (int k = 0; k < 16; k++) b[k] = operand(op.desc_b, op.trans_b, col, k);
      for (int h = 0; h < 2; h++) {
        double sum = 0;
        for (int k = 0; k < 16; k++) sum += double(a[h][k]) * double(b[k]);
        float& out = op.d[4 * j + 2 * h + c];
        out = float(double(out) + sum);
      }
    }
  }
}

}  // namespace

void wgmma_bf16(float* d, int n, uint64_t desc_a, uint64_t desc_b, bool trans_a, bool trans_b) {
  current.thread->wgmmas.ops.push_back({d, n, desc_a, desc_b, trans_a, trans_b});
}

void wgmma_commit() { current.thread->wgmmas.commit(); }

void wgmma_wait(int newest_pending) {
  const int tw = current.thread->linear % 128;
  current.thread->wgmmas.wait(newest_pending, [tw](const WgmmaOp& op) { run_wgmma(op, tw); });
}

// ---- launches ----

namespace {

std::mutex g_mu;
std::map<std::string, long long> g_launches;         // kernel → launches, for the report
std::map<const void*, int> g_max_dynamic_shared;     // cudaFuncAttributeMaxDynamicSharedMemorySize
std::atomic<unsigned long long> g_launch_count{0};
cudaError_t g_last_error = cudaSuccess;
std::string g_last_message;

int env_int(const char* name, int fallback) {
  const char* s = std::getenv(name);
  return s && *s ? std::atoi(s) : fallback;
}

// MEMGPT_EMU_SCHEDULE: forward, reverse, interleaved, or rotate (the default: a different order each barrier
// interval and each launch).
int schedule_mode() {
  static const int mode = [] {
    const char* s = std::getenv("MEMGPT_EMU_SCHEDULE");
    if (!s || !*s || !std::strcmp(s, "rotate")) return -1;
    if (!std::strcmp(s, "forward")) return 0;
    if (!std::strcmp(s, "reverse")) return 1;
    if (!std::strcmp(s, "interleaved")) return 2;
    std::fprintf(stderr, "memgpt: MEMGPT_EMU_SCHEDULE=%s is not forward, reverse, interleaved or rotate\n", s);
    return -1;
  }();
  return mode;
}

void fill_order(std::vector<int>& order, int n, Order o) {
  order.resize(size_t(n));
  if (o == Order::Forward) {
    for (int i = 0; i < n; i++) order[size_t(i)] = i;
  } else if (o == Order::Reverse) {
    for (int i = 0; i < n; i++) order[size_t(i)] = n - 1 - i;
  } else {  // lane-major across warps: lane 0 of every warp, then lane 1, …
    int k = 0;
    for (int lane = 0; lane < 32; lane++)
      for (int w = 0; w * 32 + lane < n; w++) order[size_t(k++)] = w * 32 + lane;
  }
}

std::string state_summary(const Worker& w, int n) {
  int runnable = 0, barrier = 0, warp = 0, done = 0;
  for (int i = 0; i < n; i++) {
    switch (w.threads[size_t(i)].state) {
      case State::Runnable: runnable++; break;
      case State::AtBarrier: barrier++; break;
      case State::AtWarp: warp++; break;
      case State::Spinning: break;
      case State::Done: done++; break;
    }
  }
  char buf[160];
  std::snprintf(buf, sizeof buf, "%d threads at __syncthreads, %d in a warp collective, %d exited", barrier, warp, done);
  return buf;
}

// Runs one block to completion; "" or the error.
std::string run_block(Worker& w, uint3 block, const LaunchDims& dims, unsigned long long launch_index) {
  const int n = int(dims.block.x * dims.block.y * dims.block.z);
  current.block_idx = block;
  current.block_dim = dims.block;
  current.grid_dim = dims.grid;
  // Fresh shared memory: poison again what the previous block used (its statics and its dynamic part; nothing
  // else is reachable), not all 227 KiB, which for grids of many small blocks was most of the launch's time.
  std::memset(w.arena, kPoison, w.static_top);
  std::memset(w.arena + w.dynamic_offset, kPoison, kArenaBytes - w.dynamic_offset);
  const size_t dynamic_bytes = (dims.shared_bytes + 15) / 16 * 16;
  w.dynamic_offset = kArenaBytes - dynamic_bytes;
  w.statics.clear();
  w.static_top = 0;
  w.error.clear();
  w.mbarriers.clear();
  for (int i = 0; i < n; i++) {
    Thread& t = w.threads[size_t(i)];
    t.linear = i;
    t.idx = {unsigned(i) % dims.block.x, unsigned(i) / dims.block.x % dims.block.y,
             unsigned(i) / (dims.block.x * dims.block.y)};
    t.state = State::Runnable;
    t.gen = 0;
    t.copies.clear();
    t.wgmmas.clear();
    // The first switch into the thread "returns" into mg_emu_fiber_start with r12 = the thread.
    auto* top = reinterpret_cast<uint64_t*>(w.stack_top(size_t(i)));
    uint64_t* sp = top - 8;
    uint32_t mxcsr = 0;
    uint16_t fpu = 0;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpu));
    sp[0] = uint64_t(mxcsr) | uint64_t(fpu) << 32;
    sp[1] = 0;                                   // r15
    sp[2] = 0;                                   // r14
    sp[3] = 0;                                   // r13
    sp[4] = reinterpret_cast<uint64_t>(&t);      // r12
    sp[5] = 0;                                   // rbx
    sp[6] = 0;                                   // rbp
    sp[7] = reinterpret_cast<uint64_t>(&mg_emu_fiber_start);
    t.sp = sp;
  }
  static thread_local std::vector<int> order[3];
  if (order[0].size() != size_t(n))
    for (int o = 0; o < 3; o++) fill_order(order[o], n, Order(o));
  const int fixed = schedule_mode();
  // Warp `base / 32` goes on once every lane of its collective has arrived: 1 released, 0 not yet, -1 an error.
  std::string err;
  auto release_warp = [&](int base) -> int {
    const int lanes = std::min(32, n - base);
    int waiting = -1;
    for (int l = 0; l < lanes; l++)
      if (w.threads[size_t(base + l)].state == State::AtWarp) waiting = l;
    if (waiting < 0) return 0;
    const unsigned mask = w.threads[size_t(base + waiting)].mask;
    bool ready = true;
    for (int l = 0; l < lanes; l++) {
      const Thread& t = w.threads[size_t(base + l)];
      const bool in = mask >> l & 1u;
      if (t.state == State::AtWarp && t.mask != mask) {
        err = format_error("lanes of warp %d wait in warp collectives with different masks (0x%08x, 0x%08x)", base / 32,
                           t.mask, mask);
        return -1;
      }
      if (in && t.state == State::Done) {
        err = format_error("warp %d: lane %d exited, but a warp collective with mask 0x%08x waits for it", base / 32, l,
                           mask);
        return -1;
      }
      if (in && t.state != State::AtWarp) ready = false;
    }
    if (lanes < 32 && (mask >> lanes) != 0) {
      err = format_error("warp %d has %d lanes, but a warp collective's mask is 0x%08x", base / 32, lanes, mask);
      return -1;
    }
    if (!ready) return 0;
    for (int l = 0; l < lanes; l++)
      if (mask >> l & 1u) w.threads[size_t(base + l)].state = State::Runnable;
    return 1;
  };
  for (unsigned long long phase = 0;; phase++) {
    // Forward and reverse let each warp run as far as it can before the next one starts (warp collectives go on
    // as soon as their warp has arrived): the most skew between warps, one way and the other. Interleaved runs
    // lane-major across warps and releases collectives only when every thread has stopped: warps in lockstep.
    const Order mode = Order(fixed >= 0 ? fixed : int((launch_index + phase) % 3));
    const auto& ord = order[int(mode)];
    const bool eager = mode != Order::Interleaved;
    const unsigned long long progress_before = w.progress;
    bool moved = false;  // a thread stopped anywhere but in a spin
    for (size_t k = 0; k < ord.size(); k++) {
      Thread& t = w.threads[size_t(ord[k])];
      if (t.state != State::Runnable) continue;
      current.thread = &t;
      mg_emu_switch(&w.scheduler_sp, t.sp);
      if (!w.error.empty()) return w.error;
      moved |= t.state != State::Spinning;
      if (eager && t.state == State::AtWarp) {
        const int r = release_warp(t.linear & ~31);
        if (r < 0) return err;
        if (r > 0) k = size_t(-1);  // from the start of the order again: the released warp runs on first
      }
    }
    current.thread = nullptr;
    // Then the warp collectives whose lanes have all arrived; else a block barrier that every live thread reached.
    bool released = false;
    for (int base = 0; base < n; base += 32) {
      const int r = release_warp(base);
      if (r < 0) return err;
      released |= r > 0;
    }
    if (released) continue;
    // Threads polling an mbarrier poll again while anything moves; when nothing did in a whole pass, nothing will.
    int spinning = 0;
    for (int i = 0; i < n; i++) spinning += w.threads[size_t(i)].state == State::Spinning;
    if (spinning) {
      if (!moved && w.progress == progress_before)
        return "deadlock: " + std::to_string(spinning) + " threads wait on mbarrier phases that never complete (" +
               state_summary(w, n) + ")";
      for (int i = 0; i < n; i++)
        if (w.threads[size_t(i)].state == State::Spinning) w.threads[size_t(i)].state = State::Runnable;
      continue;
    }
    int at_barrier = 0, done = 0;
    for (int i = 0; i < n; i++) {
      const State s = w.threads[size_t(i)].state;
      at_barrier += s == State::AtBarrier;
      done += s == State::Done;
    }
    if (done == n) return "";
    if (at_barrier + done == n) {
      for (int i = 0; i < n; i++)
        if (w.threads[size_t(i)].state == State::AtBarrier) w.threads[size_t(i)].state = State::Runnable;
      continue;
    }
    return "deadlock: " + state_summary(w, n) + " (a __syncthreads or a warp collective that not all threads reach)";
  }
}

std::string format_error(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string msg = format(fmt, ap);
  va_end(ap);
  return msg;
}

}  // namespace

std::string kernel_name_from(const char* pretty) {
  std::string s(pretty);
  const size_t at = s.find("K = ");
  if (at == std::string::npos) return s;
  size_t end = s.find(';', at);
  if (end == std::string::npos) end = s.find(']', at);
  std::string name = s.substr(at + 4, end - at - 4);
  if (!name.empty() && name[0] == '&') name.erase(0, 1);
  for (const char* prefix : {"mg::cuda::{anonymous}::", "mg::cuda::", "{anonymous}::"}) {
    for (size_t p; (p = name.find(prefix)) != std::string::npos;) name.erase(p, std::strlen(prefix));
  }
  return name;
}

std::string kernel_name_in(const char* kernel, const char* context) {
  std::string name(kernel), ctx(context);
  const size_t with = ctx.find("[with ");
  if (with != std::string::npos) name += " [" + ctx.substr(with + 6, ctx.rfind(']') - with - 6) + "]";
  return name;
}

void set_max_dynamic_shared(const void* kernel, int bytes) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_max_dynamic_shared[kernel] = bytes;
}

namespace {
// The error cudaGetLastError will return, with the message cudaGetErrorString gives for it; returns err.
cudaError_t record_error(cudaError_t err, const std::string& msg) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_last_error = err;
  g_last_message = msg;
  return err;
}
}  // namespace

// ---- faults: an access to a guard page (past a cudaMalloc block, past the block's shared memory, off a fiber's
// stack) inside a kernel ends the launch with an error instead of the process ----

namespace {

struct sigaction g_previous_segv, g_previous_bus;

void on_fault(int sig, siginfo_t* info, void* context) {
  Worker* w = tl_worker;
  Thread* t = current.thread;
  if (w && t && w->scheduler_sp) {
    char msg[200];
    std::snprintf(msg, sizeof msg,
                  "invalid memory access at %p (out of bounds of a device allocation or of shared memory, or freed)",
                  info->si_addr);
    w->error = msg;
    t->state = State::Done;
    // Back to the block's scheduler, leaving the faulting thread behind (SA_NODEFER: the signal stays unblocked).
    mg_emu_switch(&t->sp, w->scheduler_sp);
  }
  const struct sigaction& previous = sig == SIGSEGV ? g_previous_segv : g_previous_bus;
  if (previous.sa_flags & SA_SIGINFO) {
    previous.sa_sigaction(sig, info, context);
  } else if (previous.sa_handler != SIG_IGN && previous.sa_handler != SIG_DFL) {
    previous.sa_handler(sig);
  } else {
    signal(sig, SIG_DFL);
    ::raise(sig);
  }
}

// The handler runs on a per-thread alternate stack, so that a fiber's stack overflow is caught too.
void prepare_fault_handling() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_previous_segv);
    sigaction(SIGBUS, &sa, &g_previous_bus);
  });
  static thread_local bool alt_stack = false;
  if (!alt_stack) {
    stack_t ss;
    ss.ss_size = 64 << 10;
    ss.ss_sp = std::malloc(ss.ss_size);
    ss.ss_flags = 0;
    if (ss.ss_sp && sigaltstack(&ss, nullptr) == 0) alt_stack = true;
  }
}

}  // namespace

int run_grid(const char* name, const void* kernel, const LaunchDims& d, void (*entry)(const void*), const void* closure) {
  const unsigned long long threads = 1ull * d.block.x * d.block.y * d.block.z;
  const unsigned long long blocks = 1ull * d.grid.x * d.grid.y * d.grid.z;
  char where[256];
  std::snprintf(where, sizeof where, "%s<<<(%u,%u,%u), (%u,%u,%u), %zu>>>", name, d.grid.x, d.grid.y, d.grid.z,
                d.block.x, d.block.y, d.block.z, d.shared_bytes);
  if (threads == 0 || threads > kMaxThreads || blocks == 0 || d.grid.y > 65535 || d.grid.z > 65535 ||
      d.block.z > 64)
    return record_error(cudaErrorInvalidConfiguration, std::string("invalid launch configuration: ") + where);
  size_t allowed;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    g_launches[name]++;
    auto it = g_max_dynamic_shared.find(kernel);
    allowed = it == g_max_dynamic_shared.end() ? 48 << 10 : size_t(it->second);
  }
  if (d.shared_bytes > allowed)
    return record_error(cudaErrorInvalidValue, std::string(where) + ": " + std::to_string(d.shared_bytes) +
                                                   " bytes of dynamic shared memory, more than the kernel's limit of " +
                                                   std::to_string(allowed) + " (cudaFuncAttributeMaxDynamicSharedMemorySize)");
  const unsigned long long launch_index = g_launch_count++;
  std::mutex error_mu;
  std::string error;
  std::atomic<bool> failed{false};
  const Current saved = current;
  mg::parallel_for(0, size_t(blocks), 1, [&](size_t lo, size_t hi) {
    prepare_fault_handling();
    Worker& w = worker();
    w.entry = entry;
    w.closure = closure;
    for (size_t b = lo; b < hi && !failed.load(std::memory_order_relaxed); b++) {
      const uint3 block{unsigned(b % d.grid.x), unsigned(b / d.grid.x % d.grid.y), unsigned(b / (1ull * d.grid.x * d.grid.y))};
      std::string e = run_block(w, block, d, launch_index);
      if (!e.empty()) {
        char at[160];
        const Thread* t = current.thread;
        if (t)
          std::snprintf(at, sizeof at, " (block (%u,%u,%u), thread (%u,%u,%u))", block.x, block.y, block.z, t->idx.x,
                        t->idx.y, t->idx.z);
        else
          std::snprintf(at, sizeof at, " (block (%u,%u,%u))", block.x, block.y, block.z);
        std::lock_guard<std::mutex> lock(error_mu);
        if (error.empty()) error = std::string(where) + at + ": " + e;
        failed = true;
      }
      current.thread = nullptr;
    }
  });
  current = saved;
  if (failed) return record_error(cudaErrorLaunchFailure, error);
  return 0;
}

std::map<std::string, long long> take_launch_counts() {
  std::lock_guard<std::mutex> lock(g_mu);
  std::map<std::string, long long> counts;
  counts.swap(g_launches);
  return counts;
}

}  // namespace mg_emu

// ---- runtime API ----

using namespace mg_emu;

namespace {

std::mutex g_alloc_mu;
struct Mapping {
  void* base;
  size_t length;
  size_t bytes;
};
std::map<const void*, Mapping> g_allocations;
size_t g_allocated = 0;
constexpr size_t kDeviceMemory = size_t(16) << 30;  // what the emulated device says it has

}  // namespace

struct mg_emu_stream {
  int unused;
};
struct mg_emu_event {
  std::chrono::steady_clock::time_point at;
};

cudaError_t cudaGetLastError() {
  std::lock_guard<std::mutex> lock(g_mu);
  cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_last_error;
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidValue:
    case cudaErrorInvalidConfiguration:
    case cudaErrorLaunchFailure: {
      // The emulator's message names the kernel, the block, the thread and what went wrong.
      static thread_local std::string msg;
      std::lock_guard<std::mutex> lock(g_mu);
      msg = g_last_message.empty() ? "emulated launch failed" : "emulated kernel: " + g_last_message;
      return msg.c_str();
    }
    default: return "CUDA emulator error";
  }
}

const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "cudaErrorUnknown";
  }
}

cudaError_t cudaDriverGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : record_error(cudaErrorInvalidDevice, "the emulator has one device");
}

namespace {
// The most dynamic shared memory a block may opt in to: 163 KiB on sm_80, 227 KiB on sm_90.
int max_optin_shared() { return device_sm() == 90 ? int(kArenaBytes) : 163 << 10; }

// MEMGPT_EMU_SMS: the multiprocessors the emulated device reports (few, so that small test shapes reach split-K).
int sm_count() {
  static const int n = std::max(1, env_int("MEMGPT_EMU_SMS", 8));
  return n;
}
}  // namespace

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return record_error(cudaErrorInvalidDevice, "the emulator has one device");
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *value = device_sm() / 10; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMultiProcessorCount: *value = sm_count(); break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 << 10; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = max_optin_shared(); break;
    default: return record_error(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute not emulated");
  }
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  if (device != 0) return record_error(cudaErrorInvalidDevice, "the emulator has one device");
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "memgpt CUDA emulator (sm_%d model, host CPU)", device_sm());
  p->totalGlobalMem = kDeviceMemory;
  p->sharedMemPerBlock = 48 << 10;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->major = device_sm() / 10;
  p->minor = 0;
  p->multiProcessorCount = sm_count();
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return cudaPeekAtLastError(); }

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  std::lock_guard<std::mutex> lock(g_alloc_mu);
  *total_bytes = kDeviceMemory;
  *free_bytes = kDeviceMemory - std::min(g_allocated, kDeviceMemory);
  return cudaSuccess;
}

// Each allocation is its own mapping, placed so that it ends where a guard page begins (the end is 256-byte
// aligned, as cudaMalloc's pointers are, and the allocator's sizes are multiples of 512): reading or writing
// past the end faults at once instead of corrupting a neighbour. A freed block is unmapped, so using it faults.
cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  *ptr = nullptr;
  if (bytes == 0) return cudaSuccess;
  std::lock_guard<std::mutex> lock(g_alloc_mu);
  if (g_allocated + bytes > kDeviceMemory) return record_error(cudaErrorMemoryAllocation, "out of emulated device memory");
  const size_t rounded = (bytes + 255) / 256 * 256;
  const size_t length = (rounded + kPage - 1) / kPage * kPage + kPage;
  void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return record_error(cudaErrorMemoryAllocation, "out of host memory for the emulated device");
  mprotect(static_cast<char*>(base) + length - kPage, kPage, PROT_NONE);
  char* p = static_cast<char*>(base) + length - kPage - rounded;
  std::memset(p, 0xa5, rounded);  // fresh device memory is garbage, not zeros
  g_allocations[p] = {base, length, bytes};
  g_allocated += bytes;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (!ptr) return cudaSuccess;
  std::lock_guard<std::mutex> lock(g_alloc_mu);
  auto it = g_allocations.find(ptr);
  if (it == g_allocations.end()) return record_error(cudaErrorInvalidDevicePointer, "cudaFree of a pointer cudaMalloc did not return");
  munmap(it->second.base, it->second.length);
  g_allocated -= it->second.bytes;
  g_allocations.erase(it);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes) std::memmove(dst, src, bytes);
  return cudaPeekAtLastError();
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  if (bytes) std::memmove(dst, src, bytes);
  (void)kind;
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) {
  if (bytes) std::memset(dst, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* dst, int value, size_t bytes) { return cudaMemsetAsync(dst, value, bytes, nullptr); }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = new mg_emu_stream{0};
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete s;
  return cudaSuccess;
}
// Everything ran when it was queued; a launch error is still pending until cudaGetLastError takes it, and
// like a real asynchronous error, a synchronize reports it.
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaPeekAtLastError(); }
// Never cudaErrorNotReady: the stream's work is done when it is queued.
cudaError_t cudaStreamQuery(cudaStream_t) { return cudaPeekAtLastError(); }

cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new mg_emu_event{std::chrono::steady_clock::now()};
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  e->at = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
  *ms = std::chrono::duration<float, std::milli>(stop->at - start->at).count();
  if (*ms <= 0) *ms = 1e-3f;
  return cudaSuccess;
}

namespace {

// cuTensorMapEncodeTiled for what linear.cu asks: rank 2, bfloat16, unit element strides; checked as the driver does.
CUresult encode_tiled(CUtensorMap* out, CUtensorMapDataType type, cuuint32_t rank, void* base, const cuuint64_t* dims,
                      const cuuint64_t* strides, const cuuint32_t* box, const cuuint32_t* element_strides,
                      CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle, CUtensorMapL2promotion,
                      CUtensorMapFloatOOBfill) {
  if (rank != 2 || type != CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 || interleave != CU_TENSOR_MAP_INTERLEAVE_NONE)
    return CUDA_ERROR_INVALID_VALUE;
  if (reinterpret_cast<uintptr_t>(base) % 16 || strides[0] % 16 || strides[0] >= (uint64_t(1) << 40))
    return CUDA_ERROR_INVALID_VALUE;
  if (box[0] == 0 || box[1] == 0 || box[0] > 256 || box[1] > 256 || element_strides[0] != 1 || element_strides[1] != 1)
    return CUDA_ERROR_INVALID_VALUE;
  if (swizzle == CU_TENSOR_MAP_SWIZZLE_128B && box[0] * 2 > 128) return CUDA_ERROR_INVALID_VALUE;
  TensorMap map{kTensorMapMagic, static_cast<const unsigned char*>(base), {dims[0], dims[1]}, strides[0],
                {box[0], box[1]}, 2, uint32_t(swizzle)};
  std::memset(out, 0, sizeof *out);
  std::memcpy(out, &map, sizeof map);
  return CUDA_SUCCESS;
}

}  // namespace

cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** fn, unsigned, unsigned long long,
                                             cudaDriverEntryPointQueryResult* status) {
  *fn = nullptr;
  *status = cudaDriverEntryPointSymbolNotFound;
  // The tensor-map encoder exists on the emulated sm_90 only: on the sm_80 model the Hopper path stays off.
  if (device_sm() == 90 && !std::strcmp(symbol, "cuTensorMapEncodeTiled")) {
    *fn = reinterpret_cast<void*>(&encode_tiled);
    *status = cudaDriverEntryPointSuccess;
  }
  return cudaSuccess;
}

cudaError_t mg_emu_func_set_attribute(const void* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || value > max_optin_shared())
      return record_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: more dynamic shared memory than a block may have");
    set_max_dynamic_shared(kernel, value);
  }
  return cudaSuccess;
}
