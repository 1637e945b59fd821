#include <algorithm>

#include "kernels/cuda/copy.hpp"
#include "kernels/cuda/rows.cuh"

namespace moecomm::cuda {

namespace {

// A whole grid strides over each part's bytes in its widest unit; enough blocks to fill an H100
// or H200 (132 SMs, 8 blocks of 256 threads each), so a large copy runs at the copy rate and a
// small one launches few blocks.
constexpr int64_t kCopyBlocks = 1056;

struct CountedCopy {
  CountedRows part[kMaxCountedParts];
  int unit[kMaxCountedParts];
  int parts;
};

__global__ void countedCopyKernel(CountedCopy copy, const int32_t* rows, int64_t max_rows) {
  const int64_t wanted = *rows;
  const int64_t n = wanted < 0 ? 0 : (wanted > max_rows ? max_rows : wanted);
  const int64_t thread = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t threads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int p = 0; p < copy.parts; ++p) {
    const CountedRows& part = copy.part[p];
    const int64_t bytes = n * part.row_bytes;
    switch (copy.unit[p]) {  // the same for every thread
      case 16:
        copyRowUnits<int4>(part.dst, part.src, bytes, thread, threads);
        break;
      case 4:
        copyRowUnits<uint32_t>(part.dst, part.src, bytes, thread, threads);
        break;
      default:
        copyRowUnits<uint8_t>(part.dst, part.src, bytes, thread, threads);
        break;
    }
  }
}

}  // namespace

cudaError_t copyCountedRows(const CountedRows* parts, int count, const int32_t* rows,
                            int64_t max_rows, cudaStream_t stream) {
  if (count < 0 || count > kMaxCountedParts || rows == nullptr || max_rows < 0) {
    return cudaErrorInvalidValue;
  }
  CountedCopy copy{};
  int64_t most_units = 0;  // of the largest part, if every row is real
  for (int p = 0; p < count; ++p) {
    const CountedRows& part = parts[p];
    if (part.row_bytes < 0) return cudaErrorInvalidValue;
    if (part.row_bytes == 0 || max_rows == 0) continue;
    if (part.dst == nullptr || part.src == nullptr) return cudaErrorInvalidValue;
    const int unit = copyUnit(part.row_bytes, part.dst, part.src);
    copy.part[copy.parts] = part;
    copy.unit[copy.parts] = unit;
    ++copy.parts;
    most_units = std::max(most_units, max_rows * part.row_bytes / unit);
  }
  if (copy.parts == 0) return cudaSuccess;
  const int blocks = static_cast<int>(std::min<int64_t>(blocksFor(most_units), kCopyBlocks));
  countedCopyKernel<<<blocks, kThreads, 0, stream>>>(copy, rows, max_rows);
  return cudaGetLastError();
}

}  // namespace moecomm::cuda
