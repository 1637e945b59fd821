// The main of every test binary: plain gtest, or one rank of a launched World when
// MOECOMM_TEST_PROCESSES is "env" (torchrun-style variables) or "mpi" (mpirun).
#include <gtest/gtest.h>

#include <cstring>

#include "common/launched_world.hpp"
#include "common/rank_runner.hpp"

namespace moecomm::testing {
LaunchedWorld& launchedWorld() {
  static LaunchedWorld launched;
  return launched;
}
std::optional<World>& processWorld() {
  return launchedWorld().world;
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
  moecomm::testing::LaunchedWorld& launched = moecomm::testing::launchedWorld();
  if (!launched.join(&argc, &argv)) return 2;
  const auto& world = launched.world;
  if (world && world->rank() != 0) {
    // One rank reports the run; the others report only their failures.
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(world->rank()));
  }
  const int rc = RUN_ALL_TESTS();
  if (rc != 0 && world) std::fprintf(stderr, "rank %d: tests failed\n", world->rank());
  launched.leave();
  return rc;
}
