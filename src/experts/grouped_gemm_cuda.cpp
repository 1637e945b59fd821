// The grouped GEMM on CUDA tensors: cuBLAS through kernels/cuda, ordered on the caller's stream,
// with no host wait. Padding rows of C are zeroed as on the CPU.
#include <vector>

#include "src/core/device.hpp"
#include "src/experts/grouped_gemm.hpp"

#if defined(MOECOMM_HAVE_CUDA)
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <map>

#include "kernels/cuda/grouped_gemm.hpp"
#endif

namespace moecomm {

#if defined(MOECOMM_HAVE_CUDA)

namespace {

// One cuBLAS handle per thread and device, made on first use and kept for the thread's life.
Status cublasHandleFor(int device, cublasHandle_t* out) {
  struct Handles {
    std::map<int, cublasHandle_t> by_device;
    ~Handles() {
      for (auto& [d, h] : by_device) cublasDestroy(h);
    }
  };
  thread_local Handles handles;
  auto it = handles.by_device.find(device);
  if (it == handles.by_device.end()) {
    cublasHandle_t h = nullptr;
    const cublasStatus_t status = cublasCreate(&h);
    if (status != CUBLAS_STATUS_SUCCESS) {
      return makeError(StatusCode::kSystemError, "cublasCreate failed on GPU {}: {}", device,
                       cublasGetStatusString(status));
    }
    it = handles.by_device.emplace(device, h).first;
  }
  *out = it->second;
  return Status::ok();
}

cudaDataType_t cudaType(DType dtype) {
  return dtype == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F;
}

}  // namespace

Status runGroupedGemmCuda(GemmForm form, const TensorView& a, const TensorView& b,
                          const TensorView& c, const std::vector<int64_t>& counts,
                          const std::vector<int64_t>& offsets, float beta, ExecContext context) {
  MOECOMM_RETURN_IF_ERROR(checkGroupedGemm(form, a, b, c, counts, offsets, beta, true));
  MOECOMM_RETURN_IF_ERROR(device::requireDevice(a.device.index));
  MOECOMM_RETURN_IF_ERROR(device::setDevice(a.device.index));
  cublasHandle_t handle = nullptr;
  MOECOMM_RETURN_IF_ERROR(cublasHandleFor(a.device.index, &handle));
  cuda::GroupedGemmArgs args;
  args.op = static_cast<cuda::GemmOp>(form);
  args.a = a.data;
  args.b = b.data;
  args.c = c.data;
  args.ab_type = cudaType(a.dtype);
  args.c_type = cudaType(c.dtype);
  const bool tn = form == GemmForm::kTN;
  args.k = tn ? c.shape[1] : b.shape[1];
  args.n = tn ? c.shape[2] : b.shape[2];
  args.beta = beta;
  for (size_t e = 0; e < counts.size(); ++e) {
    args.first.push_back(offsets[e]);
    args.rows.push_back(counts[e]);
  }
  const cublasStatus_t status =
      cuda::groupedGemm(handle, args, static_cast<cudaStream_t>(context.stream), nullptr);
  if (status != CUBLAS_STATUS_SUCCESS) {
    return makeError(StatusCode::kSystemError, "the grouped GEMM failed in cuBLAS: {}",
                     cublasGetStatusString(status));
  }
  if (tn) return Status::ok();
  // Rows past each expert's count, and past the last expert's block, come out as zeros.
  const size_t row_bytes = static_cast<size_t>(c.shape[1]) * dtypeSize(c.dtype);
  auto* base = static_cast<std::byte*>(c.data);
  for (size_t e = 0; e <= counts.size(); ++e) {
    const int64_t begin = e < counts.size() ? offsets[e] + counts[e] : offsets.back();
    const int64_t end = e < counts.size() ? offsets[e + 1] : c.shape[0];
    if (end > begin) {
      MOECOMM_RETURN_IF_ERROR(device::memsetAsync(base + begin * row_bytes, 0,
                                                  static_cast<size_t>(end - begin) * row_bytes,
                                                  context.stream));
    }
  }
  return Status::ok();
}

#else

Status runGroupedGemmCuda(GemmForm, const TensorView& a, const TensorView&, const TensorView&,
                          const std::vector<int64_t>&, const std::vector<int64_t>&, float,
                          ExecContext) {
  return device::requireDevice(a.device.index);
}

#endif

}  // namespace moecomm
