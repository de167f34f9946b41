// Entry point of the CPU addon (memgpt_cpu.node): memory, ops and the thread pool.
#include "../common/threadpool.h"
#include "../cpu/isa.h"
#include "../cpu/probe.h"
#include "binding.h"

#include <algorithm>
#include <string>

namespace {

Napi::Value info(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("backend", "cpu");
  o.Set("threads", mg::num_threads());
  o.Set("simd", std::string(mg::cpu::has_avx2() ? "avx2+fma" : "generic") + (mg::cpu::has_bf16_dot() ? ", avx512-bf16 for bf16 decoding" : ""));
  return o;
}

Napi::Value set_num_threads(const Napi::CallbackInfo& info) {
  return mg::binding::guarded(info, "setNumThreads", [&] {
    mg::binding::Args args(info, "setNumThreads");
    int64_t n = args.integer("threads", 1);
    if (n > 1024) mg::fail("setNumThreads: %lld threads is too many", (long long)n);
    mg::set_num_threads(int(n));
    return info.Env().Undefined();
  });
}

// (seconds): peak float32 GFLOP/s of this machine over all threads.
Napi::Value probe_peak_flops(const Napi::CallbackInfo& info) {
  return mg::binding::guarded(info, "probePeakFlops", [&] {
    mg::binding::Args args(info, "probePeakFlops");
    double seconds = args.number("seconds");
    return Napi::Number::New(info.Env(), mg::cpu::probe_peak_gflops(std::clamp(seconds, 0.01, 10.0)));
  });
}

// (bytes, reps): best copy bandwidth in GB/s, counting bytes read and written.
Napi::Value probe_copy_bandwidth(const Napi::CallbackInfo& info) {
  return mg::binding::guarded(info, "probeCopyBandwidth", [&] {
    mg::binding::Args args(info, "probeCopyBandwidth");
    int64_t bytes = args.integer("bytes", 1);
    int64_t reps = args.integer("reps", 1);
    return Napi::Number::New(info.Env(), mg::cpu::probe_copy_gbs(bytes, int(std::min<int64_t>(reps, 100))));
  });
}

Napi::Object init(Napi::Env env, Napi::Object exports) {
  mg::binding::register_memory(env, exports);
  mg::binding::register_ops(env, exports);
  mg::binding::register_norm(env, exports);
  mg::binding::register_linear(env, exports);
  mg::binding::register_attention(env, exports);
  mg::binding::register_memwrite(env, exports);
  mg::binding::register_classifier(env, exports);
  mg::binding::register_optim(env, exports);
  exports.Set("info", Napi::Function::New(env, info, "info"));
  exports.Set("probePeakFlops", Napi::Function::New(env, probe_peak_flops, "probePeakFlops"));
  exports.Set("probeCopyBandwidth", Napi::Function::New(env, probe_copy_bandwidth, "probeCopyBandwidth"));
  exports.Set("setNumThreads", Napi::Function::New(env, set_num_threads, "setNumThreads"));
  return exports;
}

}  // namespace

NODE_API_MODULE(memgpt_cpu, init)
