// moecomm-perf's options, parsed by CLI11 with nccl-tests' flag names. Kept apart from main so the
// tests parse the very same definitions.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

namespace moecomm::perf {

// Sizes as nccl-tests writes them: 4096, 4K, 32M, 1G (powers of 1024).
bool parseSize(const std::string& text, uint64_t* out);

struct CommonOptions {
  int threads = 0;                 // -t: ranks as threads of this process (0: launched ranks)
  std::string transport = "auto";  // --transport local|ucx|mpi|nccl|auto
  double timeout_s = 300;          // -T: the deadline of every wait
  std::string json;                // -J: write the results here
};

struct AlltoallOptions : CommonOptions {
  uint64_t min_bytes = 8192;      // -b: one rank's whole send buffer, smallest
  uint64_t max_bytes = 33554432;  // -e: largest
  double factor = 2;              // -f: multiply the size by this each step
  uint64_t step_bytes = 0;        // -i: or add this (wins over -f when set)
  int iters = 20;                 // -n
  int warmup = 5;                 // -w
  int check = 1;                  // -c: check iterations after the timed ones (0: none)
  std::string dtype = "float";    // -d
  int average = 1;                // -a: 0 rank 0, 1 average, 2 min, 3 max over ranks
  int repeats = 1;                // -N: sweeps
  std::string mode = "tag";       // --mode tag|put: messages, or puts into registered windows
  std::string baseline;           // --baseline mpi
  bool corrupt = false;           // --corrupt: flip a received byte on rank 0 (tests #wrong)
};

struct DispatchBenchOptions : CommonOptions {
  int tokens = 4096;
  int hidden = 2048;
  int topk = 8;
  int experts = 64;
  std::string dtype = "bf16";       // bf16|f32 (fp8 is refused until dispatch carries it)
  std::string routing = "uniform";  // uniform | zipf:S | hot:FRACTION
  int iters = 20;
  int warmup = 3;
  bool check = true;  // verify the first iteration against the reference
  int alignment = 1;
  std::string layout = "expert";  // expert (expert-major batches) or token (token-major)
};

void addAlltoallOptions(CLI::App& app, AlltoallOptions& o);
void addDispatchOptions(CLI::App& app, DispatchBenchOptions& o);

// Element size of an nccl-tests datatype name (int8, uint8, int32, uint32, int64, uint64, half,
// float, double, bfloat16), or 0 for an unknown one.
size_t dtypeBytes(const std::string& name);

}  // namespace moecomm::perf
