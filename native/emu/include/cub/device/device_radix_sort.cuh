// The emulated cub::DeviceRadixSort (native/emu): SortPairs as a stable sort on the host by the key bits
// [begin_bit, end_bit), with CUB's two-call protocol (a null temporary asks for its size).
#pragma once

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <vector>

#include "../../cuda_runtime.h"

namespace cub {
struct DeviceRadixSort {
  template <typename K, typename V>
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, const K* keys_in, K* keys_out, const V* values_in,
                               V* values_out, int n, int begin_bit = 0, int end_bit = int(sizeof(K) * 8),
                               cudaStream_t = nullptr) {
    if (!temp) {
      temp_bytes = 16;
      return cudaSuccess;
    }
    const K width_mask = end_bit - begin_bit >= int(sizeof(K) * 8) ? ~K(0) : K((K(1) << (end_bit - begin_bit)) - 1);
    auto bits = [&](K k) { return K(k >> begin_bit) & width_mask; };
    std::vector<int> order(size_t(std::max(n, 0)));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return bits(keys_in[a]) < bits(keys_in[b]); });
    std::vector<K> keys(order.size());
    std::vector<V> values(values_in ? order.size() : 0);
    for (size_t i = 0; i < order.size(); i++) {
      keys[i] = keys_in[order[i]];
      if (values_in) values[i] = values_in[order[i]];
    }
    std::copy(keys.begin(), keys.end(), keys_out);
    if (values_in && values_out) std::copy(values.begin(), values.end(), values_out);
    return cudaSuccess;
  }
};
}  // namespace cub
