#include "perf/cli/dispatch_bench.hpp"

#include <moecomm/quant.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>

#include "perf/cli/report.hpp"

namespace moecomm::perf {

std::vector<int32_t> makeRouting(const std::string& routing, int tokens, int experts, int topk,
                                 std::mt19937& rng) {
  std::vector<double> popularity(static_cast<size_t>(experts), 1.0);
  double hot = 0;
  if (routing.rfind("zipf:", 0) == 0) {
    const double s = std::stod(routing.substr(5));
    for (int e = 0; e < experts; ++e) popularity[e] = 1.0 / std::pow(e + 1, s);
  } else if (routing.rfind("hot:", 0) == 0) {
    hot = std::stod(routing.substr(4));
  }
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<int32_t> idx(static_cast<size_t>(tokens) * topk);
  std::vector<double> weights;
  for (int t = 0; t < tokens; ++t) {
    weights = popularity;
    int j = 0;
    if (hot > 0 && uniform(rng) < hot) {
      idx[size_t(t) * topk + j++] = 0;
      weights[0] = 0;
    }
    for (; j < topk; ++j) {  // weighted sampling without replacement
      std::discrete_distribution<int> pick(weights.begin(), weights.end());
      const int e = pick(rng);
      idx[size_t(t) * topk + j] = e;
      weights[e] = 0;
    }
  }
  return idx;
}

namespace {

struct Stats {
  double avg = 0, min = 0, max = 0, p50 = 0, p99 = 0;
};

Stats statsOf(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.min = v.front();
  s.max = v.back();
  s.avg = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  auto at = [&](double q) { return v[std::min(v.size() - 1, size_t(q * (v.size() - 1) + 0.5))]; };
  s.p50 = at(0.5);
  s.p99 = at(0.99);
  return s;
}

// Token-major identity experts: each received row times the sum of its local weights, the
// caller's own weighted sum over this rank's experts (not timed: it stands for the experts).
Tensor weightedByLocalSlots(const Tensor& rows, const ExpertBatch& batch) {
  const int64_t n = rows.dim(0), h = rows.dim(1), k = batch.topk_weights.dim(1);
  std::vector<float> values(static_cast<size_t>(n * h));
  convert(TensorView::vector(rows.data(), rows.dtype(), n * h),
          TensorView::vector(values.data(), DType::kF32, n * h));
  const auto* w = static_cast<const float*>(batch.topk_weights.data());
  for (int64_t r = 0; r < n; ++r) {
    float sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += w[r * k + j];
    for (int64_t i = 0; i < h; ++i) values[r * h + i] *= sum;
  }
  Tensor out = Tensor::empty({n, h}, rows.dtype());
  convert(TensorView::vector(values.data(), DType::kF32, n * h),
          TensorView::vector(out.data(), rows.dtype(), n * h));
  return out;
}

// The roofline, timed in every iteration next to the operations (this VM's speed drifts over
// seconds): one memcpy of a rank's dispatch bytes, every rank copying at once.
struct CopyRoofline {
  std::vector<std::byte> src, dst;
  explicit CopyRoofline(size_t bytes) : src(bytes, std::byte{1}), dst(bytes, std::byte{0}) {}
  double ms() {
    const auto t0 = std::chrono::steady_clock::now();
    std::memcpy(dst.data(), src.data(), src.size());
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
};

}  // namespace

int runDispatch(const DispatchBenchOptions& o, RankContext& context) {
  const bool root = context.rank() == 0;
  if (o.experts % context.size() != 0 || o.topk > o.experts) {
    if (root) {
      std::fprintf(
          stderr,
          "moecomm-perf: --experts %d must be a multiple of the %d ranks and >= --topk %d\n",
          o.experts, context.size(), o.topk);
    }
    return 2;
  }
  // FP8: tokens travel as e4m3 values with per-128 block scales (DeepEP's FP8 dispatch); the
  // identity experts hand combine bf16 rows, as real experts would.
  const bool fp8 = o.dtype == "fp8";
  const DType dtype = o.dtype == "f32" ? DType::kF32 : fp8 ? DType::kFP8E4M3 : DType::kBF16;
  const DType out_dtype = fp8 ? DType::kBF16 : dtype;
  const int64_t timeout_ms = static_cast<int64_t>(o.timeout_s * 1000);
  Group group = context.makeGroup({o.experts, o.hidden, dtype, o.topk, timeout_ms, o.transport});
  const int n = group.size(), me = group.rank();
  const bool token_major = o.layout == "token";
  DispatchOptions options;
  options.layout = token_major ? BatchLayout::kTokenMajor : BatchLayout::kExpertMajor;
  options.expert_alignment = o.alignment;
  Dispatcher dispatcher(group, options);

  std::mt19937 rng(1000 + me);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t T = o.tokens, H = o.hidden, k = o.topk;
  std::vector<float> x32(size_t(T) * H);
  for (float& v : x32) v = normal(rng);
  const int64_t S = (H + kFp8BlockSize - 1) / kFp8BlockSize;
  Tensor x = Tensor::empty({T, H}, dtype);
  Tensor x_scales = fp8 ? Tensor::empty({T, S}, DType::kF32) : Tensor();
  const auto x32_v = TensorView::matrix(x32.data(), DType::kF32, T, H);
  if (fp8) {
    quantizeFp8(x32_v, x.view(), x_scales.view());
    dequantizeFp8(x.view(), x_scales.view(), x32_v);  // the values the payload carries
  } else {
    convert(TensorView::vector(x32.data(), DType::kF32, T * H),
            TensorView::vector(x.data(), dtype, T * H));
    convert(TensorView::vector(x.data(), dtype, T * H),
            TensorView::vector(x32.data(), DType::kF32, T * H));
  }
  std::vector<int32_t> idx = makeRouting(o.routing, int(T), o.experts, o.topk, rng);
  std::vector<float> w(size_t(T) * k);
  std::uniform_real_distribution<float> uniform(0.1f, 1.0f);
  for (float& v : w) v = uniform(rng);
  const TensorView idx_v = TensorView::matrix(idx.data(), DType::kI32, T, k);
  const TensorView w_v = TensorView::matrix(w.data(), DType::kF32, T, k);

  // Bytes this rank sends per dispatch: one row per (token, destination rank), with and without
  // the rows that stay here.
  const int local = o.experts / n;
  int64_t routed = 0, remote = 0;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<bool> to(static_cast<size_t>(n), false);
    for (int j = 0; j < k; ++j) to[idx[t * k + j] / local] = true;
    for (int r = 0; r < n; ++r) {
      routed += to[r];
      remote += to[r] && r != me;
    }
  }
  // A dispatched row's bytes (FP8: values and scales) and a combined row's.
  const double row_bytes = static_cast<double>(H) * dtypeSize(dtype) + (fp8 ? 4.0 * S : 0.0);
  const double combine_row_bytes = static_cast<double>(H) * dtypeSize(out_dtype);

  std::vector<double> dispatch_ms, combine_ms, copy_times;
  CopyRoofline roofline(static_cast<size_t>(routed * row_bytes));
  DispatchTimes d_phase{}, c_phase{};
  int64_t wrong = 0;
  const int total = o.warmup + o.iters;
  Progress progress(root);
  for (int it = 0; it < total; ++it) {
    progress.update(it + 1, total, "iteration");
    auto t0 = std::chrono::steady_clock::now();
    ExpertBatch batch =
        fp8 ? dispatcher.dispatch(x, x_scales, idx_v, w_v) : dispatcher.dispatch(x, idx_v, w_v);
    const auto dispatched = std::chrono::steady_clock::now();
    const DispatchTimes dt = dispatcher.lastTimes();
    Tensor y = batch.x;  // identity experts
    if (fp8) {
      y = Tensor::empty({batch.x.dim(0), H}, out_dtype);
      dequantizeFp8(batch.x.view(), batch.x_scales.view(), y.view());
    }
    if (token_major) y = weightedByLocalSlots(y, batch);
    // The ranks leave their experts together, so that combine's clock does not count a wait for
    // a slower rank's expert work.
    if (fp8 || token_major) context.gather(group, {0.0});
    auto t1 = std::chrono::steady_clock::now();  // combine's clock starts after the experts
    Tensor out = dispatcher.combine(y, batch.handle);
    auto t2 = std::chrono::steady_clock::now();
    const DispatchTimes ct = dispatcher.lastTimes();
    if (it == 0 && o.check) {
      // Identity experts: out[t] = x[t] * (sum of t's weights).
      const double tol = out_dtype == DType::kBF16 ? 2e-2 : 1e-5;
      std::vector<float> got(size_t(T) * H);
      convert(TensorView::vector(out.data(), out.dtype(), T * H),
              TensorView::vector(got.data(), DType::kF32, T * H));
      for (int64_t t = 0; t < T; ++t) {
        double sw = 0;
        for (int j = 0; j < k; ++j) sw += w[t * k + j];
        bool bad = false;
        for (int64_t h = 0; h < H; ++h) {
          const double want = x32[t * H + h] * sw;
          bad = bad || std::fabs(got[t * H + h] - want) > tol * (1 + std::fabs(want));
        }
        wrong += bad;
      }
    }
    if (it < o.warmup) continue;
    context.gather(group, {0.0});  // the ranks copy together, as they dispatch together
    copy_times.push_back(roofline.ms());
    dispatch_ms.push_back(std::chrono::duration<double, std::milli>(dispatched - t0).count());
    combine_ms.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
    for (auto [sum, one] : {std::pair{&d_phase, &dt}, std::pair{&c_phase, &ct}}) {
      sum->layout_ms += one->layout_ms / o.iters;
      sum->count_exchange_ms += one->count_exchange_ms / o.iters;
      sum->pack_ms += one->pack_ms / o.iters;
      sum->transfer_ms += one->transfer_ms / o.iters;
      sum->unpack_ms += one->unpack_ms / o.iters;
    }
  }

  const Stats ds = statsOf(dispatch_ms), cs = statsOf(combine_ms);
  const double copy_ms = statsOf(copy_times).avg;
  std::vector<double> mine = {ds.avg,
                              ds.min,
                              ds.max,
                              ds.p50,
                              ds.p99,
                              cs.avg,
                              cs.min,
                              cs.max,
                              cs.p50,
                              cs.p99,
                              double(routed),
                              double(remote),
                              double(wrong),
                              d_phase.layout_ms,
                              d_phase.count_exchange_ms,
                              d_phase.pack_ms,
                              d_phase.transfer_ms,
                              d_phase.unpack_ms,
                              c_phase.pack_ms,
                              c_phase.transfer_ms,
                              c_phase.unpack_ms,
                              copy_ms};
  const size_t width = mine.size();
  const std::vector<double> all = context.gather(group, mine);
  int64_t wrong_all = 0;
  for (int r = 0; r < n; ++r) wrong_all += static_cast<int64_t>(all[r * width + 12]);
  if (root) {
    std::printf(
        "# moecomm-perf dispatch: %d ranks (launch %s, transport %s), tokens %lld/rank, "
        "hidden %lld, top-%lld, %d experts, %s, routing %s, %s-major, alignment %d, %d iters "
        "after %d warm-up\n",
        n, context.launch(), group.transportName(), static_cast<long long>(T),
        static_cast<long long>(H), static_cast<long long>(k), o.experts, o.dtype.c_str(),
        o.routing.c_str(), o.layout.c_str(), o.alignment, o.iters, o.warmup);
    std::printf(
        "# bandwidth: routed = rows sent to every destination rank incl. this one x hidden "
        "x dtype bytes / time (DeepEP's count; fp8: values + f32 scale per 128, combine "
        "carries bf16); remote = the same without this rank's own rows. GB = 1e9 B\n");
    std::printf("#%4s %8s %9s %9s %9s %9s %9s %10s %10s %12s\n", "rank", "op", "avg ms", "min ms",
                "max ms", "p50 ms", "p99 ms", "routed GB/s", "remote GB/s", "tokens/s");
    nlohmann::json ranks = nlohmann::json::array();
    double worst_d = 0, worst_c = 0;
    for (int r = 0; r < n; ++r) {
      const double* v = &all[r * width];
      for (int op = 0; op < 2; ++op) {
        const double* s = v + op * 5;
        std::printf("%5d %8s %9.3f %9.3f %9.3f %9.3f %9.3f %10.2f %10.2f %12.0f\n", r,
                    op == 0 ? "dispatch" : "combine", s[0], s[1], s[2], s[3], s[4],
                    v[10] * (op == 0 ? row_bytes : combine_row_bytes) / (s[0] * 1e6),
                    v[11] * (op == 0 ? row_bytes : combine_row_bytes) / (s[0] * 1e6),
                    T / (s[0] / 1e3));
      }
      worst_d = std::max(worst_d, v[0]);
      worst_c = std::max(worst_c, v[5]);
      ranks.push_back(
          {{"rank", r},
           {"dispatch_ms",
            {{"avg", v[0]}, {"min", v[1]}, {"max", v[2]}, {"p50", v[3]}, {"p99", v[4]}}},
           {"combine_ms",
            {{"avg", v[5]}, {"min", v[6]}, {"max", v[7]}, {"p50", v[8]}, {"p99", v[9]}}},
           {"routed_rows", v[10]},
           {"remote_rows", v[11]},
           {"wrong_tokens", v[12]},
           {"dispatch_phases_ms",
            {{"layout", v[13]},
             {"count_exchange", v[14]},
             {"pack", v[15]},
             {"transfer", v[16]},
             {"unpack", v[17]}}},
           {"combine_phases_ms", {{"reduce", v[18]}, {"transfer", v[19]}, {"unpack", v[20]}}},
           {"memcpy_ms", v[21]}});
    }
    double routed_all = 0, remote_all = 0;
    for (int r = 0; r < n; ++r) {
      routed_all += all[r * width + 10];
      remote_all += all[r * width + 11];
    }
    // Overall: the slowest rank's average; rows summed over ranks, per rank, each op's row
    // bytes (combine carries bf16 after an FP8 dispatch).
    const double routed_rows = routed_all / n, remote_rows = remote_all / n;
    auto gbps = [](double rows, double bytes, double ms) { return rows * bytes / (ms * 1e6); };
    const double d_routed = gbps(routed_rows, row_bytes, worst_d),
                 c_routed = gbps(routed_rows, combine_row_bytes, worst_c);
    std::printf(
        "# overall (slowest rank's average): dispatch %.3f ms (%.2f routed, %.2f remote GB/s "
        "per rank, %.0f tokens/s per rank), combine %.3f ms (%.2f, %.2f GB/s)\n",
        worst_d, d_routed, gbps(remote_rows, row_bytes, worst_d), T / (worst_d / 1e3), worst_c,
        c_routed, gbps(remote_rows, combine_row_bytes, worst_c));
    // Both operations' routed bytes over their time, against every rank's memcpy of its
    // dispatch bytes, all ranks copying at once in every timed iteration (the slowest rank's).
    double worst_copy = 0;
    for (int r = 0; r < n; ++r) worst_copy = std::max(worst_copy, all[r * width + 21]);
    const double copy_gbps = gbps(routed_rows, row_bytes, worst_copy);
    const double both_gbps =
        routed_rows * (row_bytes + combine_row_bytes) / ((worst_d + worst_c) * 1e6);
    std::printf(
        "# dispatch+combine: %.2f routed GB/s per rank = %.2f x memcpy (%.2f GB/s: each rank "
        "copies its dispatch bytes, all at once)\n",
        both_gbps, both_gbps / copy_gbps, copy_gbps);
    const double* v0 = &all[0];
    std::printf(
        "# rank 0 phases (ms): dispatch layout %.3f, count exchange %.3f, pack %.3f, transfer "
        "%.3f, unpack %.3f; combine reduction %.3f, transfer %.3f, unpack %.3f\n",
        v0[13], v0[14], v0[15], v0[16], v0[17], v0[18], v0[19], v0[20]);
    std::printf("# check: %s\n",
                !o.check ? "skipped"
                : wrong_all == 0
                    ? "OK (first iteration matches the reference)"
                    : ("FAILED: " + std::to_string(wrong_all) + " tokens wrong").c_str());
    if (!o.json.empty()) {
      nlohmann::json doc = {{"tool", "moecomm-perf"},
                            {"command", "dispatch"},
                            {"version", MOECOMM_VERSION_STRING},
                            {"config",
                             {{"tokens", T},
                              {"hidden", H},
                              {"topk", k},
                              {"experts", o.experts},
                              {"dtype", o.dtype},
                              {"routing", o.routing},
                              {"iters", o.iters},
                              {"warmup", o.warmup},
                              {"alignment", o.alignment},
                              {"layout", o.layout},
                              {"check", o.check},
                              {"transport", group.transportName()},
                              {"launch", context.launch()},
                              {"ranks", n}}},
                            {"environment", environmentJson()},
                            {"ranks", ranks},
                            {"summary",
                             {{"dispatch_ms", worst_d},
                              {"combine_ms", worst_c},
                              {"dispatch_routed_gbps", d_routed},
                              {"dispatch_remote_gbps", gbps(remote_rows, row_bytes, worst_d)},
                              {"combine_routed_gbps", c_routed},
                              {"memcpy_gbps", copy_gbps},
                              {"both_x_memcpy", both_gbps / copy_gbps},
                              {"wrong_tokens", wrong_all},
                              {"ok", wrong_all == 0}}}};
      if (!writeJson(o.json, doc)) return 2;
    }
  }
  return wrong_all == 0 ? 0 : 1;
}

}  // namespace moecomm::perf
