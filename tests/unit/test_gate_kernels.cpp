// The CPU gate's kernels (top-n selection, group scores, kept groups, finiteness, exp and sigmoid)
// against plain references, on random rows and on the inputs that push them off their fast paths:
// ties at the top, excluded (-inf) entries, signed zeros, short rows and rows that are not whole
// vectors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/finite.hpp"
#if defined(__x86_64__)
#include "kernels/cpu/avx2_math.hpp"
#endif
#include "kernels/cpu/gate_grouped_sigmoid.hpp"
#include "kernels/cpu/gate_softmax_top.hpp"
#include "kernels/cpu/gating.hpp"
#include "kernels/cpu/group_scores.hpp"
#include "kernels/cpu/topk.hpp"
#include "kernels/cpu/vector_math.hpp"

namespace moecomm::cpu {
namespace {

constexpr float kExcluded = -std::numeric_limits<float>::infinity();

// Indices by value descending, then index ascending; excluded entries dropped; first n.
std::vector<int> referenceTop(const std::vector<float>& v, int n) {
  std::vector<int> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return v[a] > v[b]; });
  std::vector<int> out;
  for (int i : order) {
    if (static_cast<int>(out.size()) == n) break;
    if (v[i] != kExcluded) out.push_back(i);
  }
  return out;
}

void expectSameTop(const std::vector<float>& v, int n, TopScratch& scratch, const char* what) {
  std::vector<int> got(static_cast<size_t>(n), -7);
  const int found = selectTop(v.data(), static_cast<int>(v.size()), n, got.data(), scratch);
  const std::vector<int> want = referenceTop(v, n);
  ASSERT_EQ(found, static_cast<int>(want.size())) << what << " count=" << v.size() << " n=" << n;
  got.resize(static_cast<size_t>(found));
  EXPECT_EQ(got, want) << what << " count=" << v.size() << " n=" << n;
}

TEST(SelectTop, MatchesReferenceOnRandomRows) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  TopScratch scratch;  // one scratch across shapes, as the gate reuses it
  for (int count : {1, 3, 8, 13, 64, 65, 128, 200, 256, 512, 1024}) {
    for (int n : {1, 2, 4, 8, 12, 24, 40}) {
      if (n > count) continue;
      for (int row = 0; row < 40; ++row) {
        std::vector<float> v(static_cast<size_t>(count));
        for (float& x : v) x = normal(rng);
        expectSameTop(v, n, scratch, "normal");
      }
    }
  }
}

TEST(SelectTop, TiesSignedZerosAndExclusions) {
  std::mt19937 rng(11);
  TopScratch scratch;
  for (int count : {8, 40, 128, 256}) {
    for (int n : {1, 4, 8, 9}) {
      if (n > count) continue;
      for (int row = 0; row < 60; ++row) {
        std::vector<float> v(static_cast<size_t>(count));
        // A coarse grid: many exact ties at the top, often more than the fast path takes.
        const int levels = 2 + row % 6;
        for (float& x : v) x = static_cast<float>(static_cast<int>(rng() % levels)) * 0.5f;
        expectSameTop(v, n, scratch, "ties");
        // Signed zeros tie like equal floats: the lower index wins.
        for (float& x : v) x = (rng() % 2 != 0) ? 0.0f : -0.0f;
        expectSameTop(v, n, scratch, "signed zeros");
        // Excluded entries: scattered, a whole leading run, and nearly all of the row.
        for (float& x : v) x = (rng() % 3 == 0) ? kExcluded : static_cast<float>(rng() % 1000);
        expectSameTop(v, n, scratch, "scattered -inf");
        std::fill(v.begin(), v.begin() + count / 2, kExcluded);
        expectSameTop(v, n, scratch, "first half -inf");
        std::fill(v.begin(), v.end(), kExcluded);
        v[static_cast<size_t>(rng() % count)] = 1.0f;
        expectSameTop(v, n, scratch, "one left");
      }
    }
  }
}

// A floor from the caller: exact (the n-th largest value itself), loose, or so low that too many
// values pass; each must give the reference's selection.
TEST(SelectTop, CallerFloorsExactLooseAndUseless) {
  std::mt19937 rng(13);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  TopScratch scratch;
  for (int count : {64, 128, 256}) {
    for (int n : {1, 8, 12}) {
      for (int row = 0; row < 50; ++row) {
        std::vector<float> v(static_cast<size_t>(count));
        for (float& x : v) x = row % 4 == 0 ? static_cast<float>(rng() % 3) : normal(rng);
        const std::vector<int> want = referenceTop(v, n);
        const float nth = v[static_cast<size_t>(want.back())];
        for (float floor : {nth, nth - 0.5f, nth - 100.0f}) {
          std::vector<int> got(static_cast<size_t>(n), -7);
          const int found = selectTopAbove(v.data(), count, n, floor, got.data(), scratch);
          ASSERT_EQ(found, n);
          EXPECT_EQ(got, want) << "count=" << count << " n=" << n << " floor=" << floor;
        }
      }
    }
  }
}

TEST(SelectTop, OneHotAndDominantRows) {
  TopScratch scratch;
  std::vector<float> v(256, -3.0f);
  v[200] = 50.0f;  // one dominant expert, the rest tied far below
  expectSameTop(v, 8, scratch, "dominant");
  for (int i = 0; i < 256; ++i) v[static_cast<size_t>(i)] = static_cast<float>(i % 16);
  expectSameTop(v, 8, scratch, "repeating ramp");
  for (int i = 0; i < 256; ++i) v[static_cast<size_t>(i)] = -static_cast<float>(i);
  expectSameTop(v, 8, scratch, "descending");
  for (int i = 0; i < 256; ++i) v[static_cast<size_t>(i)] = static_cast<float>(i);
  expectSameTop(v, 8, scratch, "ascending");
}

std::vector<float> sortedDescending(const float* v, int n) {
  std::vector<float> sorted(v, v + n);
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  return sorted;
}

TEST(GroupScores, MatchReference) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int per_group : {1, 2, 4, 8, 12, 16, 32, 64}) {
    for (int groups : {1, 3, 8, 11, 16}) {
      for (int row = 0; row < 50; ++row) {
        std::vector<float> v(static_cast<size_t>(groups * per_group));
        for (float& x : v) x = row % 3 == 0 ? static_cast<float>(rng() % 4) : normal(rng);
        std::vector<float> got(static_cast<size_t>(groups)), seconds(got.size());
        groupTopTwoSums(v.data(), groups, per_group, got.data(), seconds.data());
        for (int g = 0; g < groups; ++g) {
          const std::vector<float> sorted = sortedDescending(v.data() + g * per_group, per_group);
          const float second = per_group >= 2 ? sorted[1] : kExcluded;
          EXPECT_EQ(got[g], per_group >= 2 ? sorted[0] + sorted[1] : sorted[0])
              << "groups=" << groups << " per_group=" << per_group << " group " << g;
          EXPECT_EQ(seconds[g], second)
              << "groups=" << groups << " per_group=" << per_group << " group " << g;
        }
      }
    }
  }
}

TEST(GroupScores, RepeatedBestCountsTwice) {
  std::vector<float> v(32, 1.0f);
  v[5] = 9.0f;
  v[29] = 9.0f;  // the best value twice, in different lanes
  float score = 0.0f;
  groupTopTwoSums(v.data(), 1, 32, &score, nullptr);
  EXPECT_EQ(score, 18.0f);
  v[29] = 1.0f;
  v[13] = 9.0f;  // twice in the same lane (5 and 13 are 8 apart)
  groupTopTwoSums(v.data(), 1, 32, &score, nullptr);
  EXPECT_EQ(score, 18.0f);
  v[13] = 4.0f;
  groupTopTwoSums(v.data(), 1, 32, &score, nullptr);
  EXPECT_EQ(score, 13.0f);
}

TEST(AllFinite, FindsEveryKindOfNonFinite) {
  std::vector<float> v(1003, 1.5f);
  EXPECT_TRUE(allFinite(v.data(), static_cast<int64_t>(v.size())));
  v[1] = std::numeric_limits<float>::max();
  v[2] = std::numeric_limits<float>::denorm_min();
  EXPECT_TRUE(allFinite(v.data(), static_cast<int64_t>(v.size())));
  for (float bad : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    for (size_t at : {size_t{0}, size_t{500}, v.size() - 1}) {
      std::vector<float> w = v;
      w[at] = bad;
      EXPECT_FALSE(allFinite(w.data(), static_cast<int64_t>(w.size()))) << bad << " at " << at;
    }
  }
}

TEST(GroupScores, KeptGroupsAreTheBestInAscendingOrder) {
  std::mt19937 rng(5);
  for (int groups : {1, 2, 5, 8, 16}) {
    for (int keep = 1; keep <= groups; ++keep) {
      for (int row = 0; row < 30; ++row) {
        std::vector<float> scores(static_cast<size_t>(groups));
        for (float& x : scores) x = static_cast<float>(rng() % 5);  // many ties
        std::vector<int> want = referenceTop(scores, keep);
        std::sort(want.begin(), want.end());
        std::vector<int> got(static_cast<size_t>(groups), -1);
        got.resize(static_cast<size_t>(keptGroups(scores.data(), groups, keep, got.data())));
        EXPECT_EQ(got, want) << "groups=" << groups << " keep=" << keep;
      }
    }
  }
}

// gate()'s general path on the same input must return `returned` and give these outputs bit for
// bit (a fused kernel's, sized for the same tokens, slots and candidates).
void expectGeneralPathGives(const float* logits, int64_t tokens, const float* bias,
                            const GateParams& p, int64_t returned, const std::vector<int32_t>& idx,
                            const std::vector<float>& w, const std::vector<int32_t>& cidx,
                            const std::vector<float>& cw, const std::string& what) {
  std::vector<int32_t> want_idx(idx.size(), -9), want_cidx(cidx.size(), -9);
  std::vector<float> want_w(w.size()), want_cw(cw.size());
  ASSERT_EQ(gateGeneral(logits, tokens, bias, p, want_idx.data(), want_w.data(), want_cidx.data(),
                        want_cw.data()),
            returned)
      << what;
  EXPECT_EQ(idx, want_idx) << what;
  EXPECT_EQ(cidx, want_cidx) << what;
  EXPECT_EQ(w, want_w) << what;
  EXPECT_EQ(cw, want_cw) << what;
}

// What gate()'s general path returns on this input (the first non-finite row, or -1).
int64_t generalPathReturns(const float* logits, int64_t tokens, const float* bias,
                           const GateParams& p) {
  std::vector<int32_t> idx(static_cast<size_t>(tokens * p.topk));
  std::vector<int32_t> cidx(static_cast<size_t>(tokens * p.candidates));
  std::vector<float> w(idx.size()), cw(cidx.size());
  return gateGeneral(logits, tokens, bias, p, idx.data(), w.data(), cidx.data(), cw.data());
}

// exp and sigmoid within a few float ulps of an f64 reference, over the whole finite range the
// gate meets (saturated sigmoids included), for lengths with and without a vector tail.
TEST(VectorMath, ExpAndSigmoidMatchDoublePrecision) {
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> wide(-100.0f, 100.0f), narrow(-8.0f, 8.0f);
  for (int n : {1, 7, 8, 29, 256}) {
    for (int row = 0; row < 200; ++row) {
      std::vector<float> in(static_cast<size_t>(n)), bias(static_cast<size_t>(n));
      for (float& x : in) x = row % 2 == 0 ? narrow(rng) : wide(rng);
      for (float& b : bias) b = narrow(rng) * 0.01f;
      std::vector<float> out(in.size()), biased(in.size()), exps(in.size());
      ASSERT_TRUE(sigmoid(in.data(), nullptr, out.data(), n));
      ASSERT_TRUE(sigmoid(in.data(), bias.data(), biased.data(), n));
      const float shift = *std::max_element(in.begin(), in.end());
      expShifted(in.data(), shift, exps.data(), n);
      for (int i = 0; i < n; ++i) {
        const double s = 1.0 / (1.0 + std::exp(-static_cast<double>(in[i])));
        EXPECT_NEAR(out[i], s, 4e-7 * s + 1e-37) << "sigmoid(" << in[i] << ")";
        EXPECT_EQ(biased[i], out[i] + bias[i]);
        const double e = std::exp(static_cast<double>(in[i] - shift));  // the float argument
        EXPECT_NEAR(exps[i], e, 4e-7 * e + 2e-38) << "exp(" << in[i] << " - " << shift << ")";
      }
    }
  }
  std::vector<float> in(40, 1.0f), out(40);
  for (int at : {0, 13, 39}) {
    in[static_cast<size_t>(at)] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_FALSE(sigmoid(in.data(), nullptr, out.data(), 40)) << at;
    in[static_cast<size_t>(at)] = 1.0f;
  }
  EXPECT_TRUE(sigmoid(in.data(), nullptr, out.data(), 40));
}

// The fused grouped-sigmoid gate against gate()'s general path: the same experts in the same slots
// and bit for bit the same weights (both take every sigmoid from one eight-lane formula), on random
// rows, rows of ties (the fused selection's fallback when more than 64 candidates tie at the
// floor), one dominant expert, and rows with NaN or infinity (the same row reported, indices in
// range).
TEST(FusedGroupedSigmoid, MatchesTheGeneralPath) {
  struct Shape {
    int experts, groups, topk, topk_groups, candidates;
  };
  const Shape shapes[] = {{64, 8, 8, 4, 0},   {256, 8, 8, 4, 0},  {256, 8, 4, 4, 3},
                          {512, 8, 6, 3, 0},  {256, 16, 8, 6, 2}, {128, 16, 1, 1, 0},
                          {1024, 16, 8, 8, 8}};
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::uniform_real_distribution<float> small(-0.05f, 0.05f);
  std::uniform_int_distribution<int> few(-2, 2);
  int fused_shapes = 0;
  for (const Shape& s : shapes) {
    for (int variant = 0; variant < 4; ++variant) {
      const bool renormalize = variant % 2 == 0;
      const GateParams p{s.experts, s.topk,        1,           renormalize, 2.5f,
                         s.groups,  s.topk_groups, s.candidates};
      if (!fusedGroupedSigmoidApplies(p)) continue;
      ++fused_shapes;
      const int64_t tokens = 96;
      const int E = s.experts;
      std::vector<float> logits(static_cast<size_t>(tokens * E)), bias(static_cast<size_t>(E));
      for (float& b : bias) b = variant < 2 ? small(rng) : 0.125f * static_cast<float>(few(rng));
      for (int64_t t = 0; t < tokens; ++t) {
        float* row = logits.data() + t * E;
        for (int e = 0; e < E; ++e) {
          switch (t % 4) {
            case 0:
              row[e] = normal(rng);
              break;
            case 1:
              row[e] = static_cast<float>(few(rng));
              break;  // ties everywhere
            case 2:
              row[e] = t % 8 == 2 ? 0.5f : normal(rng) - 8.0f;
              break;  // all equal, or cold
            default:
              row[e] = normal(rng) * 0.01f;
              break;
          }
        }
        if (t % 4 == 2 && t % 8 != 2) row[static_cast<size_t>(t) % E] = 12.0f;  // one hot expert
      }
      const bool with_bias = variant != 3;
      const float* b = with_bias ? bias.data() : nullptr;
      const int k = s.topk, c = s.candidates;
      std::vector<int32_t> idx(static_cast<size_t>(tokens * k), -7);
      std::vector<float> w(idx.size());
      std::vector<int32_t> cidx(static_cast<size_t>(tokens * c));
      std::vector<float> cw(cidx.size());
      const std::string what = "E=" + std::to_string(E) + " groups=" + std::to_string(s.groups) +
                               " k=" + std::to_string(k) + " variant=" + std::to_string(variant);
      ASSERT_EQ(gateGroupedSigmoid(logits.data(), tokens, b, p, idx.data(), w.data(), cidx.data(),
                                   cw.data()),
                -1)
          << what;
      expectGeneralPathGives(logits.data(), tokens, b, p, -1, idx, w, cidx, cw, what);
      // Non-finite logits: both report the first such row, and every index stays in range.
      logits[static_cast<size_t>(37 * E + 5)] = std::numeric_limits<float>::quiet_NaN();
      logits[static_cast<size_t>(50 * E + 1)] = std::numeric_limits<float>::infinity();
      EXPECT_EQ(gateGroupedSigmoid(logits.data(), tokens, b, p, idx.data(), w.data(), cidx.data(),
                                   cw.data()),
                37)
          << what;
      EXPECT_EQ(generalPathReturns(logits.data(), tokens, b, p), 37) << what;
      for (int32_t e : idx) EXPECT_TRUE(e >= -1 && e < E) << what;
      for (int32_t e : cidx) EXPECT_TRUE(e >= -1 && e < E) << what;
    }
  }
  if (fused_shapes == 0) GTEST_SKIP() << "this CPU lacks AVX2/FMA/BMI: gate() never fuses here";
}

#if defined(__x86_64__)
// The sigmoid estimate the fused gate ranks by stays within the error it declares of sigmoid8 (and
// of an f64 reference), over a sweep of every 257th float in [-100, 100] on both sides of zero;
// the declared bound came from every float in that range.
__attribute__((target("avx2,fma"))) void estimateWorstErrors(double& vs_exact, double& vs_f64) {
  vs_exact = 0.0;
  vs_f64 = 0.0;
  for (uint32_t sign : {0u, 0x80000000u}) {
    for (uint32_t bits = 0; bits <= 0x42c80000u; bits += 8 * 257) {  // 0x42c80000 = 100.0f
      alignas(32) float x[8], estimate[8], exact[8];
      for (uint32_t l = 0; l < 8; ++l) {
        const uint32_t u = (bits + l * 257) | sign;
        std::memcpy(&x[l], &u, 4);
      }
      _mm256_store_ps(estimate, sigmoidEstimate8(_mm256_load_ps(x)));
      _mm256_store_ps(exact, sigmoid8(_mm256_load_ps(x)));
      for (int l = 0; l < 8; ++l) {
        const double f64 = 1.0 / (1.0 + std::exp(-static_cast<double>(x[l])));
        vs_exact = std::max(vs_exact, std::fabs(static_cast<double>(estimate[l]) - exact[l]));
        vs_f64 = std::max(vs_f64, std::fabs(static_cast<double>(estimate[l]) - f64));
      }
    }
  }
}

TEST(VectorMath, SigmoidEstimateStaysWithinItsDeclaredError) {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    GTEST_SKIP() << "this CPU lacks AVX2/FMA";
  }
  double vs_exact = 0.0, vs_f64 = 0.0;
  estimateWorstErrors(vs_exact, vs_f64);
  EXPECT_LE(vs_exact, kSigmoidEstimateError);
  EXPECT_LE(vs_f64, kSigmoidEstimateError);
  EXPECT_GT(vs_exact, kSigmoidEstimateError / 4) << "the bound is far looser than the estimate";
}
#endif

// The fused gate ranks by a sigmoid estimate and must settle every decision the estimate cannot
// make with the exact sigmoid. Rows built so that the last ranked expert and the next one differ
// by one ulp of a logit, or so that a logit lies beyond the estimate's range, must come out as
// gate()'s general path has them, and must be counted as decided exactly; random rows mostly not.
TEST(FusedGroupedSigmoid, SettlesNearTiesWithExactSigmoids) {
  struct Shape {
    int experts, groups, topk, topk_groups, candidates;
  };
  int fused_shapes = 0;
  for (const Shape& s : {Shape{256, 8, 8, 4, 0}, Shape{512, 16, 6, 4, 2}}) {
    const GateParams p{s.experts, s.topk, 1, true, 2.5f, s.groups, s.topk_groups, s.candidates};
    if (!fusedGroupedSigmoidApplies(p)) continue;
    ++fused_shapes;
    const int E = s.experts, per_group = E / s.groups, ranked = s.topk + s.candidates;
    const int64_t tokens = 240;
    std::mt19937 rng(17);
    std::normal_distribution<float> normal(0.0f, 2.0f);
    std::vector<float> logits(static_cast<size_t>(tokens * E));
    for (float& x : logits) x = normal(rng);
    // The general path's ranking of each row, to find its last ranked expert.
    std::vector<int32_t> first_idx(static_cast<size_t>(tokens * s.topk));
    std::vector<int32_t> first_cidx(static_cast<size_t>(tokens * s.candidates));
    std::vector<float> first_w(first_idx.size()), first_cw(first_cidx.size());
    ASSERT_EQ(gateGeneral(logits.data(), tokens, nullptr, p, first_idx.data(), first_w.data(),
                          first_cidx.data(), first_cw.data()),
              -1);
    int64_t built = 0;
    for (int64_t t = 0; t < tokens; ++t) {
      float* row = logits.data() + t * E;
      if (t % 3 == 1) {  // an unranked expert of the last one's group, one ulp below it
        const int32_t last =
            s.candidates > 0 ? first_cidx[static_cast<size_t>(t * s.candidates + s.candidates - 1)]
                             : first_idx[static_cast<size_t>(t * s.topk + ranked - 1)];
        std::vector<int32_t> chosen(first_idx.begin() + t * s.topk,
                                    first_idx.begin() + (t + 1) * s.topk);
        chosen.insert(chosen.end(), first_cidx.begin() + t * s.candidates,
                      first_cidx.begin() + (t + 1) * s.candidates);
        const int group_start = last / per_group * per_group;
        for (int e = group_start; e < group_start + per_group; ++e) {
          if (std::find(chosen.begin(), chosen.end(), e) != chosen.end()) continue;
          row[e] = std::nextafter(row[last], -1e9f);
          ++built;
          break;
        }
      } else if (t % 3 == 2 && t % 6 == 2) {  // beyond the estimate's range, either side
        row[static_cast<size_t>(t) % E] = t % 12 == 2 ? 100.0f : -100.0f;
        ++built;
      }
    }
    std::vector<int32_t> idx(first_idx.size()), cidx(first_cidx.size());
    std::vector<float> w(idx.size()), cw(cidx.size());
    int64_t exact_rows = -1;
    ASSERT_EQ(gateGroupedSigmoid(logits.data(), tokens, nullptr, p, idx.data(), w.data(),
                                 cidx.data(), cw.data(), &exact_rows),
              -1);
    const std::string what = "E=" + std::to_string(E);
    expectGeneralPathGives(logits.data(), tokens, nullptr, p, -1, idx, w, cidx, cw, what);
    EXPECT_GE(built, tokens / 2) << what;
    EXPECT_GE(exact_rows, built) << what;
    EXPECT_LE(exact_rows, built + tokens / 20) << what << ": random rows should rarely need it";
  }
  if (fused_shapes == 0) GTEST_SKIP() << "this CPU lacks AVX2/FMA/BMI: gate() never fuses here";
}

// The fused softmax gate (renormalized softmax or top-k then softmax, no bias, no groups) against
// gate()'s general path, bit for bit: random rows, ties everywhere, rows all equal (more than 16
// candidates at the floor), one hot expert, tiny spreads, and non-finite rows (the same first row
// reported, indices in range).
TEST(FusedSoftmaxTop, MatchesTheGeneralPath) {
  struct Shape {
    int experts, topk, candidates, score;
    bool renormalize;
  };
  const Shape shapes[] = {{256, 8, 0, 0, true},   {256, 8, 0, 2, false}, {64, 2, 0, 2, true},
                          {128, 4, 4, 0, true},   {512, 16, 0, 0, true}, {24, 1, 0, 2, false},
                          {1024, 6, 2, 2, false}, {16, 8, 8, 0, true}};
  std::mt19937 rng(23);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::uniform_int_distribution<int> few(-2, 2);
  int fused_shapes = 0;
  for (const Shape& s : shapes) {
    const GateParams p{s.experts, s.topk, s.score, s.renormalize, 2.5f, 1, 1, s.candidates};
    if (!fusedSoftmaxTopApplies(p, false)) continue;
    EXPECT_FALSE(fusedSoftmaxTopApplies(p, true)) << "a bias changes the selection";
    ++fused_shapes;
    const int64_t tokens = 120;
    const int E = s.experts, k = s.topk, c = s.candidates;
    std::vector<float> logits(static_cast<size_t>(tokens * E));
    for (int64_t t = 0; t < tokens; ++t) {
      float* row = logits.data() + t * E;
      for (int e = 0; e < E; ++e) {
        switch (t % 5) {
          case 0:
          case 4:
            row[e] = normal(rng);
            break;
          case 1:
            row[e] = static_cast<float>(few(rng));  // ties everywhere
            break;
          case 2:
            row[e] = t % 10 == 2 ? -0.25f : normal(rng) - 30.0f;  // all equal, or cold
            break;
          default:
            row[e] = 1.0f + normal(rng) * 1e-6f;  // a tiny spread
            break;
        }
      }
      if (t % 10 == 7) row[static_cast<size_t>(t) % E] = 40.0f;  // one hot expert
    }
    std::vector<int32_t> idx(static_cast<size_t>(tokens * k), -7);
    std::vector<float> w(idx.size());
    std::vector<int32_t> cidx(static_cast<size_t>(tokens * c));
    std::vector<float> cw(cidx.size());
    const std::string what = "E=" + std::to_string(E) + " k=" + std::to_string(k) +
                             " c=" + std::to_string(c) + " score=" + std::to_string(s.score);
    ASSERT_EQ(
        gateSoftmaxTop(logits.data(), tokens, p, idx.data(), w.data(), cidx.data(), cw.data()), -1)
        << what;
    expectGeneralPathGives(logits.data(), tokens, nullptr, p, -1, idx, w, cidx, cw, what);
    logits[static_cast<size_t>(41 * E + E - 1)] = -std::numeric_limits<float>::infinity();
    logits[static_cast<size_t>(60 * E)] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_EQ(
        gateSoftmaxTop(logits.data(), tokens, p, idx.data(), w.data(), cidx.data(), cw.data()), 41)
        << what;
    EXPECT_EQ(generalPathReturns(logits.data(), tokens, nullptr, p), 41) << what;
    for (int32_t e : idx) EXPECT_TRUE(e >= -1 && e < E) << what;
    for (int32_t e : cidx) EXPECT_TRUE(e >= -1 && e < E) << what;
  }
  if (fused_shapes == 0) GTEST_SKIP() << "this CPU lacks AVX2/FMA/BMI: gate() never fuses here";
}

}  // namespace
}  // namespace moecomm::cpu
