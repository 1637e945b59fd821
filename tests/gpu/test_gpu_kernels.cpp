// Every CUDA kernel against the CPU implementation or an independent reference written here, on
// fresh random data of many shapes, with outputs poisoned beforehand so that an element a kernel
// forgot to write fails the comparison.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/convert.hpp"
#include "kernels/cpu/gating.hpp"
#include "kernels/cuda/combine.hpp"
#include "kernels/cuda/copy.hpp"
#include "kernels/cuda/fp8.hpp"
#include "kernels/cuda/gate.hpp"
#include "kernels/cuda/grouped_gemm.hpp"
#include "kernels/cuda/layout.hpp"
#include "kernels/cuda/unpack.hpp"
#include "src/core/numeric.hpp"
#include "tests/gpu/device_buffer.hpp"
#include "tests/gpu/gpu_test.hpp"

namespace moecomm::gputest {
namespace {

// One engine per thread (ranks may be threads); each thread takes the next seed.
std::mt19937& rng() {
  static std::atomic<unsigned> next_seed{20261128};
  thread_local std::mt19937 engine(next_seed++);
  return engine;
}

std::vector<float> randomFloats(size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng());
  return v;
}

std::vector<uint16_t> toBf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = numeric::floatToBf16(v[i]);
  return out;
}

// Random routing: k distinct experts per token, some slots -1; `hot` sends every token's first
// slot to expert 0.
std::vector<int32_t> randomRouting(int64_t tokens, int topk, int experts, double unused, bool hot) {
  std::vector<int32_t> idx(static_cast<size_t>(tokens * topk));
  std::vector<int32_t> perm(experts);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int e = 0; e < experts; ++e) perm[e] = e;
    std::shuffle(perm.begin(), perm.end(), rng());
    if (hot) std::swap(perm[0], *std::find(perm.begin(), perm.end(), 0));
    for (int j = 0; j < topk; ++j) {
      idx[t * topk + j] = (u(rng()) < unused && !(hot && j == 0)) ? -1 : perm[j];
    }
  }
  return idx;
}

// ---------------------------------------------------------------------------------------- gate

struct GateCase {
  const char* name;
  cpu::GateParams p;
  bool bias;
  int64_t tokens;
  int ties;  // > 0: logits drawn from this many distinct values, so ties are everywhere
};

// The selection score the CPU ranks, recomputed in double, to tell a near-tie (two experts whose
// scores differ by float rounding only) from a wrong choice.
double selectScore(const float* row, const float* bias, const cpu::GateParams& p, int e) {
  const int E = p.experts;
  double max = row[0];
  for (int i = 1; i < E; ++i) max = std::max<double>(max, row[i]);
  double a = 0;
  if (p.score == 1) {
    a = 1.0 / (1.0 + std::exp(-static_cast<double>(row[e])));
  } else if (p.score == 0) {
    double sum = 0;
    for (int i = 0; i < E; ++i) sum += std::exp(row[i] - max);
    a = std::exp(row[e] - max) / sum;
    if (p.renormalize && bias == nullptr && p.num_groups <= 1) return row[e];
  }
  const double base = p.score == 2 ? row[e] : a;
  return base + (bias != nullptr ? bias[e] : 0.0);
}

void runGateCase(const GateCase& c) {
  const cpu::GateParams& p = c.p;
  const int E = p.experts;
  std::vector<float> logits = randomFloats(static_cast<size_t>(c.tokens * E), -4.0f, 4.0f);
  if (c.ties > 0) {
    for (float& l : logits) l = std::floor(l * static_cast<float>(c.ties) / 8.0f);
  }
  std::vector<float> bias = c.bias ? randomFloats(E, -0.05f, 0.05f) : std::vector<float>{};
  const float* bias_host = c.bias ? bias.data() : nullptr;
  const size_t slots = static_cast<size_t>(c.tokens * p.topk);
  const size_t cands = static_cast<size_t>(c.tokens * p.candidates);
  std::vector<int32_t> idx(slots), cidx(cands);
  std::vector<float> w(slots), cw(cands);
  cpu::gate(logits.data(), c.tokens, bias_host, p, idx.data(), w.data(), cidx.data(), cw.data());

  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<float> d_bias(c.bias ? bias : std::vector<float>(1, 0.0f));
  DeviceBuffer<int32_t> d_idx(slots), d_cidx(cands);
  DeviceBuffer<float> d_w(slots), d_cw(cands);
  DeviceBuffer<int32_t> d_bad(std::vector<int32_t>{INT32_MAX});
  d_idx.poison();
  d_w.poison(0xff);  // NaN
  d_cidx.poison();
  d_cw.poison(0xff);
  CUDA_OK(cuda::gate(d_logits.get(), c.tokens, c.bias ? d_bias.get() : nullptr, p, d_idx.get(),
                     d_w.get(), d_cidx.get(), d_cw.get(), d_bad.get(), nullptr));
  const auto g_idx = d_idx.download();
  const auto g_w = d_w.download();
  const auto g_cidx = d_cidx.download();
  const auto g_cw = d_cw.download();
  GPU_CHECK(d_bad.download()[0] == INT32_MAX, c.name << ": finite logits reported bad");
  int64_t near_ties = 0;
  auto compare = [&](int64_t t, int j, int32_t want, int32_t got, float want_w, float got_w) {
    if (want != got) {
      GPU_CHECK(want >= 0 && got >= 0,
                c.name << " token " << t << " slot " << j << ": cpu " << want << " gpu " << got);
      const float* row = logits.data() + t * E;
      const double a = selectScore(row, bias_host, p, want);
      const double b = selectScore(row, bias_host, p, got);
      GPU_CHECK(std::fabs(a - b) <= 1e-6 * std::max(1.0, std::fabs(a)),
                c.name << " token " << t << " slot " << j << ": cpu expert " << want << " (" << a
                       << ") gpu expert " << got << " (" << b << ")");
      ++near_ties;
      return;
    }
    GPU_CHECK(std::fabs(want_w - got_w) <= 2e-5f * std::max(1.0f, std::fabs(want_w)),
              c.name << " token " << t << " slot " << j << " expert " << want << ": cpu weight "
                     << want_w << " gpu " << got_w);
  };
  for (int64_t t = 0; t < c.tokens; ++t) {
    for (int j = 0; j < p.topk; ++j) {
      const size_t i = static_cast<size_t>(t * p.topk + j);
      compare(t, j, idx[i], g_idx[i], w[i], g_w[i]);
    }
    for (int j = 0; j < p.candidates; ++j) {
      const size_t i = static_cast<size_t>(t * p.candidates + j);
      compare(t, p.topk + j, cidx[i], g_cidx[i], cw[i], g_cw[i]);
    }
  }
  GPU_CHECK(near_ties <= std::max<int64_t>(2, c.tokens / 500),
            c.name << ": " << near_ties << " near-ties is too many to be rounding");
}

cpu::GateParams gateParams(int experts, int topk, int score, bool renormalize, float scaling,
                           int groups, int topk_groups, int candidates) {
  return cpu::GateParams{experts, topk,   score,       renormalize,
                         scaling, groups, topk_groups, candidates};
}

GPU_TEST(gate_matches_cpu_router) {
  const GateCase cases[] = {
      {"softmax renormalized (ranks logits)", gateParams(256, 8, 0, true, 1.0f, 0, 0, 0), false,
       4096, 0},
      {"softmax plain with bias", gateParams(64, 4, 0, false, 1.0f, 0, 0, 2), true, 1000, 0},
      {"deepseek sigmoid groups bias", gateParams(256, 8, 1, true, 2.5f, 8, 4, 4), true, 2048, 0},
      {"mixtral topk-then-softmax", gateParams(8, 2, 2, false, 1.0f, 0, 0, 1), false, 3000, 0},
      {"odd experts sigmoid", gateParams(37, 5, 1, false, 1.0f, 0, 0, 3), false, 513, 0},
      {"ties everywhere softmax", gateParams(64, 6, 0, true, 1.0f, 0, 0, 2), false, 777, 3},
      {"ties everywhere groups", gateParams(64, 4, 2, true, 1.0f, 16, 3, 2), false, 500, 2},
      {"one token", gateParams(16, 16, 0, false, 1.0f, 0, 0, 0), false, 1, 0},
      {"zero tokens", gateParams(16, 2, 1, false, 1.0f, 0, 0, 0), false, 0, 0},
      {"1000 experts", gateParams(1000, 8, 0, true, 1.0f, 0, 0, 0), true, 300, 0},
      {"groups narrower than k", gateParams(32, 6, 1, false, 1.0f, 8, 2, 4), false, 200, 0},
  };
  for (const GateCase& c : cases) runGateCase(c);
}

GPU_TEST(gate_reports_non_finite_logits) {
  const cpu::GateParams p = gateParams(32, 4, 0, true, 1.0f, 0, 0, 0);
  const int64_t tokens = 64;
  std::vector<float> logits = randomFloats(tokens * 32);
  logits[9 * 32 + 3] = std::numeric_limits<float>::infinity();
  logits[5 * 32 + 30] = std::numeric_limits<float>::quiet_NaN();
  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<int32_t> d_idx(tokens * 4);
  DeviceBuffer<float> d_w(tokens * 4);
  DeviceBuffer<int32_t> d_bad(std::vector<int32_t>{INT32_MAX});
  d_idx.poison();
  CUDA_OK(cuda::gate(d_logits.get(), tokens, nullptr, p, d_idx.get(), d_w.get(), nullptr, nullptr,
                     d_bad.get(), nullptr));
  GPU_CHECK(d_bad.download()[0] == 5, "first bad token should be 5, got " << d_bad.download()[0]);
  const auto idx = d_idx.download();
  const auto w = d_w.download();
  for (int64_t t : {5, 9}) {
    for (int j = 0; j < 4; ++j) {
      GPU_CHECK(idx[t * 4 + j] == -1 && w[t * 4 + j] == 0.0f, "bad token " << t << " slot " << j);
    }
  }
  GPU_CHECK(idx[0] >= 0, "a finite token must still be routed");
  GPU_CHECK(cuda::gate(d_logits.get(), tokens, nullptr, gateParams(2000, 4, 0, true, 1, 0, 0, 0),
                       d_idx.get(), d_w.get(), nullptr, nullptr, d_bad.get(),
                       nullptr) == cudaErrorInvalidValue,
            "more experts than the kernel supports must be refused");
}

// ------------------------------------------------------------------------------ layout and pack

struct LayoutRef {
  std::vector<int32_t> tokens_per_expert, tokens_per_rank, rank_offsets, send_pos;
  std::vector<uint8_t> in_rank;
};

LayoutRef referenceLayout(const std::vector<int32_t>& idx, int64_t T, int k, int E, int R) {
  LayoutRef ref;
  ref.tokens_per_expert.assign(E, 0);
  ref.tokens_per_rank.assign(R, 0);
  ref.in_rank.assign(static_cast<size_t>(T * R), 0);
  ref.send_pos.assign(static_cast<size_t>(T * R), -1);
  for (int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < k; ++j) {
      const int32_t e = idx[t * k + j];
      if (e < 0) continue;
      ++ref.tokens_per_expert[e];
      ref.in_rank[t * R + e / (E / R)] = 1;
    }
  }
  int32_t next = 0;
  for (int r = 0; r < R; ++r) {
    ref.rank_offsets.push_back(next);
    for (int64_t t = 0; t < T; ++t) {
      if (ref.in_rank[t * R + r]) ref.send_pos[r * T + t] = next++;
    }
    ref.tokens_per_rank[r] = next - ref.rank_offsets[r];
  }
  ref.rank_offsets.push_back(next);
  return ref;
}

template <typename T>
void expectEqual(const std::vector<T>& want, const std::vector<T>& got, const std::string& what) {
  GPU_CHECK(want.size() <= got.size(), what << ": size " << got.size());
  for (size_t i = 0; i < want.size(); ++i) {
    GPU_CHECK(want[i] == got[i], what << " [" << i << "]: want " << +want[i] << " got " << +got[i]);
  }
}

GPU_TEST(layout_and_pack_match_reference) {
  struct Shape {
    int64_t tokens;
    int topk, experts, ranks;
    int64_t row_bytes;
    bool hot;
  };
  const Shape shapes[] = {{1000, 8, 64, 8, 7168 * 2, false}, {333, 4, 64, 4, 26, false},
                          {257, 2, 16, 2, 28, true},         {1, 8, 8, 8, 3, false},
                          {0, 4, 16, 4, 64, false},          {500, 6, 48, 1, 4 * 129, true}};
  for (const Shape& s : shapes) {
    const std::vector<int32_t> idx = randomRouting(s.tokens, s.topk, s.experts, 0.2, s.hot);
    const LayoutRef ref = referenceLayout(idx, s.tokens, s.topk, s.experts, s.ranks);
    DeviceBuffer<int32_t> d_idx(idx.empty() ? std::vector<int32_t>{0} : idx);
    DeviceBuffer<int32_t> tpe(s.experts), tpr(s.ranks), offsets(s.ranks + 1),
        pos(s.tokens * s.ranks), bad(std::vector<int32_t>{INT32_MAX});
    DeviceBuffer<uint8_t> in_rank(s.tokens * s.ranks);
    for (auto* b : {&tpe, &tpr, &offsets, &pos}) b->poison();
    in_rank.poison();
    const cuda::LayoutOutputs out{tpe.get(), tpr.get(),     offsets.get(),
                                  pos.get(), in_rank.get(), bad.get()};
    CUDA_OK(cuda::computeLayout(d_idx.get(), s.tokens, s.topk, s.experts, s.ranks, out, nullptr));
    const std::string tag = "T=" + std::to_string(s.tokens) + " R=" + std::to_string(s.ranks);
    expectEqual(ref.tokens_per_expert, tpe.download(), tag + " tokens_per_expert");
    expectEqual(ref.tokens_per_rank, tpr.download(), tag + " tokens_per_rank");
    expectEqual(ref.rank_offsets, offsets.download(), tag + " rank_offsets");
    expectEqual(ref.send_pos, pos.download(), tag + " send_pos");
    expectEqual(ref.in_rank, in_rank.download(), tag + " is_token_in_rank");
    GPU_CHECK(bad.download()[0] == INT32_MAX, tag << ": valid ids reported bad");

    // Pack: every sent row is its token's row; the send buffer is poisoned first.
    const int64_t sent = ref.rank_offsets.back();
    std::vector<uint8_t> x(static_cast<size_t>(s.tokens * s.row_bytes));
    for (auto& b : x) b = static_cast<uint8_t>(rng()());
    DeviceBuffer<uint8_t> d_x(x.empty() ? std::vector<uint8_t>{0} : x);
    DeviceBuffer<uint8_t> send(static_cast<size_t>(sent * s.row_bytes));
    send.poison(0xa5);
    CUDA_OK(
        cuda::packRows(d_x.get(), s.tokens, s.row_bytes, s.ranks, pos.get(), send.get(), nullptr));
    const auto got = send.download();
    for (int r = 0; r < s.ranks; ++r) {
      for (int64_t t = 0; t < s.tokens; ++t) {
        const int32_t p = ref.send_pos[r * s.tokens + t];
        if (p < 0) continue;
        GPU_CHECK(
            std::equal(x.begin() + t * s.row_bytes, x.begin() + (t + 1) * s.row_bytes,
                       got.begin() + p * s.row_bytes),
            tag << " row bytes " << s.row_bytes << ": send row " << p << " is not token " << t);
      }
    }
    // The routing that travels with the rows.
    const std::vector<float> w = randomFloats(idx.size(), 0.0f, 1.0f);
    DeviceBuffer<float> d_w(w.empty() ? std::vector<float>{0} : w);
    DeviceBuffer<int32_t> se(sent * s.topk), st(sent);
    DeviceBuffer<float> sw(sent * s.topk);
    se.poison();
    st.poison();
    sw.poison(0xff);
    CUDA_OK(cuda::packRouting(d_idx.get(), d_w.get(), s.tokens, s.topk, s.experts, s.ranks,
                              pos.get(), se.get(), sw.get(), st.get(), nullptr));
    const auto ge = se.download();
    const auto gw = sw.download();
    const auto gt = st.download();
    const int per_rank = s.experts / s.ranks;
    for (int r = 0; r < s.ranks; ++r) {
      for (int64_t t = 0; t < s.tokens; ++t) {
        const int32_t p = ref.send_pos[r * s.tokens + t];
        if (p < 0) continue;
        GPU_CHECK(gt[p] == t, tag << " send_token");
        for (int j = 0; j < s.topk; ++j) {
          const int32_t e = idx[t * s.topk + j];
          const bool mine = e >= 0 && e / per_rank == r;
          GPU_CHECK(ge[p * s.topk + j] == (mine ? e - r * per_rank : -1), tag << " send_experts");
          GPU_CHECK(gw[p * s.topk + j] == (mine ? w[t * s.topk + j] : 0.0f),
                    tag << " send_weights");
        }
      }
    }
  }
}

GPU_TEST(layout_reports_out_of_range_ids) {
  std::vector<int32_t> idx = {0, 1, 2, 3, 4, 16, -2, 1};  // T=4, k=2, E=16
  DeviceBuffer<int32_t> d_idx(idx);
  DeviceBuffer<int32_t> tpe(16), tpr(2), offsets(3), pos(8), bad(std::vector<int32_t>{INT32_MAX});
  DeviceBuffer<uint8_t> in_rank(8);
  CUDA_OK(cuda::computeLayout(
      d_idx.get(), 4, 2, 16, 2,
      {tpe.get(), tpr.get(), offsets.get(), pos.get(), in_rank.get(), bad.get()}, nullptr));
  GPU_CHECK(bad.download()[0] == 5, "first bad slot is 5, got " << bad.download()[0]);
}

// -------------------------------------------------------------------------------------- unpack

struct UnpackRef {
  std::vector<int32_t> demand, counts, offsets, slot_row, row_source;
  int32_t refused = 0;
};

UnpackRef referenceUnpack(const std::vector<int32_t>& experts, int64_t rows, int k,
                          const cuda::UnpackOptions& o) {
  UnpackRef ref;
  const int L = o.local_experts;
  ref.demand.assign(L, 0);
  ref.counts.assign(L, 0);
  ref.slot_row.assign(static_cast<size_t>(rows * k), -1);
  std::vector<std::vector<int64_t>> by_expert(L);
  for (int64_t i = 0; i < rows * k; ++i) {
    if (experts[i] >= 0) by_expert[experts[i]].push_back(i);  // row order: source rank, token
  }
  int32_t offset = 0;
  for (int e = 0; e < L; ++e) {
    const int64_t demand = static_cast<int64_t>(by_expert[e].size());
    const int64_t count = o.capacity > 0 ? std::min(demand, o.capacity) : demand;
    ref.demand[e] = static_cast<int32_t>(demand);
    ref.counts[e] = static_cast<int32_t>(count);
    ref.offsets.push_back(offset);
    for (int64_t j = 0; j < count; ++j)
      ref.slot_row[by_expert[e][j]] = offset + static_cast<int32_t>(j);
    const int64_t span = o.pad_to_capacity ? o.capacity : count;
    offset += static_cast<int32_t>((span + o.alignment - 1) / o.alignment * o.alignment);
    ref.refused += static_cast<int32_t>(demand - count);
  }
  ref.offsets.push_back(offset);
  ref.row_source.assign(offset, -1);
  for (int64_t i = 0; i < rows * k; ++i) {
    if (ref.slot_row[i] >= 0) ref.row_source[ref.slot_row[i]] = static_cast<int32_t>(i);
  }
  return ref;
}

GPU_TEST(unpack_matches_reference) {
  struct Shape {
    int64_t rows;
    int topk, local;
    int alignment;
    int64_t capacity;
    bool pad;
    int64_t row_bytes;
  };
  const Shape shapes[] = {{4000, 8, 32, 1, 0, false, 7168 * 2}, {1234, 4, 8, 8, 0, false, 26},
                          {999, 2, 4, 4, 100, false, 64},       {300, 3, 5, 16, 40, true, 12},
                          {0, 4, 4, 1, 0, false, 16},           {77, 8, 1, 1, 0, false, 7}};
  for (const Shape& s : shapes) {
    // Received slots: each row's slots name local experts (distinct) or -1.
    std::vector<int32_t> experts(static_cast<size_t>(s.rows * s.topk), -1);
    std::uniform_int_distribution<int> pick(0, s.local - 1);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int j = 0; j < s.topk; ++j) {
        const int e = pick(rng());
        bool dup = false;
        for (int i = 0; i < j; ++i) dup = dup || experts[r * s.topk + i] == e;
        if (!dup && u(rng()) < 0.6) experts[r * s.topk + j] = e;
      }
    }
    cuda::UnpackOptions o;
    o.local_experts = s.local;
    o.alignment = s.alignment;
    o.capacity = s.capacity;
    o.pad_to_capacity = s.pad;
    const UnpackRef ref = referenceUnpack(experts, s.rows, s.topk, o);
    const int64_t total = ref.offsets.back();
    const int64_t guard = 5;
    o.max_rows = total + guard;
    DeviceBuffer<int32_t> d_exp(experts.empty() ? std::vector<int32_t>{0} : experts);
    DeviceBuffer<int32_t> demand(s.local), counts(s.local), offsets(s.local + 1),
        slot_row(s.rows * s.topk), row_source(o.max_rows), refused(1), overflow(1);
    for (auto* b : {&demand, &counts, &offsets, &slot_row, &row_source, &refused, &overflow}) {
      b->poison();
    }
    const cuda::UnpackPlan plan{demand.get(),     counts.get(),  offsets.get(), slot_row.get(),
                                row_source.get(), refused.get(), overflow.get()};
    CUDA_OK(cuda::planUnpack(d_exp.get(), s.rows, s.topk, o, plan, nullptr));
    const std::string tag = "rows=" + std::to_string(s.rows) + " L=" + std::to_string(s.local);
    expectEqual(ref.demand, demand.download(), tag + " demand");
    expectEqual(ref.counts, counts.download(), tag + " counts");
    expectEqual(ref.offsets, offsets.download(), tag + " offsets");
    expectEqual(ref.slot_row, slot_row.download(), tag + " slot_row");
    expectEqual(ref.row_source, row_source.download(), tag + " row_source");
    GPU_CHECK(refused.download()[0] == ref.refused, tag << " refused");
    GPU_CHECK(overflow.download()[0] == 0, tag << " overflow");

    // Rows: poisoned output, guard rows past the layout must stay poisoned.
    std::vector<uint8_t> recv(static_cast<size_t>(s.rows * s.row_bytes));
    for (auto& b : recv) b = static_cast<uint8_t>(rng()());
    const std::vector<float> recv_w = randomFloats(experts.size(), 0.0f, 1.0f);
    DeviceBuffer<uint8_t> d_recv(recv.empty() ? std::vector<uint8_t>{0} : recv);
    DeviceBuffer<float> d_recv_w(recv_w.empty() ? std::vector<float>{0} : recv_w);
    DeviceBuffer<uint8_t> out(static_cast<size_t>(o.max_rows * s.row_bytes));
    DeviceBuffer<float> row_w(o.max_rows);
    out.poison(0xa5);
    row_w.poison(0xff);
    CUDA_OK(cuda::unpackRows(d_recv.get(), d_recv_w.get(), s.topk, s.row_bytes, plan, s.local,
                             o.max_rows, out.get(), row_w.get(), nullptr));
    const auto got = out.download();
    const auto got_w = row_w.download();
    for (int64_t row = 0; row < o.max_rows; ++row) {
      const auto begin = got.begin() + row * s.row_bytes;
      const auto end = begin + s.row_bytes;
      if (row >= total) {
        GPU_CHECK(std::all_of(begin, end, [](uint8_t b) { return b == 0xa5; }),
                  tag << " guard row " << row << " was written");
        continue;
      }
      const int32_t src = ref.row_source[row];
      if (src < 0) {
        GPU_CHECK(std::all_of(begin, end, [](uint8_t b) { return b == 0; }) && got_w[row] == 0.0f,
                  tag << " padding row " << row << " not zero");
      } else {
        GPU_CHECK(std::equal(begin, end, recv.begin() + (src / s.topk) * s.row_bytes) &&
                      got_w[row] == recv_w[src],
                  tag << " row " << row << " is not slot " << src);
      }
    }
    // Too small an output: reported, nothing written past it.
    if (total > 1) {
      cuda::UnpackOptions small = o;
      small.max_rows = total - 1;
      DeviceBuffer<int32_t> source_small(total + guard);
      source_small.poison();
      cuda::UnpackPlan p2 = plan;
      p2.row_source = source_small.get();
      CUDA_OK(cuda::planUnpack(d_exp.get(), s.rows, s.topk, small, p2, nullptr));
      GPU_CHECK(overflow.download()[0] == total, tag << " overflow not reported");
      const auto src_small = source_small.download();
      for (int64_t i = small.max_rows; i < total + guard; ++i) {
        GPU_CHECK(src_small[i] == 0x7f7f7f7f, tag << " row_source written past max_rows");
      }
    }
  }
}

// ---------------------------------------------------------------------------------- counted copy

// Rows counted on the device: only [0, clamp(count, 0, max_rows)) of each part move, in any
// row size and alignment (16-byte, 4-byte and byte units), and nothing before, past or after
// them is touched. The count is written on the stream just before the copy, over a stale value,
// so a copy that read it at launch instead of when it runs would move the wrong rows.
GPU_TEST(counted_copy_moves_only_the_counted_rows) {
  struct Case {
    int64_t max_rows;
    int32_t count;
    std::vector<int64_t> row_bytes;  // one part each
    size_t shift;                    // bytes the dst and src pointers sit past an aligned start
  };
  const Case cases[] = {{300, 123, {7168 * 2, 32, 32, 56 * 4}, 0},
                        {300, 123, {14, 32}, 4},
                        {64, 17, {7, 3}, 1},
                        {50, 50, {16}, 0},
                        {50, 80, {16, 5}, 0},  // more than the region: clamped
                        {50, -3, {16}, 0},     // negative: nothing
                        {50, 0, {16, 4}, 4},
                        {0, 5, {16}, 0},
                        {9, 4, {0, 12}, 0}};  // a part of empty rows is skipped
  constexpr size_t kGuard = 64;
  cudaStream_t stream = nullptr;
  CUDA_OK(cudaStreamCreate(&stream));
  for (const Case& c : cases) {
    const int64_t n = std::clamp<int64_t>(c.count, 0, c.max_rows);
    const std::string tag = "max_rows=" + std::to_string(c.max_rows) +
                            " count=" + std::to_string(c.count) +
                            " shift=" + std::to_string(c.shift);
    std::vector<std::vector<uint8_t>> src(c.row_bytes.size());
    std::vector<DeviceBuffer<uint8_t>> d_src, d_dst;
    std::vector<cuda::CountedRows> parts;
    for (size_t p = 0; p < c.row_bytes.size(); ++p) {
      const size_t bytes = static_cast<size_t>(c.max_rows * c.row_bytes[p]) + 2 * kGuard;
      src[p].resize(bytes);
      for (auto& b : src[p]) b = static_cast<uint8_t>(rng()());
      d_src.emplace_back(src[p]);
      d_dst.emplace_back(bytes);
      d_dst.back().poison(0xa5);
      parts.push_back({d_dst.back().get() + kGuard + c.shift, d_src.back().get() + kGuard + c.shift,
                       c.row_bytes[p]});
    }
    DeviceBuffer<int32_t> rows(std::vector<int32_t>{static_cast<int32_t>(c.max_rows)});
    CUDA_OK(cuda::fillInt32(rows.get(), 1, c.count, stream));
    CUDA_OK(cuda::copyCountedRows(parts.data(), static_cast<int>(parts.size()), rows.get(),
                                  c.max_rows, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    for (size_t p = 0; p < parts.size(); ++p) {
      const auto got = d_dst[p].download();
      const size_t first = kGuard + c.shift;
      const size_t moved = static_cast<size_t>(n * c.row_bytes[p]);
      for (size_t i = 0; i < got.size(); ++i) {
        const bool inside = i >= first && i < first + moved;
        if (inside ? got[i] != src[p][i] : got[i] != 0xa5) {
          GPU_CHECK(false, tag << " part " << p << " byte " << i
                               << (inside ? " was not copied" : " was written"));
          break;
        }
      }
    }
  }
  // Refused: too many parts, no count, a negative size.
  DeviceBuffer<int32_t> rows(1);
  DeviceBuffer<uint8_t> buf(64);
  const std::vector<cuda::CountedRows> many(cuda::kMaxCountedParts + 1,
                                            cuda::CountedRows{buf.get(), buf.get(), 4});
  GPU_CHECK(cuda::copyCountedRows(many.data(), static_cast<int>(many.size()), rows.get(), 4,
                                  stream) == cudaErrorInvalidValue,
            "too many parts accepted");
  GPU_CHECK(cuda::copyCountedRows(many.data(), 1, nullptr, 4, stream) == cudaErrorInvalidValue,
            "a null count accepted");
  const cuda::CountedRows negative{buf.get(), buf.get(), -4};
  GPU_CHECK(cuda::copyCountedRows(&negative, 1, rows.get(), 4, stream) == cudaErrorInvalidValue,
            "a negative row size accepted");
  CUDA_OK(cudaStreamDestroy(stream));
}

// ------------------------------------------------------------------------------------- combine

template <typename T>
float load(const std::vector<T>& v, size_t i) {
  if constexpr (sizeof(T) == 2) {
    return numeric::bf16ToFloat(v[i]);
  } else {
    return v[i];
  }
}

template <typename T>
void runCombine(int64_t hidden, cuda::RowType type) {
  const int64_t layout_rows = 600;
  const int64_t rows_in = 250;
  const int topk = 4;
  const float tol = type == cuda::RowType::kBF16 ? 1e-2f : 1e-5f;
  std::vector<float> yf = randomFloats(static_cast<size_t>(layout_rows * hidden));
  std::vector<T> y(yf.size());
  for (size_t i = 0; i < y.size(); ++i) {
    if constexpr (sizeof(T) == 2) {
      y[i] = numeric::floatToBf16(yf[i]);
    } else {
      y[i] = yf[i];
    }
  }
  std::vector<int32_t> slot_row(static_cast<size_t>(rows_in * topk));
  std::uniform_int_distribution<int32_t> row_pick(-1, static_cast<int32_t>(layout_rows - 1));
  for (auto& r : slot_row) r = row_pick(rng());
  const std::vector<float> row_w = randomFloats(layout_rows, 0.0f, 1.0f);
  DeviceBuffer<T> d_y(y);
  DeviceBuffer<int32_t> d_slot(slot_row);
  DeviceBuffer<float> d_row_w(row_w);
  DeviceBuffer<T> partial(static_cast<size_t>(rows_in * hidden));
  partial.poison(0xff);
  CUDA_OK(cuda::combineExpertSide(d_y.get(), type, hidden, rows_in, topk, d_slot.get(),
                                  d_row_w.get(), partial.get(), nullptr));
  const auto got = partial.download();
  for (int64_t i = 0; i < rows_in; ++i) {
    for (int64_t h = 0; h < hidden; ++h) {
      double want = 0;
      for (int j = 0; j < topk; ++j) {
        const int32_t r = slot_row[i * topk + j];
        if (r >= 0) want += static_cast<double>(row_w[r]) * load(y, r * hidden + h);
      }
      const float g = load(got, i * hidden + h);
      GPU_CHECK(std::fabs(g - want) <= tol * (1.0 + std::fabs(want)),
                "expert side H=" << hidden << " row " << i << " col " << h << ": want " << want
                                 << " got " << g);
    }
  }
  // Home side: ranks' partial rows summed per token.
  const int ranks = 3;
  const int64_t tokens = 100;
  std::vector<int32_t> send_pos(static_cast<size_t>(ranks * tokens), -1);
  int32_t next = 0;
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int r = 0; r < ranks; ++r) {
    for (int64_t t = 0; t < tokens; ++t) {
      if (u(rng()) < 0.5) send_pos[r * tokens + t] = next++;
    }
  }
  DeviceBuffer<int32_t> d_pos(send_pos);
  DeviceBuffer<T> out(static_cast<size_t>(tokens * hidden));
  out.poison(0xff);
  CUDA_OK(cuda::combineReduce(partial.get(), type, hidden, tokens, ranks, d_pos.get(), out.get(),
                              nullptr));
  const auto got_out = out.download();
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < hidden; ++h) {
      double want = 0;
      for (int r = 0; r < ranks; ++r) {
        const int32_t p = send_pos[r * tokens + t];
        if (p >= 0) want += load(got, p * hidden + h);
      }
      const float g = load(got_out, t * hidden + h);
      GPU_CHECK(std::fabs(g - want) <= tol * (1.0 + std::fabs(want)),
                "reduce H=" << hidden << " token " << t << " col " << h << ": want " << want
                            << " got " << g);
    }
  }
}

GPU_TEST(combine_matches_reference) {
  for (int64_t hidden : {1, 7, 64, 129, 7168}) {
    runCombine<float>(hidden, cuda::RowType::kF32);
    runCombine<uint16_t>(hidden, cuda::RowType::kBF16);
  }
}

// ----------------------------------------------------------------------------------------- fp8

// `shift` elements of offset in front of every GPU array: 16-byte aligned rows take the
// vector path, shifted ones (or a row length that is no multiple of 16) the scalar one; both
// must give the CPU's bits and write nothing outside the arrays.
void runFp8(int64_t rows, int64_t cols, bool bf16, size_t shift) {
  std::vector<float> xf = randomFloats(static_cast<size_t>(rows * cols), -600.0f, 600.0f);
  for (int64_t c = 0; c < std::min<int64_t>(cols, 128); ++c) xf[c] = 0.0f;  // a zero block
  if (cols > 10) {
    xf[cols + 3] = std::numeric_limits<float>::infinity();
    xf[2 * cols + 5] = std::numeric_limits<float>::quiet_NaN();
    xf[3 * cols + 1] = 1e-9f;
  }
  const std::vector<uint16_t> xb = toBf16(xf);
  const DType dtype = bf16 ? DType::kBF16 : DType::kF32;
  const void* host_x = bf16 ? static_cast<const void*>(xb.data()) : xf.data();
  const int64_t blocks = (cols + 127) / 128;
  std::vector<uint8_t> q(static_cast<size_t>(rows * cols));
  std::vector<float> scales(static_cast<size_t>(rows * blocks));
  cpu::quantizeFp8Rows(host_x, dtype, rows, cols, q.data(), scales.data());
  // The arrays with `shift` poisoned elements in front, and the inverse: what follows them.
  auto shifted = [shift](auto host) {
    host.insert(host.begin(), shift, typename decltype(host)::value_type{});
    return host;
  };
  auto unshifted = [shift](auto host) {
    host.erase(host.begin(), host.begin() + static_cast<std::ptrdiff_t>(shift));
    return host;
  };
  DeviceBuffer<float> dxf(shifted(xf));
  DeviceBuffer<uint16_t> dxb(shifted(xb));
  DeviceBuffer<uint8_t> dq(q.size() + shift);
  DeviceBuffer<float> ds(scales.size());
  dq.poison(0x55);
  ds.poison(0xff);
  const auto type = bf16 ? cuda::RowType::kBF16 : cuda::RowType::kF32;
  const void* dx = bf16 ? static_cast<const void*>(dxb.get() + shift) : dxf.get() + shift;
  CUDA_OK(cuda::quantizeFp8(dx, type, rows, cols, dq.get() + shift, ds.get(), nullptr));
  const std::string tag = "cols=" + std::to_string(cols) + (bf16 ? " bf16" : " f32") +
                          " shift=" + std::to_string(shift);
  const auto got_q = dq.download();
  for (size_t i = 0; i < shift; ++i) {
    GPU_CHECK(got_q[i] == 0x55, tag << " wrote byte " << i << " in front of q");
  }
  expectEqual(q, unshifted(got_q), tag + " q");
  const auto gs = ds.download();
  for (size_t i = 0; i < scales.size(); ++i) {
    GPU_CHECK(numeric::floatToBits(gs[i]) == numeric::floatToBits(scales[i]),
              tag << " scale " << i);
  }
  // Dequantize to the same type and compare with the CPU bit for bit (NaN to NaN).
  std::vector<uint16_t> back_b(q.size());
  std::vector<float> back_f(q.size());
  cpu::dequantizeFp8Rows(q.data(), scales.data(), rows, cols,
                         bf16 ? static_cast<void*>(back_b.data()) : back_f.data(), dtype);
  DeviceBuffer<float> dbf(q.size() + shift);
  DeviceBuffer<uint16_t> dbb(q.size() + shift);
  dbf.poison(0x11);
  dbb.poison(0x11);
  void* dout = bf16 ? static_cast<void*>(dbb.get() + shift) : dbf.get() + shift;
  CUDA_OK(cuda::dequantizeFp8(dq.get() + shift, ds.get(), rows, cols, dout, type, nullptr));
  if (bf16) {
    // NaN stays NaN; its payload is the hardware's (a GPU makes the canonical 0x7fff).
    const auto all = dbb.download();
    for (size_t i = 0; i < shift; ++i) GPU_CHECK(all[i] == 0x1111, tag << " wrote in front");
    const auto g = unshifted(all);
    auto is_nan = [](uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0; };
    for (size_t i = 0; i < g.size(); ++i) {
      GPU_CHECK(g[i] == back_b[i] || (is_nan(g[i]) && is_nan(back_b[i])),
                tag << " dequantized " << i << ": want " << back_b[i] << " got " << g[i]);
    }
  } else {
    const auto all = dbf.download();
    for (size_t i = 0; i < shift; ++i) {
      GPU_CHECK(numeric::floatToBits(all[i]) == 0x11111111u, tag << " wrote in front");
    }
    const auto g = unshifted(all);
    for (size_t i = 0; i < g.size(); ++i) {
      GPU_CHECK(numeric::floatToBits(g[i]) == numeric::floatToBits(back_f[i]) ||
                    (std::isnan(g[i]) && std::isnan(back_f[i])),
                tag << " dequantized " << i);
    }
  }
}

GPU_TEST(fp8_matches_cpu_bit_for_bit) {
  // 144 and 4000 end in a short block of whole 16-element chunks; 37 rows leave a warp of the
  // vector path with blocks past the end.
  for (int64_t cols : {1, 100, 128, 144, 300, 4000, 7168}) {
    for (bool bf16 : {false, true}) {
      for (size_t shift : {size_t{0}, size_t{1}}) runFp8(37, cols, bf16, shift);
    }
  }
}

// -------------------------------------------------------------------------------- grouped GEMM

GPU_TEST(grouped_gemm_matches_reference) {
  const int64_t k = 96;
  const int64_t n = 80;
  const std::vector<int64_t> counts = {37, 0, 128, 1, 0, 64, 200, 3};
  std::vector<int64_t> offsets = {0};
  for (int64_t c : counts) offsets.push_back(offsets.back() + c);
  const int64_t rows = offsets.back();
  const auto L = static_cast<int64_t>(counts.size());
  const std::vector<uint16_t> x = toBf16(randomFloats(static_cast<size_t>(rows * k)));
  const std::vector<uint16_t> w = toBf16(randomFloats(static_cast<size_t>(L * k * n)));
  DeviceBuffer<uint16_t> dx(x), dw(w), dy(static_cast<size_t>(rows * n));
  dy.poison(0xff);
  cublasHandle_t handle = nullptr;
  GPU_CHECK(cublasCreate(&handle) == CUBLAS_STATUS_SUCCESS, "cublasCreate");
  cuda::GemmPath path = cuda::GemmPath::kGrouped;
  const cublasStatus_t status =
      cuda::groupedGemmBf16(handle, dx.get(), offsets, k, n, dw.get(), dy.get(), nullptr, &path);
  cublasDestroy(handle);
  GPU_CHECK(status == CUBLAS_STATUS_SUCCESS, "groupedGemmBf16 status " << static_cast<int>(status));
  std::printf("         grouped GEMM path: %s\n",
              path == cuda::GemmPath::kGrouped ? "cublasGemmGroupedBatchedEx" : "per expert");
  const auto y = dy.download();
  for (int64_t e = 0; e < L; ++e) {
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
      for (int64_t c = 0; c < n; ++c) {
        double want = 0;
        for (int64_t p = 0; p < k; ++p) {
          want += static_cast<double>(numeric::bf16ToFloat(x[r * k + p])) *
                  numeric::bf16ToFloat(w[(e * k + p) * n + c]);
        }
        const float got = numeric::bf16ToFloat(y[r * n + c]);
        GPU_CHECK(
            std::fabs(got - want) <= 1e-2 * (1.0 + std::fabs(want)),
            "expert " << e << " row " << r << " col " << c << ": want " << want << " got " << got);
      }
    }
  }
}

// ------------------------------------------------- dispatch and combine across ranks on one GPU

// R ranks on one device, each with its own stream: layout, pack, an exchange by device copies
// (what the local transport does with GPU memory), unpack, an identity expert, combine on the
// expert side, the copies home, and the home reduction. Backward of dispatch is the same path
// with unit weights. Checked against out[t] = sum_j w_j x[t] and grad_x[t] = (valid slots) x[t].
void runRanks(int ranks, int64_t tokens, int64_t hidden, int topk, int experts) {
  struct Rank {
    std::vector<int32_t> idx;
    std::vector<float> w, x;
    DeviceBuffer<int32_t> d_idx, tpe, tpr, offsets, pos;
    DeviceBuffer<uint8_t> in_rank;
    DeviceBuffer<float> d_w, d_x, send, back;
    DeviceBuffer<int32_t> send_exp, send_tok;
    DeviceBuffer<float> send_w;
    std::vector<int32_t> h_offsets;
    cudaStream_t stream = nullptr;
  };
  const int per_rank = experts / ranks;
  std::vector<Rank> rs(ranks);
  for (int r = 0; r < ranks; ++r) {
    Rank& k = rs[r];
    CUDA_OK(cudaStreamCreate(&k.stream));
    k.idx = randomRouting(tokens, topk, experts, 0.1, r == 0);
    k.w = randomFloats(k.idx.size(), 0.0f, 1.0f);
    k.x = randomFloats(static_cast<size_t>(tokens * hidden));
    k.d_idx = DeviceBuffer<int32_t>(k.idx);
    k.d_w = DeviceBuffer<float>(k.w);
    k.d_x = DeviceBuffer<float>(k.x);
    k.tpe = DeviceBuffer<int32_t>(experts);
    k.tpr = DeviceBuffer<int32_t>(ranks);
    k.offsets = DeviceBuffer<int32_t>(ranks + 1);
    k.pos = DeviceBuffer<int32_t>(tokens * ranks);
    k.in_rank = DeviceBuffer<uint8_t>(tokens * ranks);
    CUDA_OK(cuda::computeLayout(
        k.d_idx.get(), tokens, topk, experts, ranks,
        {k.tpe.get(), k.tpr.get(), k.offsets.get(), k.pos.get(), k.in_rank.get(), nullptr},
        k.stream));
    CUDA_OK(cudaStreamSynchronize(k.stream));  // the count exchange: sizes go to the host
    k.h_offsets = k.offsets.download();
    const int64_t sent = k.h_offsets.back();
    k.send = DeviceBuffer<float>(static_cast<size_t>(sent * hidden));
    k.back = DeviceBuffer<float>(static_cast<size_t>(sent * hidden));
    k.send_exp = DeviceBuffer<int32_t>(sent * topk);
    k.send_tok = DeviceBuffer<int32_t>(sent);
    k.send_w = DeviceBuffer<float>(sent * topk);
    CUDA_OK(cuda::packRows(k.d_x.get(), tokens, hidden * 4, ranks, k.pos.get(), k.send.get(),
                           k.stream));
    CUDA_OK(cuda::packRouting(k.d_idx.get(), k.d_w.get(), tokens, topk, experts, ranks, k.pos.get(),
                              k.send_exp.get(), k.send_w.get(), k.send_tok.get(), k.stream));
    CUDA_OK(cudaStreamSynchronize(k.stream));
  }
  // Each destination gathers its rows from every source, in source-rank order, and runs both the
  // forward combine (weights) and the dispatch backward (unit weights).
  for (bool backward : {false, true}) {
    for (int d = 0; d < ranks; ++d) {
      int64_t rows_in = 0;
      for (int s = 0; s < ranks; ++s) rows_in += rs[s].h_offsets[d + 1] - rs[s].h_offsets[d];
      DeviceBuffer<float> recv(static_cast<size_t>(rows_in * hidden));
      DeviceBuffer<int32_t> recv_exp(rows_in * topk);
      DeviceBuffer<float> recv_w(rows_in * topk);
      cudaStream_t st = rs[d].stream;
      int64_t at = 0;
      for (int s = 0; s < ranks; ++s) {
        const int64_t first = rs[s].h_offsets[d];
        const int64_t n = rs[s].h_offsets[d + 1] - first;
        if (n == 0) continue;
        CUDA_OK(cudaMemcpyAsync(recv.get() + at * hidden, rs[s].send.get() + first * hidden,
                                sizeof(float) * n * hidden, cudaMemcpyDeviceToDevice, st));
        CUDA_OK(cudaMemcpyAsync(recv_exp.get() + at * topk, rs[s].send_exp.get() + first * topk,
                                sizeof(int32_t) * n * topk, cudaMemcpyDeviceToDevice, st));
        CUDA_OK(cudaMemcpyAsync(recv_w.get() + at * topk, rs[s].send_w.get() + first * topk,
                                sizeof(float) * n * topk, cudaMemcpyDeviceToDevice, st));
        at += n;
      }
      if (backward) {
        CUDA_OK(cudaStreamSynchronize(st));
        recv_w.upload(std::vector<float>(recv_w.size(), 1.0f));
      }
      cuda::UnpackOptions o;
      o.local_experts = per_rank;
      o.alignment = 4;
      o.max_rows = rows_in * topk + static_cast<int64_t>(per_rank) * 4;
      DeviceBuffer<int32_t> demand(per_rank), counts(per_rank), offsets(per_rank + 1),
          slot_row(rows_in * topk), row_source(o.max_rows), refused(1), overflow(1);
      const cuda::UnpackPlan plan{demand.get(),     counts.get(),  offsets.get(), slot_row.get(),
                                  row_source.get(), refused.get(), overflow.get()};
      DeviceBuffer<float> layout(static_cast<size_t>(o.max_rows * hidden));
      DeviceBuffer<float> row_w(o.max_rows);
      DeviceBuffer<float> partial(static_cast<size_t>(rows_in * hidden));
      layout.poison(0xff);
      CUDA_OK(cudaStreamSynchronize(st));
      CUDA_OK(cuda::planUnpack(recv_exp.get(), rows_in, topk, o, plan, st));
      CUDA_OK(cuda::unpackRows(recv.get(), recv_w.get(), topk, hidden * 4, plan, per_rank,
                               o.max_rows, layout.get(), row_w.get(), st));
      // The identity expert: y = the layout rows themselves.
      CUDA_OK(cuda::combineExpertSide(layout.get(), cuda::RowType::kF32, hidden, rows_in, topk,
                                      slot_row.get(), row_w.get(), partial.get(), st));
      at = 0;
      for (int s = 0; s < ranks; ++s) {
        const int64_t first = rs[s].h_offsets[d];
        const int64_t n = rs[s].h_offsets[d + 1] - first;
        if (n == 0) continue;
        CUDA_OK(cudaMemcpyAsync(rs[s].back.get() + first * hidden, partial.get() + at * hidden,
                                sizeof(float) * n * hidden, cudaMemcpyDeviceToDevice, st));
        at += n;
      }
      CUDA_OK(cudaStreamSynchronize(st));
      GPU_CHECK(overflow.download()[0] == 0, "layout overflow");
    }
    for (int s = 0; s < ranks; ++s) {
      Rank& k = rs[s];
      DeviceBuffer<float> out(static_cast<size_t>(tokens * hidden));
      out.poison(0xff);
      CUDA_OK(cuda::combineReduce(k.back.get(), cuda::RowType::kF32, hidden, tokens, ranks,
                                  k.pos.get(), out.get(), k.stream));
      CUDA_OK(cudaStreamSynchronize(k.stream));
      const auto got = out.download();
      for (int64_t t = 0; t < tokens; ++t) {
        double factor = 0;
        for (int j = 0; j < topk; ++j) {
          if (k.idx[t * topk + j] >= 0) factor += backward ? 1.0 : k.w[t * topk + j];
        }
        for (int64_t h = 0; h < hidden; ++h) {
          const double want = factor * k.x[t * hidden + h];
          GPU_CHECK(std::fabs(got[t * hidden + h] - want) <= 1e-5 * (1.0 + std::fabs(want)),
                    (backward ? "dispatch backward" : "combine")
                        << " ranks=" << ranks << " rank " << s << " token " << t << " col " << h
                        << ": want " << want << " got " << got[t * hidden + h]);
        }
      }
    }
  }
  for (Rank& k : rs) CUDA_OK(cudaStreamDestroy(k.stream));
}

GPU_TEST(dispatch_combine_across_ranks_on_one_gpu) {
  for (int ranks : {1, 2, 4, 8}) {
    runRanks(ranks, 300, 129, 4, 32);
    runRanks(ranks, 64, 256, 8, 64);
  }
}

}  // namespace
}  // namespace moecomm::gputest

int main(int argc, char** argv) {
  return moecomm::gputest::runAll(argc, argv);
}
