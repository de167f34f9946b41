// gloo's own all-reduce, timed in C++ with nothing of ours in between but the rendezvous store: the ceiling that
// bench/parallel.ts holds memgpt's gradient sums against (Debian ships gloo without its benchmark program).
// Usage: allreduce_bench RANK WORLD_SIZE PORT ELEMENTS ITERATIONS; rank 0 prints the median seconds of one call.
#include <gloo/allreduce.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/transport/tcp/device.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "tcp_store.h"

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s RANK WORLD_SIZE PORT ELEMENTS ITERATIONS\n", argv[0]);
    return 2;
  }
  int rank = std::atoi(argv[1]), size = std::atoi(argv[2]), port = std::atoi(argv[3]);
  size_t elements = std::strtoull(argv[4], nullptr, 10);
  int iterations = std::atoi(argv[5]);
  auto timeout = std::chrono::milliseconds(60000);
  memgpt::TcpStore store("127.0.0.1", port, rank, rank == 0, timeout);
  gloo::transport::tcp::attr attr;
  attr.hostname = "127.0.0.1";
  auto device = gloo::transport::tcp::CreateDevice(attr);
  auto context = std::make_shared<gloo::rendezvous::Context>(rank, size);
  context->setTimeout(timeout);
  gloo::rendezvous::PrefixStore prefixed("bench", store);
  context->connectFullMesh(prefixed, device);
  std::vector<float> buffer(elements, 1.0f);
  std::vector<double> seconds;
  for (int i = 0; i < iterations + 2; i++) {
    gloo::AllreduceOptions opts(context);
    opts.setOutput(buffer.data(), elements);
    opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
    opts.setTag(uint32_t(i));
    auto t0 = std::chrono::steady_clock::now();
    gloo::allreduce(opts);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i >= 2) seconds.push_back(s);  // two warm-up calls
  }
  std::sort(seconds.begin(), seconds.end());
  if (rank == 0) std::printf("%.9f\n", seconds[seconds.size() / 2]);
  return 0;
}
