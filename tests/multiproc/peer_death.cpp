// One rank of a launched world dies by SIGKILL between two dispatches. Every survivor's next
// dispatch must fail, naming the dead rank, within the group's deadline plus a second, and the
// survivor must then shut down cleanly. Run by peer_death.sh, which checks the exit codes.
#include <moecomm/moecomm.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  const int victim = argc > 1 ? std::atoi(argv[1]) : 2;
  const int64_t timeout_ms = 3000;
  moecomm::World world = moecomm::World::fromEnv();
  const int rank = world.rank();
  moecomm::Group group =
      moecomm::Group::create(world, {2 * world.size(), 16, moecomm::DType::kF32, 2, timeout_ms});
  moecomm::Dispatcher dispatcher(group);
  const int64_t tokens = 8;
  std::vector<float> x(tokens * 16, 1.0f), w(tokens * 2, 0.5f);
  std::vector<int32_t> idx(tokens * 2);
  for (int64_t t = 0; t < tokens; ++t) {
    idx[t * 2] = static_cast<int32_t>(t % (2 * world.size()));
    idx[t * 2 + 1] = static_cast<int32_t>((t + 3) % (2 * world.size()));
  }
  auto dispatch = [&] {
    return dispatcher.dispatch(
        moecomm::TensorView::matrix(x.data(), moecomm::DType::kF32, tokens, 16),
        moecomm::TensorView::matrix(idx.data(), moecomm::DType::kI32, tokens, 2),
        moecomm::TensorView::matrix(w.data(), moecomm::DType::kF32, tokens, 2));
  };
  for (int round = 0; round < 3; ++round) {
    moecomm::ExpertBatch batch = dispatch();
    dispatcher.combine(batch.x, batch.handle);
  }
  if (rank == victim) kill(getpid(), SIGKILL);

  const auto start = std::chrono::steady_clock::now();
  try {
    dispatch();
    std::fprintf(stderr, "rank %d: dispatch succeeded although rank %d is dead\n", rank, victim);
    return 1;
  } catch (const moecomm::Error& e) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - start)
                        .count();
    const std::string what = e.what();
    const bool named = what.find("rank " + std::to_string(victim)) != std::string::npos ||
                       what.find("rank(s) " + std::to_string(victim)) != std::string::npos;
    const bool kind =
        e.code() == moecomm::StatusCode::kRemoteError || e.code() == moecomm::StatusCode::kTimeout;
    std::printf("rank %d: failed after %lld ms (%s): %s\n", rank, static_cast<long long>(ms),
                moecomm::statusString(e.code()), e.what());
    if (!named || !kind || ms > timeout_ms + 1000) {
      std::fprintf(stderr, "rank %d: wrong failure: named=%d kind=%d %lld ms\n", rank, named, kind,
                   static_cast<long long>(ms));
      return 1;
    }
  }
  return 0;  // the group and world shut down here; the script bounds how long that takes
}
