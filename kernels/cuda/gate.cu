#include <climits>
#include <cmath>

#include "kernels/cuda/gate.hpp"
#include "kernels/cuda/rows.cuh"

namespace moecomm::cuda {

namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFull = 0xffffffffu;

struct Best {
  float value;
  int index;  // INT_MAX: none
};

__device__ bool better(float v, int i, const Best& b) {
  return v > b.value || (v == b.value && i < b.index);
}

// The best (largest, then lowest index) of a lane's strided share of values[0, n); -inf entries
// are excluded.
__device__ Best laneBest(const float* values, int n, int lane) {
  Best b{-INFINITY, INT_MAX};
  for (int i = lane; i < n; i += kWarp) {
    if (values[i] != -INFINITY && better(values[i], i, b)) b = {values[i], i};
  }
  return b;
}

__device__ Best warpBest(Best b) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const float v = __shfl_xor_sync(kFull, b.value, offset);
    const int i = __shfl_xor_sync(kFull, b.index, offset);
    if (i != INT_MAX && better(v, i, b)) b = {v, i};
  }
  return b;
}

// Ranks up to `want` entries of values[0, n) into ranked[], best first, and returns how many were
// found. Entries are consumed (set to -inf). Each lane caches the best of its share, so a round
// rescans only the lane that lost its entry.
__device__ int rankTop(float* values, int n, int want, int* ranked, int lane) {
  Best mine = laneBest(values, n, lane);
  int found = 0;
  for (; found < want; ++found) {
    const Best top = warpBest(mine);
    if (top.index == INT_MAX) break;
    if (lane == 0) ranked[found] = top.index;
    if (top.index % kWarp == lane) {
      values[top.index] = -INFINITY;
      mine = laneBest(values, n, lane);
    }
    __syncwarp();
  }
  return found;
}

__device__ float warpSum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFull, v, offset);
  return v;
}

__device__ float warpMax(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    v = fmaxf(v, __shfl_xor_sync(kFull, v, offset));
  }
  return v;
}

// One warp per token. Shared memory per warp: select[E], raw[E], group scores[G], ranked[R].
__global__ void gateKernel(const float* logits, int64_t tokens, const float* bias,
                           cpu::GateParams p, int32_t* idx, float* weights, int32_t* cand_idx,
                           float* cand_weights, int32_t* bad_token) {
  extern __shared__ float shared[];
  const int E = p.experts;
  const int groups = p.num_groups > 1 ? p.num_groups : 1;
  const int ranked_max = p.topk + p.candidates;
  const int ranked_room = ranked_max > groups ? ranked_max : groups;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  float* select = shared + warp * (2 * E + groups + ranked_room);
  float* raw = select + E;
  float* group_score = raw + E;
  int* ranked = reinterpret_cast<int*>(group_score + groups);
  const bool ranks_logits = p.score == 0 && p.renormalize && bias == nullptr && p.num_groups <= 1;

  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp; t < tokens;
       t += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const float* row = logits + t * E;
    bool finite = true;
    float max = -INFINITY;
    for (int e = lane; e < E; e += kWarp) {
      const float l = row[e];
      finite = finite && isfinite(l) && (bias == nullptr || isfinite(bias[e]));
      max = fmaxf(max, l);
      select[e] = l;
    }
    finite = __all_sync(kFull, finite);
    max = warpMax(max);
    int found = 0;
    if (finite) {
      if (!ranks_logits) {
        // raw: what the weights are made of; select: what is ranked (raw, or the logit, + bias).
        float sum = 0.0f;
        for (int e = lane; e < E; e += kWarp) {
          const float l = select[e];
          const float a = p.score == 1 ? 1.0f / (1.0f + expf(-l)) : expf(l - max);
          raw[e] = a;
          sum += a;
        }
        if (p.score == 0) {
          const float inverse = 1.0f / warpSum(sum);
          for (int e = lane; e < E; e += kWarp) raw[e] *= inverse;
        }
        __syncwarp();
        for (int e = lane; e < E; e += kWarp) {
          const float base = p.score == 2 ? select[e] : raw[e];
          select[e] = bias != nullptr ? base + bias[e] : base;
        }
      }
      __syncwarp();
      if (p.num_groups > 1) {
        // A group's score is the sum of its two best select values; keep the best topk_groups.
        const int per_group = E / p.num_groups;
        for (int g = lane; g < p.num_groups; g += kWarp) {
          float first = -INFINITY;
          float second = -INFINITY;
          for (int e = g * per_group; e < (g + 1) * per_group; ++e) {
            const float v = select[e];
            if (v > first) {
              second = first;
              first = v;
            } else if (v > second) {
              second = v;
            }
          }
          group_score[g] = per_group == 1 ? first : first + second;
        }
        __syncwarp();
        const int kept = rankTop(group_score, p.num_groups, p.topk_groups, ranked, lane);
        __syncwarp();
        // rankTop consumed the kept groups' scores (-inf): those are the ones to keep.
        for (int e = lane; e < E; e += kWarp) {
          if (group_score[e / per_group] != -INFINITY) select[e] = -INFINITY;
        }
        (void)kept;
        __syncwarp();
      }
      found = rankTop(select, E, ranked_max, ranked, lane);
      __syncwarp();
    } else if (lane == 0) {
      atomicMin(bad_token, static_cast<int32_t>(t));
    }
    // Weights: a(j) * (scaling / norm); norm sums the kept top-k in slot order, as the CPU does.
    float top_logit = 0.0f;
    if (ranks_logits && found > 0) top_logit = row[ranked[0]];
    float norm = 1.0f;
    if (lane == 0 && found > 0 && (p.renormalize || p.score == 2)) {
      norm = 0.0f;
      const int kept = found < p.topk ? found : p.topk;
      for (int j = 0; j < kept; ++j) {
        norm += ranks_logits ? expf(row[ranked[j]] - top_logit) : raw[ranked[j]];
      }
    }
    norm = __shfl_sync(kFull, norm, 0);
    for (int j = lane; j < ranked_max; j += kWarp) {
      const bool have = j < found;
      const int32_t e = have ? ranked[j] : -1;
      float w = 0.0f;
      if (have) {
        const float a = ranks_logits ? expf(row[e] - top_logit) : raw[e];
        w = a * (p.scaling / norm);
      }
      if (j < p.topk) {
        idx[t * p.topk + j] = e;
        weights[t * p.topk + j] = w;
      } else {
        cand_idx[t * p.candidates + (j - p.topk)] = e;
        cand_weights[t * p.candidates + (j - p.topk)] = w;
      }
    }
    __syncwarp();
  }
}

}  // namespace

cudaError_t gate(const float* logits, int64_t tokens, const float* bias,
                 const cpu::GateParams& params, int32_t* idx, float* weights,
                 int32_t* candidate_idx, float* candidate_weights, int32_t* bad_token,
                 cudaStream_t stream) {
  if (params.experts < 1 || params.experts > kGateMaxExperts || params.topk < 1 ||
      params.topk > params.experts || params.candidates < 0 ||
      (params.num_groups > 1 && params.experts % params.num_groups != 0)) {
    return cudaErrorInvalidValue;
  }
  if (tokens == 0) return cudaSuccess;
  const int groups = params.num_groups > 1 ? params.num_groups : 1;
  const int ranked = params.topk + params.candidates;
  const size_t shared =
      sizeof(float) * kWarpsPerBlock *
      static_cast<size_t>(2 * params.experts + groups + (ranked > groups ? ranked : groups));
  if (shared > 48 * 1024) return cudaErrorInvalidValue;
  const int blocks = cappedGrid((tokens + kWarpsPerBlock - 1) / kWarpsPerBlock);
  gateKernel<<<blocks, kWarp * kWarpsPerBlock, shared, stream>>>(
      logits, tokens, bias, params, idx, weights, candidate_idx, candidate_weights, bad_token);
  return cudaGetLastError();
}

}  // namespace moecomm::cuda
