// N-API glue shared by the CPU and CUDA addons: argument parsing and checks,
// no math. Each addon supplies its storage handles (memory_cpu.cc or
// memory_cuda.cc); ops.cc binds the same op names to either backend's kernels.
#pragma once

#include <napi.h>

#include <string>
#include <vector>

#include "../common/allocator.h"
#include "../common/common.h"

namespace mg::binding {

// Storage handles are created by `alloc` in the addon that owns the memory.
// Returns the address `byte_offset` bytes into the storage, after checking that
// `bytes` bytes from there lie inside it and that it was not freed.
void* storage_ptr(const Napi::Value& handle, int64_t byte_offset, int64_t bytes, const char* arg);

// alloc, free, memory, resetPeak, emptyCache, copyFromHost, copyToHost, copy (memory.cc).
void register_memory(Napi::Env env, Napi::Object exports);

// What each addon supplies to memory.cc (memory_cpu.cc, memory_cuda.cc): its allocator, the tag and
// name of its handles, the out-of-memory error, and copies that are complete when they return (within
// storage: may be queued on the device's stream, and overlapping ranges behave like memmove).
CachingAllocator& storage_allocator();
const napi_type_tag& storage_tag();
const char* storage_kind();  // "CPU" or "CUDA", for messages
[[noreturn]] void out_of_memory(int64_t bytes);
void copy_host_to_storage(void* dst, const void* host_src, size_t bytes);
void copy_storage_to_host(void* host_dst, const void* src, size_t bytes);
void copy_within_storage(void* dst, const void* src, size_t bytes);
// The kernels of native/common/kernels.inc.
void register_ops(Napi::Env env, Napi::Object exports);
// The model's op families (native/binding/ops_<family>.cc), registered by both addons: each calls the kernels of
// its native/common/<family>.inc, which native/cpu and native/cuda both implement.
void register_norm(Napi::Env env, Napi::Object exports);
void register_linear(Napi::Env env, Napi::Object exports);
void register_attention(Napi::Env env, Napi::Object exports);
void register_memwrite(Napi::Env env, Napi::Object exports);
void register_classifier(Napi::Env env, Napi::Object exports);
void register_optim(Napi::Env env, Napi::Object exports);
// ncclStatus, ncclUniqueId, ncclInit, ncclAllReduceAt, ncclClose: NCCL loaded at run time (CUDA addon only).
void register_nccl(Napi::Env env, Napi::Object exports);

// a·b for sizes, or a clear error when it overflows.
inline int64_t checked_mul(int64_t a, int64_t b, const char* op) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) fail("%s: size overflows", op);
  return r;
}

// The allocator's counters as the JS object that `memory()` returns (both addons).
inline Napi::Object stats_object(Napi::Env env, const MemoryStats& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("bytesInUse", double(s.bytes_in_use));
  o.Set("peakBytes", double(s.peak_bytes));
  o.Set("bytesReserved", double(s.bytes_reserved));
  o.Set("liveBlocks", double(s.live_blocks));
  o.Set("systemAllocs", double(s.system_allocs));
  return o;
}

// Reads a call's arguments in order, with a clear error naming the op and the argument.
class Args {
 public:
  Args(const Napi::CallbackInfo& info, const char* op) : info_(info), op_(op) {}

  double number(const char* name) {
    Napi::Value v = next(name);
    if (!v.IsNumber()) bad(name, "a number");
    return v.As<Napi::Number>().DoubleValue();
  }
  int64_t integer(const char* name, int64_t min = 0) {
    double d = number(name);
    if (d != double(int64_t(d)) || d < double(min)) bad(name, min == 0 ? "a non-negative integer" : "an integer in range");
    return int64_t(d);
  }
  bool flag(const char* name) {
    Napi::Value v = next(name);
    if (!v.IsBoolean()) bad(name, "a boolean");
    return v.As<Napi::Boolean>().Value();
  }
  DType dtype(const char* name) {
    int64_t t = integer(name);
    if (t > 2) bad(name, "a dtype code (0 float32, 1 bfloat16, 2 int32)");
    return DType(t);
  }
  std::vector<int64_t> integers(const char* name, int64_t min = 0) {
    Napi::Value v = next(name);
    if (!v.IsArray()) bad(name, "an array of integers");
    Napi::Array arr = v.As<Napi::Array>();
    std::vector<int64_t> out(arr.Length());
    for (uint32_t i = 0; i < arr.Length(); i++) {
      Napi::Value e = arr.Get(i);
      double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : -1e300;
      if (d != double(int64_t(d)) || d < double(min)) bad(name, "an array of integers");
      out[i] = int64_t(d);
    }
    return out;
  }
  // A tensor argument is two JS values: the storage handle and an element offset.
  // `count` elements of `dt` starting there must lie inside the storage.
  void* tensor(const char* name, DType dt, int64_t count) {
    Napi::Value handle = next(name);
    int64_t offset = integer(name);
    int64_t size = int64_t(dtype_size(dt));
    return storage_ptr(handle, offset * size, count * size, name);
  }
  // An optional tensor: (handle, offset) when `present`, else two placeholders (null, 0). Null when absent.
  void* optional_tensor(const char* name, bool present, DType dt, int64_t count) {
    if (present) return tensor(name, dt, count);
    next(name);
    next(name);
    return nullptr;
  }
  Napi::Value next(const char* name) {
    if (i_ >= info_.Length()) fail("%s: missing argument '%s'", op_, name);
    return info_[i_++];
  }

 private:
  [[noreturn]] void bad(const char* name, const char* what) { fail("%s: argument '%s' must be %s", op_, name, what); }
  const Napi::CallbackInfo& info_;
  const char* op_;
  size_t i_ = 0;
};

// Runs body; any C++ exception becomes a JS Error whose message starts with the op name.
template <typename Body>
Napi::Value guarded(const Napi::CallbackInfo& info, const char* op, Body&& body) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw Napi::Error::New(info.Env(), std::string(op) + ": out of host memory");
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (msg.rfind(op, 0) != 0) msg = std::string(op) + ": " + msg;
    throw Napi::Error::New(info.Env(), msg);
  }
}

}  // namespace mg::binding
