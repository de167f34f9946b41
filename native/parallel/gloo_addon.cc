// Collectives for data-parallel training on the CPU: gloo (the engine PyTorch uses on the CPU) behind N-API.
// Its own addon, linked to libgloo.so.0 and loaded by lib/parallel only when a run has more than one rank, so that
// neither installs nor single-process runs need gloo. Rendezvous goes through the small TCP key-value store of
// tcp_store.h at MASTER_ADDR:MASTER_PORT, the role torchrun's c10d store plays.
//
// Every collective is blocking, runs under the group's timeout (a dead peer fails at once with a closed
// connection, a hung one after the timeout) and turns gloo's exceptions into one JavaScript Error.
#include <napi.h>

#include <gloo/config.h>
#include <gloo/allgatherv.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/reduce_scatter.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/transport/tcp/device.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tcp_store.h"

namespace {

struct Group {
  int rank = 0, size = 1;
  std::chrono::milliseconds timeout{0};
  std::unique_ptr<memgpt::TcpStore> store;
  std::shared_ptr<gloo::transport::Device> device;
  std::shared_ptr<gloo::rendezvous::Context> context;
  uint32_t tag = 0;  // a fresh tag per collective: a late message of an earlier one can never match a later one
};

std::unique_ptr<Group> group;

Group& current(const Napi::Env& env) {
  if (!group) throw Napi::Error::New(env, "no process group: call init() first");
  return *group;
}

// A float32 or float64 array's elements, with its element size.
struct Elements {
  void* data;
  size_t count;
  bool isDouble;
};

Elements elementsOf(const Napi::Value& value, const char* what) {
  if (value.IsTypedArray()) {
    auto array = value.As<Napi::TypedArray>();
    auto type = array.TypedArrayType();
    if (type == napi_float32_array || type == napi_float64_array) {
      auto* base = static_cast<uint8_t*>(array.ArrayBuffer().Data()) + array.ByteOffset();
      return {base, array.ElementLength(), type == napi_float64_array};
    }
  }
  throw Napi::TypeError::New(value.Env(), std::string(what) + " must be a Float32Array or a Float64Array");
}

// The elements of each rank's part (a JavaScript array of whole numbers below 2^31), and their sum.
std::vector<size_t> countsOf(const Napi::Value& value, const char* op, size_t* total) {
  if (!value.IsArray()) throw Napi::TypeError::New(value.Env(), std::string(op) + ": counts must be an array");
  auto array = value.As<Napi::Array>();
  std::vector<size_t> counts;
  *total = 0;
  for (uint32_t i = 0; i < array.Length(); i++) {
    Napi::Value v = array.Get(i);
    double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0 && d < 2147483648.0 && d == double(int64_t(d)))) throw Napi::RangeError::New(value.Env(), std::string(op) + ": counts must be whole numbers ≥ 0");
    counts.push_back(size_t(d));
    *total += counts.back();
  }
  return counts;
}

// After a collective failed: which rank is gone, from the store (rank 0 knows whose connection closed), or that
// rank 0 itself is (its store does not answer), or that none left (so one hangs).
std::string whoIsGone(Group& g, const std::string& what) {
  std::string gone;
  bool timedOut = what.find("imed out") != std::string::npos;
  // A dead peer's sockets close together; the store may see its connection close a moment after we saw ours.
  for (int tries = 0; gone.empty() && tries < (timedOut ? 1 : 50); tries++) {
    if (tries) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    try {
      gone = g.store->gone();
    } catch (const std::exception&) {
      return g.rank == 0 ? "" : "rank 0 is gone (its rendezvous store does not answer)";
    }
  }
  if (!gone.empty()) return (gone.find(',') == std::string::npos ? "rank " : "ranks ") + gone + " left the run";
  if (timedOut) return "every rank is still connected, so one of them hangs or is too slow";
  return "";
}

template <typename Fn>
Napi::Value collective(const Napi::CallbackInfo& info, const char* name, Fn&& fn) {
  Group& g = current(info.Env());
  try {
    fn(g, ++g.tag);
  } catch (const std::exception& e) {
    std::string what = e.what();
    std::string who = whoIsGone(g, what);
    throw Napi::Error::New(info.Env(), std::string(name) + " failed on rank " + std::to_string(g.rank) + " of " +
                                           std::to_string(g.size) + ": " + (who.empty() ? "" : who + ": ") + what);
  }
  return info.Env().Undefined();
}

// init(rank, size, masterAddr, masterPort, timeoutMs, hostname): rendezvous and a full mesh of TCP pairs.
Napi::Value Init(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (group) throw Napi::Error::New(env, "the process group is already initialised");
  auto g = std::make_unique<Group>();
  g->rank = info[0].As<Napi::Number>().Int32Value();
  g->size = info[1].As<Napi::Number>().Int32Value();
  std::string masterAddr = info[2].As<Napi::String>();
  int masterPort = info[3].As<Napi::Number>().Int32Value();
  g->timeout = std::chrono::milliseconds(info[4].As<Napi::Number>().Int64Value());
  std::string hostname = info[5].As<Napi::String>();
  try {
    g->store = std::make_unique<memgpt::TcpStore>(masterAddr, masterPort, g->rank, g->rank == 0, g->timeout);
    gloo::transport::tcp::attr attr;
    attr.hostname = hostname;
    g->device = gloo::transport::tcp::CreateDevice(attr);
    g->context = std::make_shared<gloo::rendezvous::Context>(g->rank, g->size);
    g->context->setTimeout(g->timeout);
    gloo::rendezvous::PrefixStore prefixed("memgpt", *g->store);
    g->context->connectFullMesh(prefixed, g->device);
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, "rendezvous of rank " + std::to_string(g->rank) + " of " + std::to_string(g->size) + " at " +
                                    masterAddr + ":" + std::to_string(masterPort) + " failed: " + e.what());
  }
  group = std::move(g);
  return env.Undefined();
}

// The elementwise sum over ranks of n values at data, in place.
template <typename T>
void sumInPlace(Group& g, uint32_t tag, T* data, size_t n) {
  gloo::AllreduceOptions opts(g.context);
  opts.setTag(tag);
  opts.setTimeout(g.timeout);
  opts.setOutput(data, n);
  opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<T>));
  gloo::allreduce(opts);
}

// allreduce(array): the elementwise sum over ranks, in place.
Napi::Value Allreduce(const Napi::CallbackInfo& info) {
  Elements x = elementsOf(info[0], "allreduce: the buffer");
  return collective(info, "allreduce", [&](Group& g, uint32_t tag) {
    if (x.isDouble) sumInPlace(g, tag, static_cast<double*>(x.data), x.count);
    else sumInPlace(g, tag, static_cast<float*>(x.data), x.count);
  });
}

// allreduceAt(address, elements): the float32 sum over ranks, in place, of memory this process owns elsewhere (a
// CPU storage of the main addon: a bucket of gradients), so that the gradients need no copy.
Napi::Value AllreduceAt(const Napi::CallbackInfo& info) {
  bool lossless = false;
  uint64_t address = info[0].As<Napi::BigInt>().Uint64Value(&lossless);
  int64_t elements = info[1].As<Napi::Number>().Int64Value();
  if (!lossless || !address || elements < 0) throw Napi::RangeError::New(info.Env(), "allreduceAt: an address and a count of elements");
  return collective(info, "allreduce", [&](Group& g, uint32_t tag) {
    sumInPlace(g, tag, reinterpret_cast<float*>(uintptr_t(address)), size_t(elements));
  });
}

// reduceScatter(array, counts): the elementwise sum over ranks of float32 array; rank r's part (counts[r] elements,
// starting after the parts of ranks before it) is reduced, the rest is left undefined.
Napi::Value ReduceScatter(const Napi::CallbackInfo& info) {
  Elements x = elementsOf(info[0], "reduceScatter: the buffer");
  size_t total = 0;
  std::vector<size_t> sizes = countsOf(info[1], "reduceScatter", &total);
  std::vector<int> counts(sizes.begin(), sizes.end());
  if (x.isDouble || total != x.count) throw Napi::RangeError::New(info.Env(), "reduceScatter: a Float32Array whose length is the sum of counts");
  return collective(info, "reduce-scatter", [&](Group& g, uint32_t) {
    if (int(counts.size()) != g.size) throw std::runtime_error("one count per rank is needed");
    gloo::ReduceScatterHalvingDoubling<float> algorithm(g.context, {static_cast<float*>(x.data)}, int(x.count), counts);
    algorithm.run();
  });
}

// allgatherv(input, output, counts): output (sum of counts elements) gets each rank's input in rank order.
Napi::Value Allgatherv(const Napi::CallbackInfo& info) {
  Elements in = elementsOf(info[0], "allgatherv: the input");
  Elements out = elementsOf(info[1], "allgatherv: the output");
  size_t total = 0;
  std::vector<size_t> counts = countsOf(info[2], "allgatherv", &total);
  if (in.isDouble != out.isDouble || total != out.count) throw Napi::RangeError::New(info.Env(), "allgatherv: output must hold the sum of counts elements of the input's type");
  return collective(info, "all-gather", [&](Group& g, uint32_t tag) {
    if (int(counts.size()) != g.size || counts[g.rank] != in.count) throw std::runtime_error("counts must have one entry per rank, this rank's equal to its input's length");
    gloo::AllgathervOptions opts(g.context);
    opts.setTag(tag);
    opts.setTimeout(g.timeout);
    if (in.isDouble) {
      opts.setInput(static_cast<double*>(in.data), in.count);
      opts.setOutput(static_cast<double*>(out.data), counts);
    } else {
      opts.setInput(static_cast<float*>(in.data), in.count);
      opts.setOutput(static_cast<float*>(out.data), counts);
    }
    gloo::allgatherv(opts);
  });
}

// broadcast(array, root): every rank's array becomes root's.
Napi::Value Broadcast(const Napi::CallbackInfo& info) {
  Elements x = elementsOf(info[0], "broadcast: the buffer");
  int root = info[1].As<Napi::Number>().Int32Value();
  return collective(info, "broadcast", [&](Group& g, uint32_t tag) {
    gloo::BroadcastOptions opts(g.context);
    opts.setTag(tag);
    opts.setTimeout(g.timeout);
    opts.setRoot(root);
    if (x.isDouble) opts.setOutput(static_cast<double*>(x.data), x.count);
    else opts.setOutput(static_cast<float*>(x.data), x.count);
    gloo::broadcast(opts);
  });
}

Napi::Value Barrier(const Napi::CallbackInfo& info) {
  return collective(info, "barrier", [&](Group& g, uint32_t tag) {
    gloo::BarrierOptions opts(g.context);
    opts.setTag(tag);
    opts.setTimeout(g.timeout);
    gloo::barrier(opts);
  });
}

// close(): drops the pairs and the store (rank 0's store server stops).
Napi::Value Close(const Napi::CallbackInfo& info) {
  group.reset();
  return info.Env().Undefined();
}

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  exports.Set("init", Napi::Function::New(env, Init));
  exports.Set("allreduce", Napi::Function::New(env, Allreduce));
  exports.Set("allreduceAt", Napi::Function::New(env, AllreduceAt));
  exports.Set("reduceScatter", Napi::Function::New(env, ReduceScatter));
  exports.Set("allgatherv", Napi::Function::New(env, Allgatherv));
  exports.Set("broadcast", Napi::Function::New(env, Broadcast));
  exports.Set("barrier", Napi::Function::New(env, Barrier));
  exports.Set("close", Napi::Function::New(env, Close));
  exports.Set("engine", Napi::String::New(env, "gloo " + std::to_string(GLOO_VERSION_MAJOR) + "." + std::to_string(GLOO_VERSION_MINOR) + "." + std::to_string(GLOO_VERSION_PATCH)));
  return exports;
}

}  // namespace

NODE_API_MODULE(memgpt_gloo, InitModule)
