// moecomm-perf: all-to-all bandwidth and dispatch/combine benchmarks in nccl-tests' style.
//   moecomm-perf alltoall -b 8K -e 32M -f 2 -t 2
//   mpirun -np 2 moecomm-perf alltoall --transport ucx --baseline mpi
//   moecomm-perf dispatch -t 2 --tokens 4096 --hidden 2048 --topk 8 --experts 64 --routing zipf:1.2
#include <CLI/CLI.hpp>

#include "perf/cli/alltoall.hpp"
#include "perf/cli/dispatch_bench.hpp"
#include "perf/cli/perf_world.hpp"

int main(int argc, char** argv) {
  using namespace moecomm::perf;
  CLI::App app{
      "moecomm-perf: all-to-all bandwidth and dispatch/combine benchmarks.\n"
      "Ranks: -t N threads, or one rank per process under mpirun/srun or torchrun-style\n"
      "variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Exit status: 0 ok, 1 wrong\n"
      "data, 2 bad usage, 3 average bus bandwidth below MOECOMM_PERF_MIN_BW (GB/s)."};
  app.require_subcommand(1);
  AlltoallOptions alltoall;
  CLI::App* a = app.add_subcommand("alltoall", "all-to-all bandwidth sweep (nccl-tests flags)");
  addAlltoallOptions(*a, alltoall);
  DispatchBenchOptions dispatch;
  CLI::App* d = app.add_subcommand("dispatch", "dispatch and combine with DeepEP-like knobs");
  addDispatchOptions(*d, dispatch);
  CLI11_PARSE(app, argc, argv);
  if (*a) return runOnRanks(alltoall, [&](RankContext& c) { return runAlltoall(alltoall, c); });
  return runOnRanks(dispatch, [&](RankContext& c) { return runDispatch(dispatch, c); });
}
