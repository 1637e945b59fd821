// Dispatch and combine with CUDA tensors on ranks that are processes: one per rank, started by
// scripts/moecomm-launch (MOECOMM_TEST_PROCESSES=env) or mpirun (=mpi), on the transport that
// MOECOMM_TEST_TRANSPORT names ("auto" when unset). ucx and mpi move host memory only, so the
// CUDA tensors go through pinned host copies; the results must be the host engine's bit for bit,
// the batch must be on the GPU, and the handle must say the staged path ran. Every process uses
// GPU 0 (ranks may share one). Not launched, the program has nothing to run and skips (77).
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "moecomm/group.hpp"
#include "tests/common/launched_world.hpp"
#include "tests/gpu/exchange_checks.hpp"
#include "tests/gpu/gpu_test.hpp"
#include "tests/gpu/tensors.hpp"

namespace moecomm::gputest {
namespace {

testing::LaunchedWorld& launched() {
  static testing::LaunchedWorld world;
  return world;
}

std::string testTransport() {
  const char* forced = std::getenv("MOECOMM_TEST_TRANSPORT");
  return forced != nullptr && *forced != '\0' ? forced : "auto";
}

GPU_TEST(dispatch_combine_cuda_tensors_one_process_per_rank) {
  World& world = *launched().world;
  const CaseOptions o = caseOptions(6);
  DispatchOptions padded = o.capped;
  padded.pad_to_capacity = true;
  onStream([&](cudaStream_t stream) {
    Group group = Group::create(world, engineGroupConfig(testTransport()));
    for (const EngineCase& c :
         {EngineCase{DType::kI32, o.aligned}, EngineCase{DType::kI32, o.capped},
          EngineCase{DType::kI32, padded}, EngineCase{DType::kI32, o.sync_free},
          EngineCase{DType::kI32, o.token_major}, EngineCase{DType::kI64, o.aligned}}) {
      if (world.rank() == 0) printEngineCase(rowTransport(group), world.size(), c);
      checkDispatchCombineOnRank(group, c, stream);
    }
  });
}

GPU_TEST(fp8_dispatch_cuda_tensors_one_process_per_rank) {
  World& world = *launched().world;
  const CaseOptions o = caseOptions(5);
  onStream([&](cudaStream_t stream) {
    Group group = Group::create(world, fp8GroupConfig(testTransport()));
    for (const DispatchOptions& options : {o.capped, o.token_major, o.sync_free}) {
      checkFp8DispatchOnRank(group, options, stream);
    }
  });
}

}  // namespace
}  // namespace moecomm::gputest

int main(int argc, char** argv) {
  // Before joining: a rank that skips would leave its peers waiting on it.
  if (!moecomm::gputest::gpuUsable()) return 77;
  moecomm::testing::LaunchedWorld& launched = moecomm::gputest::launched();
  if (!launched.join(&argc, &argv)) return 2;
  if (!launched.world) {
    std::printf(
        "SKIP: one process per rank: start this program under scripts/moecomm-launch "
        "(MOECOMM_TEST_PROCESSES=env) or mpirun (MOECOMM_TEST_PROCESSES=mpi)\n");
    return 77;
  }
  const int rank = launched.world->rank();
  const int rc = moecomm::gputest::runAll(argc, argv);
  if (rc == 1) std::fprintf(stderr, "rank %d: GPU test cases failed\n", rank);
  launched.leave();
  return rc;
}
