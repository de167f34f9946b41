// Ceilings of this CPU for the roofline figures (native/cpu/probe.cpp).
#pragma once

#include <cstdint>

namespace mg::cpu {

// Peak float32 GFLOP/s over all pool threads, each timing FMA bursts for `seconds`.
double probe_peak_gflops(double seconds);
// Best GB/s (bytes read + written) of a parallel memcpy or STREAM triad over arrays of `bytes`, over `reps` tries.
double probe_copy_gbs(int64_t bytes, int reps);

}  // namespace mg::cpu
