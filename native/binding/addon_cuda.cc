// Entry point of the CUDA addon (memgpt_cuda.node): memory, ops, the device
// queries and the copy-bandwidth probe. Loading it needs no GPU (the CUDA runtime is linked statically and
// opens the driver on first use), so `probe()` can say in one line why CUDA is
// not usable instead of the load failing.
#include <algorithm>
#include <string>

#include "../cuda/runtime.h"
#include "binding.h"

namespace {

std::string version_string(int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); }

// Why no device can be used, or "" when the current device can. Never throws.
std::string unusable_reason(int driver, int runtime, int* device_count) {
  *device_count = 0;
  cudaError_t err = cudaGetDeviceCount(device_count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // leave no error behind for later calls to report
    *device_count = 0;
    if (driver == 0) return "no NVIDIA driver found (libcuda.so.1 could not be loaded)";
    if (err == cudaErrorInsufficientDriver || driver < runtime)
      return "the NVIDIA driver supports CUDA " + version_string(driver) + " but this addon was built with CUDA " +
             version_string(runtime) + "; update the driver";
    return std::string("cannot use the GPU: ") + cudaGetErrorString(err) + " (" + cudaGetErrorName(err) + ")";
  }
  if (*device_count == 0) return "no CUDA device found";
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaError_t e = cudaGetLastError();
    return std::string("cannot query the GPU: ") + cudaGetErrorString(e);
  }
  // The addon carries sm_80 and sm_90a code and compute_90 PTX: nothing older than 8.0 can run it.
  if (major < 8)
    return "GPU " + std::to_string(device) + " has compute capability " + std::to_string(major) + "." +
           std::to_string(minor) + "; memgpt's CUDA kernels need 8.0 (Ampere) or newer";
  return "";
}

// { ok, deviceCount, error?, driverVersion, runtimeVersion, devices: [{ name, computeCapability, totalMemory }] }:
// whether CUDA can be used here, and what GPUs there are even when they cannot be used (for `memgpt doctor`).
Napi::Value probe(const Napi::CallbackInfo& info) {
  int driver = 0, runtime = 0, count = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;  // 0 when no driver is installed
  if (cudaRuntimeGetVersion(&runtime) != cudaSuccess) runtime = 0;
  std::string reason = unusable_reason(driver, runtime, &count);
  cudaGetLastError();
  Napi::Env env = info.Env();
  Napi::Array devices = Napi::Array::New(env);
  for (int d = 0; d < count; d++) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, d) != cudaSuccess) {
      cudaGetLastError();
      continue;
    }
    Napi::Object dev = Napi::Object::New(env);
    dev.Set("name", p.name);
    dev.Set("computeCapability", std::to_string(p.major) + "." + std::to_string(p.minor));
    dev.Set("totalMemory", double(p.totalGlobalMem));
    devices.Set(devices.Length(), dev);
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("ok", reason.empty());
  o.Set("deviceCount", count);
  if (!reason.empty()) o.Set("error", reason);
  o.Set("driverVersion", driver);
  o.Set("runtimeVersion", runtime);
  o.Set("devices", devices);
  o.Set("architectures", MG_CUDA_ARCHITECTURES);  // what this build carries, e.g. "80-real 90a-real 90-virtual"
  return o;
}

// { backend: 'cuda', name, computeCapability, totalMemory, multiProcessors, driverVersion, runtimeVersion }
Napi::Value info(const Napi::CallbackInfo& info) {
  return mg::binding::guarded(info, "info", [&]() -> Napi::Value {
    int driver = 0, runtime = 0, count = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    std::string reason = unusable_reason(driver, runtime, &count);
    if (count == 0) mg::fail("info: no CUDA device: %s", reason.c_str());
    int device = 0;
    mg::cuda::check(cudaGetDevice(&device), "info");
    cudaDeviceProp p;
    mg::cuda::check(cudaGetDeviceProperties(&p, device), "info");
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("backend", "cuda");
    o.Set("name", p.name);
    o.Set("computeCapability", std::to_string(p.major) + "." + std::to_string(p.minor));
    o.Set("totalMemory", double(p.totalGlobalMem));
    o.Set("multiProcessors", p.multiProcessorCount);
    o.Set("driverVersion", driver);
    o.Set("runtimeVersion", runtime);
    return o;
  });
}

// Waits for everything queued on the op stream; an asynchronous failure of any
// earlier kernel (an illegal address, say) surfaces here as a JS exception.
Napi::Value synchronize(const Napi::CallbackInfo& info) {
  return mg::binding::guarded(info, "synchronize", [&]() -> Napi::Value {
    mg::cuda::synchronize_stream("synchronize");
    return info.Env().Undefined();
  });
}

// How many times the host has waited for the op stream (every synchronisation of this addon counts).
Napi::Value synchronizations(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), double(mg::cuda::synchronizations()));
}

// (bytes, reps): the device-to-device copy bandwidth in GB/s (bytes read plus written), best of reps
// copies timed with events on the op stream: the ceiling that memory-bound kernels are measured against.
Napi::Value probe_copy_bandwidth(const Napi::CallbackInfo& info) {
  return mg::binding::guarded(info, "probeCopyBandwidth", [&]() -> Napi::Value {
    mg::binding::Args args(info, "probeCopyBandwidth");
    const size_t bytes = size_t(args.integer("bytes", 1));
    const int reps = int(std::min<int64_t>(args.integer("reps", 1), 100));
    cudaStream_t s = mg::cuda::stream();
    void *a = nullptr, *b = nullptr;
    cudaEvent_t start = nullptr, stop = nullptr;
    float best_ms = 0;
    auto release = [&] {
      if (a) cudaFree(a);
      if (b) cudaFree(b);
      if (start) cudaEventDestroy(start);
      if (stop) cudaEventDestroy(stop);
    };
    try {
      mg::cuda::check(cudaMalloc(&a, bytes), "probeCopyBandwidth");
      mg::cuda::check(cudaMalloc(&b, bytes), "probeCopyBandwidth");
      mg::cuda::check(cudaMemsetAsync(a, 1, bytes, s), "probeCopyBandwidth");
      mg::cuda::check(cudaEventCreate(&start), "probeCopyBandwidth");
      mg::cuda::check(cudaEventCreate(&stop), "probeCopyBandwidth");
      mg::cuda::check(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s), "probeCopyBandwidth");  // warm-up
      for (int r = 0; r < reps; r++) {
        mg::cuda::check(cudaEventRecord(start, s), "probeCopyBandwidth");
        mg::cuda::check(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s), "probeCopyBandwidth");
        mg::cuda::check(cudaEventRecord(stop, s), "probeCopyBandwidth");
        mg::cuda::check(cudaEventSynchronize(stop), "probeCopyBandwidth");
        float ms = 0;
        mg::cuda::check(cudaEventElapsedTime(&ms, start, stop), "probeCopyBandwidth");
        if (r == 0 || ms < best_ms) best_ms = ms;
      }
    } catch (...) {
      release();
      throw;
    }
    release();
    return Napi::Number::New(info.Env(), 2.0 * double(bytes) / (double(best_ms) * 1e6));
  });
}

#if defined(MG_CUDA_EMU)
// { kernel: launches } since the last call: the emulated addon's record of which CUDA kernels ran.
Napi::Value emulator_launches(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  for (const auto& [name, count] : mg_emu::take_launch_counts()) o.Set(name, double(count));
  return o;
}
#endif

Napi::Object init(Napi::Env env, Napi::Object exports) {
  mg::binding::register_memory(env, exports);
  mg::binding::register_ops(env, exports);
  mg::binding::register_linear(env, exports);
  mg::binding::register_attention(env, exports);
  mg::binding::register_norm(env, exports);
  mg::binding::register_classifier(env, exports);
  mg::binding::register_memwrite(env, exports);
  mg::binding::register_optim(env, exports);
  mg::binding::register_nccl(env, exports);
  exports.Set("probe", Napi::Function::New(env, probe, "probe"));
  exports.Set("info", Napi::Function::New(env, info, "info"));
  exports.Set("synchronize", Napi::Function::New(env, synchronize, "synchronize"));
  exports.Set("synchronizations", Napi::Function::New(env, synchronizations, "synchronizations"));
  exports.Set("probeCopyBandwidth", Napi::Function::New(env, probe_copy_bandwidth, "probeCopyBandwidth"));
#if defined(MG_CUDA_EMU)
  exports.Set("emulatorLaunches", Napi::Function::New(env, emulator_launches, "emulatorLaunches"));
#endif
  return exports;
}

}  // namespace

NODE_API_MODULE(memgpt_cuda, init)
