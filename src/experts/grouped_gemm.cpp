#include <algorithm>
#include <thread>
#include <vector>

#include "kernels/cpu/convert.hpp"
#include "kernels/cpu/gemm.hpp"
#include "moecomm/experts.hpp"
#include "src/core/env.hpp"
#include "src/core/status.hpp"
#include "src/experts/grouped_gemm.hpp"

namespace moecomm {

namespace {

Status checkLayout(const std::vector<int64_t>& counts, const std::vector<int64_t>& offsets,
                   int64_t rows) {
  const size_t experts = counts.size();
  if (offsets.empty() && experts > 0) {
    return makeError(StatusCode::kInvalidArgument,
                     "no expert offsets: a token-major batch has one row per token, not per "
                     "expert; grouped GEMMs need an expert-major batch (DispatchOptions::layout)");
  }
  if (offsets.size() != experts + 1) {
    return makeError(StatusCode::kInvalidArgument,
                     "offsets has {} entries but counts has {}; offsets needs experts + 1",
                     offsets.size(), experts);
  }
  if (offsets[0] != 0 && experts > 0) {
    return makeError(StatusCode::kInvalidArgument, "offsets[0] is {}, expected 0", offsets[0]);
  }
  for (size_t e = 0; e < experts; ++e) {
    if (counts[e] < 0 || offsets[e] + counts[e] > offsets[e + 1]) {
      return makeError(StatusCode::kInvalidArgument,
                       "expert {}: count {} does not fit between offsets {} and {}", e, counts[e],
                       offsets[e], offsets[e + 1]);
    }
  }
  if (offsets[experts] > rows) {
    return makeError(StatusCode::kInvalidArgument,
                     "the layout covers {} rows but the tensor has {}", offsets[experts], rows);
  }
  return Status::ok();
}

Status checkView(const char* name, const TensorView& v, int ndim, bool activation, bool cuda) {
  if (v.device.isCuda() != cuda) {
    return makeError(StatusCode::kInvalidArgument,
                     "{} is {} but the other operands are {}: pass A, B and C on one device", name,
                     v.describe(), cuda ? "on a GPU" : "host tensors");
  }
  if (v.ndim != ndim) {
    return makeError(StatusCode::kInvalidArgument, "{} ({}) must have {} dimensions", name,
                     v.describe(), ndim);
  }
  // On the GPU every operand may be bf16 (cuBLAS's tensor cores); on the CPU only activations.
  const bool dtype_ok = v.dtype == DType::kF32 || ((activation || cuda) && v.dtype == DType::kBF16);
  if (!dtype_ok) {
    return makeError(StatusCode::kInvalidArgument, "{} ({}) must be f32{}", name, v.describe(),
                     activation || cuda ? " or bf16" : "");
  }
  if (v.data == nullptr && v.numel() > 0) {
    return makeError(StatusCode::kInvalidArgument, "{} ({}) has null data", name, v.describe());
  }
  return Status::ok();
}

// Rows [first, first + rows) of a [*, cols] activation as f32: the data itself when it is f32,
// else converted into `scratch`.
const float* rowsAsF32(const TensorView& v, int64_t first, int64_t rows, int64_t cols,
                       std::vector<float>& scratch) {
  if (v.dtype == DType::kF32) return v.as<const float>() + first * cols;
  scratch.resize(static_cast<size_t>(rows * cols));
  cpu::convertArray(static_cast<const std::byte*>(v.data) + first * cols * dtypeSize(v.dtype),
                    v.dtype, scratch.data(), DType::kF32, rows * cols);
  return scratch.data();
}

Status checkShapes(GemmForm form, const TensorView& a, const TensorView& b, const TensorView& c,
                   size_t experts, float beta, bool cuda) {
  const bool tn = form == GemmForm::kTN;
  MOECOMM_RETURN_IF_ERROR(checkView("A", a, 2, true, cuda));
  MOECOMM_RETURN_IF_ERROR(checkView("B", b, tn ? 2 : 3, tn, cuda));
  MOECOMM_RETURN_IF_ERROR(checkView("C", c, tn ? 3 : 2, false, cuda));
  if (cuda && a.dtype != b.dtype) {
    return makeError(StatusCode::kInvalidArgument,
                     "on a GPU, A ({}) and B ({}) must share a dtype (cuBLAS multiplies like "
                     "types); convert one of them",
                     a.describe(), b.describe());
  }
  const int64_t E = static_cast<int64_t>(experts);
  auto bad = [&](const char* expected) {
    return makeError(StatusCode::kInvalidArgument,
                     "grouped GEMM shapes do not fit: A {}, B {}, C {}, {} experts; expected {}",
                     a.describe(), b.describe(), c.describe(), experts, expected);
  };
  if (form == GemmForm::kNN) {
    if (b.shape[0] != E || b.shape[1] != a.shape[1] || c.shape[0] != a.shape[0] ||
        c.shape[1] != b.shape[2]) {
      return bad("A [R, K], B [E, K, N], C [R, N]");
    }
  } else if (form == GemmForm::kNT) {
    if (b.shape[0] != E || b.shape[2] != a.shape[1] || c.shape[0] != a.shape[0] ||
        c.shape[1] != b.shape[1]) {
      return bad("A [R, N], B [E, K, N], C [R, K]");
    }
  } else {
    if (b.shape[0] != a.shape[0] || c.shape[0] != E || c.shape[1] != a.shape[1] ||
        c.shape[2] != b.shape[1]) {
      return bad("A [R, K], B [R, N], C [E, K, N]");
    }
  }
  if (!tn && beta != 0.0f) {
    return makeError(StatusCode::kInvalidArgument,
                     "beta must be 0 for kNN and kNT (they write rows, not accumulate)");
  }
  return Status::ok();
}

}  // namespace

Status checkGroupedGemm(GemmForm form, const TensorView& a, const TensorView& b,
                        const TensorView& c, const std::vector<int64_t>& counts,
                        const std::vector<int64_t>& offsets, float beta, bool cuda) {
  MOECOMM_RETURN_IF_ERROR(checkShapes(form, a, b, c, counts.size(), beta, cuda));
  return checkLayout(counts, offsets, a.shape[0]);
}

Status runGroupedGemmHost(GemmForm form, const TensorView& a, const TensorView& b,
                          const TensorView& c, const std::vector<int64_t>& counts,
                          const std::vector<int64_t>& offsets, float beta) {
  MOECOMM_RETURN_IF_ERROR(checkGroupedGemm(form, a, b, c, counts, offsets, beta, false));
  std::vector<float> a_scratch, b_scratch;
  float* out = c.as<float>();
  for (size_t e = 0; e < counts.size(); ++e) {
    const int64_t first = offsets[e], rows = counts[e];
    if (form == GemmForm::kTN) {
      const int64_t K = a.shape[1], N = b.shape[1];
      float* c_e = out + static_cast<int64_t>(e) * K * N;
      if (rows == 0) {
        if (beta != 1.0f) std::transform(c_e, c_e + K * N, c_e, [&](float v) { return beta * v; });
        continue;
      }
      const float* a_e = rowsAsF32(a, first, rows, K, a_scratch);
      const float* b_e = rowsAsF32(b, first, rows, N, b_scratch);
      cpu::sgemm(true, false, K, N, rows, 1.0f, a_e, K, b_e, N, beta, c_e, N);
      continue;
    }
    const int64_t in_cols = a.shape[1], out_cols = c.shape[1];
    const int64_t padded_end = offsets[e + 1];
    float* c_rows = out + first * out_cols;
    if (rows > 0) {
      const float* a_e = rowsAsF32(a, first, rows, in_cols, a_scratch);
      const float* w = b.as<const float>() + static_cast<int64_t>(e) * b.shape[1] * b.shape[2];
      if (form == GemmForm::kNN) {
        cpu::sgemm(false, false, rows, out_cols, in_cols, 1.0f, a_e, in_cols, w, out_cols, 0.0f,
                   c_rows, out_cols);
      } else {
        cpu::sgemm(false, true, rows, out_cols, in_cols, 1.0f, a_e, in_cols, w, in_cols, 0.0f,
                   c_rows, out_cols);
      }
    }
    std::fill(out + (first + rows) * out_cols, out + padded_end * out_cols, 0.0f);
  }
  if (form != GemmForm::kTN) {  // rows past the last expert's block
    const int64_t end = counts.empty() ? 0 : offsets.back();
    std::fill(out + end * c.shape[1], out + c.shape[0] * c.shape[1], 0.0f);
  }
  return Status::ok();
}

int defaultGemmThreads(int ranks_on_host) {
  const int64_t forced = envInt("MOECOMM_GEMM_THREADS", 0);
  if (forced > 0) return static_cast<int>(forced);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / std::max(1, ranks_on_host));
}

Status runGroupedGemm(GemmForm form, const TensorView& a, const TensorView& b, const TensorView& c,
                      const std::vector<int64_t>& counts, const std::vector<int64_t>& offsets,
                      float beta, ExecContext context) {
  if (a.device.isCuda()) return runGroupedGemmCuda(form, a, b, c, counts, offsets, beta, context);
  return runGroupedGemmHost(form, a, b, c, counts, offsets, beta);
}

void groupedGemm(GemmForm form, const TensorView& a, const TensorView& b, const TensorView& c,
                 const std::vector<int64_t>& counts, const std::vector<int64_t>& offsets,
                 float beta, ExecContext context) {
  throwIfError(runGroupedGemm(form, a, b, c, counts, offsets, beta, context));
}

void setGemmThreads(int threads) {
  cpu::setGemmThreads(threads > 0 ? threads : defaultGemmThreads(1));
}

}  // namespace moecomm
