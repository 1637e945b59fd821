// moecomm-perf: every flag parsed (and bad values refused with a message), the JSON read back,
// #wrong catching a corrupted exchange, the bandwidth gate, and the routing generators.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "perf/cli/alltoall.hpp"
#include "perf/cli/dispatch_bench.hpp"

namespace {

using namespace moecomm::perf;

// Parses `args` (after the subcommand) into fresh options; returns CLI11's error text or "".
template <typename Options, typename Add>
std::string parse(Add add, std::vector<std::string> args, Options* out) {
  CLI::App app;
  add(app, *out);
  std::reverse(args.begin(), args.end());  // CLI11 takes them last-first
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    return e.what();
  }
  return "";
}

TEST(PerfCli, SizesTakeNcclTestsSuffixes) {
  uint64_t v = 0;
  EXPECT_TRUE(parseSize("4096", &v));
  EXPECT_EQ(v, 4096u);
  EXPECT_TRUE(parseSize("64K", &v));
  EXPECT_EQ(v, 65536u);
  EXPECT_TRUE(parseSize("32m", &v));
  EXPECT_EQ(v, 32u << 20);
  EXPECT_TRUE(parseSize("1G", &v));
  EXPECT_EQ(v, 1u << 30);
  EXPECT_TRUE(parseSize("1.5K", &v));
  EXPECT_EQ(v, 1536u);
  for (const char* bad : {"", "K", "4KB", "-1", "x", "1T"}) EXPECT_FALSE(parseSize(bad, &v)) << bad;
}

TEST(PerfCli, EveryAlltoallFlag) {
  AlltoallOptions o;
  const std::string error =
      parse(addAlltoallOptions,
            {"-b", "4K",       "-e",          "1M",  "-f",     "4",   "-i",         "8K",
             "-n", "7",        "-w",          "3",   "-c",     "2",   "-d",         "bfloat16",
             "-a", "3",        "-t",          "4",   "-N",     "2",   "-T",         "9",
             "-J", "out.json", "--transport", "ucx", "--mode", "put", "--baseline", "mpi"},
            &o);
  ASSERT_EQ(error, "");
  EXPECT_EQ(o.min_bytes, 4096u);
  EXPECT_EQ(o.max_bytes, 1u << 20);
  EXPECT_EQ(o.factor, 4);
  EXPECT_EQ(o.step_bytes, 8192u);
  EXPECT_EQ(o.iters, 7);
  EXPECT_EQ(o.warmup, 3);
  EXPECT_EQ(o.check, 2);
  EXPECT_EQ(o.dtype, "bfloat16");
  EXPECT_EQ(o.average, 3);
  EXPECT_EQ(o.threads, 4);
  EXPECT_EQ(o.repeats, 2);
  EXPECT_EQ(o.timeout_s, 9);
  EXPECT_EQ(o.json, "out.json");
  EXPECT_EQ(o.transport, "ucx");
  EXPECT_EQ(o.mode, "put");
  EXPECT_EQ(o.baseline, "mpi");
}

TEST(PerfCli, BadValuesAreRefusedWithAMessage) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"-b", "1X"}, "not a size"},
      {{"-a", "7"}, "-a"},
      {{"-d", "float7"}, "float7"},
      {{"--mode", "rdma"}, "rdma"},
      {{"-n", "0"}, "--iters"},
      {{"--transport", "tcp"}, "tcp"},
      {{"-b", "64M", "-e", "1M"}, "larger than maxbytes"},
      {{"-f", "1"}, "--stepfactor"},
      {{"--bogus"}, "--bogus"},
  };
  for (const auto& [args, text] : cases) {
    AlltoallOptions o;
    const std::string error = parse(addAlltoallOptions, args, &o);
    EXPECT_NE(error.find(text), std::string::npos) << args[0] << ": '" << error << "'";
  }
  for (const auto& [args, text] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--routing", "zipf:-1"}, "S >= 0"},
           {{"--routing", "hot:abc"}, "missing"},
           {{"--routing", "lumpy"}, "lumpy"},
           {{"--dtype", "int8"}, "int8"},
           {{"--layout", "rows"}, "rows"},
           {{"--tokens", "0"}, "--tokens"}}) {
    DispatchBenchOptions o;
    const std::string error = parse(addDispatchOptions, args, &o);
    EXPECT_NE(error.find(text), std::string::npos) << args[0] << ": '" << error << "'";
  }
}

TEST(PerfCli, EveryDispatchFlag) {
  DispatchBenchOptions o;
  ASSERT_EQ(parse(addDispatchOptions,
                  {"--tokens",  "128", "--hidden", "64",       "--topk",     "2",
                   "--experts", "8",   "--dtype",  "f32",      "--routing",  "hot:0.5",
                   "-n",        "3",   "-w",       "1",        "--no-check", "--alignment",
                   "16",        "-t",  "2",        "--layout", "token"},
                  &o),
            "");
  EXPECT_EQ(o.layout, "token");
  EXPECT_EQ(o.tokens, 128);
  EXPECT_EQ(o.hidden, 64);
  EXPECT_EQ(o.topk, 2);
  EXPECT_EQ(o.experts, 8);
  EXPECT_EQ(o.dtype, "f32");
  EXPECT_EQ(o.routing, "hot:0.5");
  EXPECT_EQ(o.iters, 3);
  EXPECT_EQ(o.warmup, 1);
  EXPECT_FALSE(o.check);
  EXPECT_EQ(o.alignment, 16);
  EXPECT_EQ(o.threads, 2);
}

nlohmann::json readJson(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

AlltoallOptions smallSweep(const std::string& json) {
  AlltoallOptions o;
  o.threads = 2;
  o.min_bytes = 1024;
  o.max_bytes = 64 * 1024;
  o.factor = 4;
  o.iters = 2;
  o.warmup = 1;
  o.timeout_s = 30;
  o.json = json;
  return o;
}

TEST(PerfCli, AlltoallJsonReadsBackWithStableKeys) {
  const std::string path = ::testing::TempDir() + "alltoall.json";
  for (const char* mode : {"tag", "put"}) {
    AlltoallOptions o = smallSweep(path);
    o.mode = mode;
    ASSERT_EQ(runOnRanks(o, [&](RankContext& c) { return runAlltoall(o, c); }), 0);
    const nlohmann::json doc = readJson(path);
    EXPECT_EQ(doc["tool"], "moecomm-perf");
    EXPECT_EQ(doc["command"], "alltoall");
    EXPECT_EQ(doc["config"]["ranks"], 2);
    EXPECT_EQ(doc["config"]["mode"], mode);
    EXPECT_EQ(doc["ranks"].size(), 2u);
    ASSERT_EQ(doc["rows"].size(), 4u);  // 1K, 4K, 16K, 64K
    uint64_t expected_size = 1024;
    for (const auto& row : doc["rows"]) {
      EXPECT_EQ(row["size"], expected_size);
      EXPECT_EQ(row["count"], expected_size / 2 / 4);  // float elements per peer
      EXPECT_EQ(row["type"], "float");
      EXPECT_EQ(row["wrong"], 0);
      EXPECT_GT(row["time_us"].get<double>(), 0);
      EXPECT_NEAR(row["busbw"].get<double>(), row["algbw"].get<double>() / 2, 1e-9);
      expected_size *= 4;
    }
    EXPECT_EQ(doc["summary"]["ok"], true);
    EXPECT_EQ(doc["summary"]["wrong"], 0);
  }
}

TEST(PerfCli, ACorruptedExchangeIsCountedAndFailsTheRun) {
  const std::string path = ::testing::TempDir() + "corrupt.json";
  AlltoallOptions o = smallSweep(path);
  o.corrupt = true;
  EXPECT_EQ(runOnRanks(o, [&](RankContext& c) { return runAlltoall(o, c); }), 1);
  const nlohmann::json doc = readJson(path);
  EXPECT_GT(doc["summary"]["wrong"].get<int64_t>(), 0);
  EXPECT_EQ(doc["summary"]["ok"], false);
  for (const auto& row : doc["rows"]) EXPECT_EQ(row["wrong"], 1) << row.dump();
}

TEST(PerfCli, TheBandwidthGateFailsASlowRun) {
  setenv("MOECOMM_PERF_MIN_BW", "1e9", 1);
  AlltoallOptions o = smallSweep("");
  EXPECT_EQ(runOnRanks(o, [&](RankContext& c) { return runAlltoall(o, c); }), 3);
  unsetenv("MOECOMM_PERF_MIN_BW");
}

TEST(PerfCli, DispatchRunsChecksAndWritesJson) {
  const std::string path = ::testing::TempDir() + "dispatch.json";
  DispatchBenchOptions o;
  o.threads = 2;
  o.tokens = 64;
  o.hidden = 32;
  o.topk = 2;
  o.experts = 8;
  o.iters = 3;
  o.warmup = 1;
  o.routing = "zipf:1.1";
  o.json = path;
  ASSERT_EQ(runOnRanks(o, [&](RankContext& c) { return runDispatch(o, c); }), 0);
  const nlohmann::json doc = readJson(path);
  EXPECT_EQ(doc["command"], "dispatch");
  EXPECT_EQ(doc["ranks"].size(), 2u);
  EXPECT_EQ(doc["summary"]["ok"], true);
  EXPECT_GT(doc["summary"]["dispatch_ms"].get<double>(), 0);
  EXPECT_TRUE(doc["ranks"][0]["dispatch_phases_ms"].contains("count_exchange"));
  // FP8 dispatch: checked against the dequantized tokens, and its JSON says so.
  o.dtype = "fp8";
  o.hidden = 200;  // a short last scale block
  ASSERT_EQ(runOnRanks(o, [&](RankContext& c) { return runDispatch(o, c); }), 0);
  const nlohmann::json fp8 = readJson(path);
  EXPECT_EQ(fp8["config"]["dtype"], "fp8");
  EXPECT_EQ(fp8["summary"]["ok"], true);
  // Token-major batches: checked the same way (the identity experts weigh each row), with the
  // memcpy roofline and the ratio in the summary.
  o.dtype = "bf16";
  o.layout = "token";
  ASSERT_EQ(runOnRanks(o, [&](RankContext& c) { return runDispatch(o, c); }), 0);
  const nlohmann::json token = readJson(path);
  EXPECT_EQ(token["config"]["layout"], "token");
  EXPECT_EQ(token["summary"]["ok"], true);
  EXPECT_GT(token["summary"]["memcpy_gbps"].get<double>(), 0);
  EXPECT_GT(token["summary"]["both_x_memcpy"].get<double>(), 0);
}

TEST(PerfCli, RoutingGeneratorsAreDistinctAndSkewed) {
  std::mt19937 rng(3);
  const int T = 4000, E = 16, k = 4;
  auto idx = makeRouting("hot:1", T, E, k, rng);
  for (int t = 0; t < T; ++t) {
    EXPECT_EQ(idx[t * k], 0);
    std::set<int> distinct(idx.begin() + t * k, idx.begin() + (t + 1) * k);
    ASSERT_EQ(distinct.size(), size_t(k));
  }
  idx = makeRouting("zipf:1.5", T, E, k, rng);
  std::vector<int> load(E, 0);
  for (int e : idx) ++load[e];
  EXPECT_GT(load[0], 2 * load[E - 1]);
  idx = makeRouting("uniform", T, E, k, rng);
  std::fill(load.begin(), load.end(), 0);
  for (int e : idx) ++load[e];
  for (int e = 0; e < E; ++e) EXPECT_NEAR(load[e], T * k / E, T * k / E * 0.15) << e;
}

}  // namespace
