// The main of every test binary: plain gtest, or one rank of a launched World when
// MOECOMM_TEST_PROCESSES is "env" (torchrun-style variables) or "mpi" (mpirun).
#include <gtest/gtest.h>

#include <cstring>

#include "common/rank_runner.hpp"
#ifdef MOECOMM_TEST_WITH_MPI
#include <moecomm/mpi.hpp>
#endif

namespace moecomm::testing {
std::optional<World>& processWorld() {
  static std::optional<World> world;
  return world;
}
}  // namespace moecomm::testing

namespace {
// Ranks other than 0 print only their failures, tagged with the rank.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.summary());
  }

 private:
  int rank_;
};
}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const char* mode = std::getenv("MOECOMM_TEST_PROCESSES");
  const bool use_mpi = mode != nullptr && std::strcmp(mode, "mpi") == 0;
  auto& world = moecomm::testing::processWorld();
  try {
    if (mode != nullptr && std::strcmp(mode, "env") == 0) {
      world = moecomm::World::fromEnv();
    } else if (use_mpi) {
#ifdef MOECOMM_TEST_WITH_MPI
      MPI_Init(&argc, &argv);
      world = moecomm::worldFromMpi(MPI_COMM_WORLD);
#else
      std::fprintf(stderr, "MOECOMM_TEST_PROCESSES=mpi but the tests were built without MPI\n");
      return 2;
#endif
    } else if (mode != nullptr && *mode != '\0') {
      std::fprintf(stderr, "MOECOMM_TEST_PROCESSES=%s: expected env or mpi\n", mode);
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cannot join the launched world: %s\n", e.what());
    return 2;
  }
  if (world && world->rank() != 0) {
    // One rank reports the run; the others report only their failures.
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(world->rank()));
  }
  const int rc = RUN_ALL_TESTS();
  if (rc != 0 && world) std::fprintf(stderr, "rank %d: tests failed\n", world->rank());
  world.reset();
#ifdef MOECOMM_TEST_WITH_MPI
  if (use_mpi) MPI_Finalize();
#endif
  return rc;
}
