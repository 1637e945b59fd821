// Where moecomm-perf's ranks come from (threads with -t, else mpirun/srun, torchrun-style
// variables, or a lone rank) and the small cross-rank reductions its reports need.
#pragma once

#include <moecomm/moecomm.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "perf/cli/perf_options.hpp"

namespace moecomm::perf {

class RankContext {
 public:
  RankContext(LocalWorld* local, World* world, int rank, int size, bool mpi)
      : local_(local), world_(world), rank_(rank), size_(size), mpi_(mpi) {}
  int rank() const { return rank_; }
  int size() const { return size_; }
  bool threads() const { return local_ != nullptr; }
  bool mpiWorld() const { return mpi_; }
  const char* launch() const;
  // Collective: a group of this run's ranks.
  Group makeGroup(const GroupConfig& config);
  // Collective over `group`: every rank's values, rank-ordered.
  std::vector<double> gather(Group& group, const std::vector<double>& mine);

 private:
  LocalWorld* local_;
  World* world_;
  int rank_;
  int size_;
  bool mpi_;
};

// Runs `body` on every rank; returns the largest exit code any rank in this process returned.
int runOnRanks(const CommonOptions& options, const std::function<int(RankContext&)>& body);

// This machine's host name, for the header.
std::string hostName();

}  // namespace moecomm::perf
