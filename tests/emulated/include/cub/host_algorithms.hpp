// CUB's device-wide algorithms as moecomm calls them, on the host, for the emulated GPU tests.
// The same contracts: a first call with null storage asks for the temporary bytes, radix sorts
// are stable and order floats by value, histograms count samples in [lower, upper), and the work
// runs on the stream after its earlier work (the call returns before).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "tests/emulated/stream_work.hpp"

namespace cub {

namespace host {

inline constexpr size_t kTemporaryBytes = 64;

// A key's radix order as an unsigned number: floats flip so that their bits sort by value.
template <typename Key>
uint64_t radixKey(Key key, int begin_bit, int end_bit) {
  using Bits = std::conditional_t<sizeof(Key) == 8, uint64_t, uint32_t>;
  static_assert(sizeof(Key) == 4 || sizeof(Key) == 8);
  Bits bits;
  std::memcpy(&bits, &key, sizeof(Key));
  if constexpr (std::is_floating_point_v<Key>) {
    const Bits sign = Bits{1} << (8 * sizeof(Bits) - 1);
    bits = (bits & sign) != 0 ? static_cast<Bits>(~bits) : static_cast<Bits>(bits | sign);
  } else if constexpr (std::is_signed_v<Key>) {
    bits ^= Bits{1} << (8 * sizeof(Bits) - 1);
  }
  const int width = end_bit - begin_bit;
  const uint64_t mask = width >= 64 ? ~uint64_t{0} : (uint64_t{1} << width) - 1;
  return (static_cast<uint64_t>(bits) >> begin_bit) & mask;
}

template <typename Key, typename Value>
void sortPairsNow(const Key* keys_in, Key* keys_out, const Value* values_in, Value* values_out,
                  int64_t n, int begin_bit, int end_bit, bool descending) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const uint64_t ka = radixKey(keys_in[a], begin_bit, end_bit);
    const uint64_t kb = radixKey(keys_in[b], begin_bit, end_bit);
    return descending ? ka > kb : ka < kb;
  });
  std::vector<Key> keys(order.size());
  std::vector<Value> values(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    keys[i] = keys_in[order[i]];
    values[i] = values_in[order[i]];
  }
  std::copy(keys.begin(), keys.end(), keys_out);
  std::copy(values.begin(), values.end(), values_out);
}

template <typename Key, typename Value>
cudaError_t sortPairs(void* temp, size_t& temp_bytes, const Key* keys_in, Key* keys_out,
                      const Value* values_in, Value* values_out, int64_t n, int begin_bit,
                      int end_bit, bool descending, cudaStream_t stream) {
  if (temp == nullptr) {
    temp_bytes = kTemporaryBytes;
    return cudaSuccess;
  }
  return emu::enqueue(stream, [=] {
    sortPairsNow(keys_in, keys_out, values_in, values_out, n, begin_bit, end_bit, descending);
  });
}

}  // namespace host

struct DeviceRadixSort {
  template <typename Key, typename Value, typename Count>
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, const Key* keys_in, Key* keys_out,
                               const Value* values_in, Value* values_out, Count n,
                               int begin_bit = 0, int end_bit = sizeof(Key) * 8,
                               cudaStream_t stream = nullptr) {
    return host::sortPairs(temp, temp_bytes, keys_in, keys_out, values_in, values_out,
                           static_cast<int64_t>(n), begin_bit, end_bit, false, stream);
  }
  template <typename Key, typename Value, typename Count>
  static cudaError_t SortPairsDescending(void* temp, size_t& temp_bytes, const Key* keys_in,
                                         Key* keys_out, const Value* values_in, Value* values_out,
                                         Count n, int begin_bit = 0, int end_bit = sizeof(Key) * 8,
                                         cudaStream_t stream = nullptr) {
    return host::sortPairs(temp, temp_bytes, keys_in, keys_out, values_in, values_out,
                           static_cast<int64_t>(n), begin_bit, end_bit, true, stream);
  }
};

struct DeviceScan {
  template <typename In, typename Out, typename Count>
  static cudaError_t ExclusiveSum(void* temp, size_t& temp_bytes, In in, Out out, Count n,
                                  cudaStream_t stream = nullptr) {
    if (temp == nullptr) {
      temp_bytes = host::kTemporaryBytes;
      return cudaSuccess;
    }
    return emu::enqueue(stream, [=]() mutable {
      using T = std::remove_reference_t<decltype(out[0])>;
      T sum{};
      for (Count i = 0; i < n; ++i) {
        const T v = static_cast<T>(in[i]);  // in and out may be one array
        out[i] = sum;
        sum += v;
      }
    });
  }
};

struct DeviceHistogram {
  template <typename Sample, typename Counter, typename Level, typename Count>
  static cudaError_t HistogramEven(void* temp, size_t& temp_bytes, const Sample* samples,
                                   Counter* histogram, int levels, Level lower, Level upper,
                                   Count n, cudaStream_t stream = nullptr) {
    if (temp == nullptr) {
      temp_bytes = host::kTemporaryBytes;
      return cudaSuccess;
    }
    return emu::enqueue(stream, [=] {
      const int bins = levels - 1;
      std::fill(histogram, histogram + bins, Counter{0});
      for (Count i = 0; i < n; ++i) {
        const auto s = samples[i];
        if (s < lower || s >= upper) continue;
        const auto bin = (static_cast<int64_t>(s) - static_cast<int64_t>(lower)) * bins /
                         (static_cast<int64_t>(upper) - static_cast<int64_t>(lower));
        ++histogram[bin];
      }
    });
  }
};

}  // namespace cub
