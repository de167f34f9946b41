// NCCL for data parallel on CUDA tensors, loaded at run time (dlopen of libnccl.so.2, or MEMGPT_NCCL_LIBRARY), so
// that it is neither a build nor an install dependency: users' machines have it from the CUDA/NCCL packages, the
// GPU machine inside PyTorch's wheels. The few declarations used are nccl.h's (its ABI has been stable since NCCL
// 2.0), so no NCCL header is needed to build.
//
// NCCL's collectives have no timeout of their own: ncclAllReduceAt waits for its stream with a deadline, polling
// the communicator's asynchronous error, and aborts the communicator when either fails (what PyTorch's NCCL
// watchdog does), so that a dead or hung peer ends this rank with one error instead of a hang.
#include <dlfcn.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "../cuda/runtime.h"
#include "binding.h"

namespace {

typedef struct ncclComm* ncclComm_t;
struct ncclUniqueId {
  char internal[128];
};
typedef int ncclResult_t;
constexpr ncclResult_t ncclSuccess = 0, ncclInProgress = 7;
constexpr int ncclFloat32 = 7, ncclSum = 0;

struct Nccl {
  void* library = nullptr;
  std::string path, error;
  ncclResult_t (*getVersion)(int*) = nullptr;
  ncclResult_t (*getUniqueId)(ncclUniqueId*) = nullptr;
  ncclResult_t (*commInitRank)(ncclComm_t*, int, ncclUniqueId, int) = nullptr;
  ncclResult_t (*allReduce)(const void*, void*, size_t, int, int, ncclComm_t, cudaStream_t) = nullptr;
  ncclResult_t (*commDestroy)(ncclComm_t) = nullptr;
  ncclResult_t (*commAbort)(ncclComm_t) = nullptr;
  ncclResult_t (*commGetAsyncError)(ncclComm_t, ncclResult_t*) = nullptr;
  const char* (*getErrorString)(ncclResult_t) = nullptr;
};

Nccl& nccl() {
  static Nccl n = [] {
    Nccl n;
    const char* env = std::getenv("MEMGPT_NCCL_LIBRARY");
    n.path = env && *env ? env : "libnccl.so.2";
    n.library = dlopen(n.path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!n.library) {
      const char* why = dlerror();
      n.error = why ? why : "dlopen failed";
      return n;
    }
    auto get = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(n.library, name));
      if (!fn && n.error.empty()) n.error = std::string(n.path) + " has no " + name;
    };
    get(n.getVersion, "ncclGetVersion");
    get(n.getUniqueId, "ncclGetUniqueId");
    get(n.commInitRank, "ncclCommInitRank");
    get(n.allReduce, "ncclAllReduce");
    get(n.commDestroy, "ncclCommDestroy");
    get(n.commAbort, "ncclCommAbort");
    get(n.commGetAsyncError, "ncclCommGetAsyncError");
    get(n.getErrorString, "ncclGetErrorString");
    return n;
  }();
  return n;
}

Nccl& loaded() {
  Nccl& n = nccl();
  if (!n.error.empty()) mg::fail("NCCL is not available: %s", n.error.c_str());
  return n;
}

ncclComm_t communicator = nullptr;
int64_t timeout_ms = 300000;

void check_nccl(ncclResult_t r, const char* op) {
  if (r != ncclSuccess) mg::fail("%s: %s", op, loaded().getErrorString(r));
}

// { available, path, version?, error? }: whether libnccl.so.2 loads here (for `memgpt doctor`).
Napi::Value nccl_status(const Napi::CallbackInfo& info) {
  Nccl& n = nccl();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("available", n.error.empty());
  o.Set("path", n.path);
  if (n.error.empty()) {
    int v = 0;
    if (n.getVersion(&v) == ncclSuccess) o.Set("version", v);
  } else {
    o.Set("error", n.error);
  }
  return o;
}

// () → Uint8Array(128): the id rank 0 makes and every rank passes to ncclInit.
Napi::Value nccl_unique_id(const Napi::CallbackInfo& info) {
  return mg::binding::guarded(info, "ncclUniqueId", [&]() -> Napi::Value {
    ncclUniqueId id;
    check_nccl(loaded().getUniqueId(&id), "ncclGetUniqueId");
    auto out = Napi::Uint8Array::New(info.Env(), sizeof id.internal);
    std::memcpy(out.Data(), id.internal, sizeof id.internal);
    return out;
  });
}

// (id: Uint8Array(128), rank, size, timeoutMs): this rank's communicator, on the current device.
Napi::Value nccl_init(const Napi::CallbackInfo& info) {
  return mg::binding::guarded(info, "ncclInit", [&]() -> Napi::Value {
    if (communicator) mg::fail("ncclInit: a communicator already exists");
    if (info.Length() < 4 || !info[0].IsTypedArray() || info[0].As<Napi::Uint8Array>().ByteLength() != sizeof(ncclUniqueId))
      mg::fail("ncclInit: expected (id: Uint8Array(128), rank, size, timeoutMs)");
    ncclUniqueId id;
    std::memcpy(id.internal, info[0].As<Napi::Uint8Array>().Data(), sizeof id.internal);
    int rank = info[1].As<Napi::Number>().Int32Value(), size = info[2].As<Napi::Number>().Int32Value();
    timeout_ms = info[3].As<Napi::Number>().Int64Value();
    check_nccl(loaded().commInitRank(&communicator, size, id, rank), "ncclCommInitRank");
    return info.Env().Undefined();
  });
}

// (storage, byteOffset, elements): the float32 sum over ranks, in place on the device, waited for with the
// timeout (the communicator is aborted on a peer's failure or the timeout).
Napi::Value nccl_allreduce_at(const Napi::CallbackInfo& info) {
  return mg::binding::guarded(info, "ncclAllReduce", [&]() -> Napi::Value {
    mg::binding::Args args(info, "ncclAllReduce");
    Napi::Value handle = args.next("storage");
    int64_t offset = args.integer("byteOffset");
    int64_t elements = args.integer("elements");
    if (!communicator) mg::fail("ncclAllReduce: no communicator (ncclInit first)");
    void* ptr = mg::binding::storage_ptr(handle, offset, elements * 4, "storage");
    Nccl& n = loaded();
    cudaStream_t s = mg::cuda::stream();
    check_nccl(n.allReduce(ptr, ptr, size_t(elements), ncclFloat32, ncclSum, communicator, s), "ncclAllReduce");
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      cudaError_t q = cudaStreamQuery(s);
      if (q == cudaSuccess) break;
      if (q != cudaErrorNotReady) mg::cuda::check(q, "ncclAllReduce");
      ncclResult_t async = ncclSuccess;
      n.commGetAsyncError(communicator, &async);
      bool late = std::chrono::steady_clock::now() > deadline;
      if ((async != ncclSuccess && async != ncclInProgress) || late) {
        n.commAbort(communicator);
        communicator = nullptr;
        if (late) mg::fail("ncclAllReduce timed out after %lld ms (a peer died or hangs)", (long long)timeout_ms);
        mg::fail("ncclAllReduce: %s", n.getErrorString(async));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    mg::cuda::count_synchronization();
    return info.Env().Undefined();
  });
}

Napi::Value nccl_close(const Napi::CallbackInfo& info) {
  if (communicator) nccl().commDestroy(communicator);
  communicator = nullptr;
  return info.Env().Undefined();
}

}  // namespace

namespace mg::binding {

void register_nccl(Napi::Env env, Napi::Object exports) {
  exports.Set("ncclStatus", Napi::Function::New(env, nccl_status, "ncclStatus"));
  exports.Set("ncclUniqueId", Napi::Function::New(env, nccl_unique_id, "ncclUniqueId"));
  exports.Set("ncclInit", Napi::Function::New(env, nccl_init, "ncclInit"));
  exports.Set("ncclAllReduceAt", Napi::Function::New(env, nccl_allreduce_at, "ncclAllReduceAt"));
  exports.Set("ncclClose", Napi::Function::New(env, nccl_close, "ncclClose"));
}

}  // namespace mg::binding
