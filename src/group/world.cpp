// World: the process-level bootstraps behind the public API.
#include "src/bootstrap/callback_bootstrap.hpp"
#include "src/bootstrap/store_bootstrap.hpp"
#include "src/core/env.hpp"
#include "src/group/group_impl.hpp"
#ifdef MOECOMM_HAVE_MPI
#include "src/bootstrap/mpi_bootstrap.hpp"
#endif

namespace moecomm {

World World::fromEnv(int64_t timeout_ms) {
  LaunchEnv env;
  throwIfError(readLaunchEnv(&env));
  auto state = std::make_shared<State>();
  state->timeout_ms = timeout_ms > 0 ? timeout_ms : defaultTimeoutMs();
  state->local_rank = env.local_rank;
  std::unique_ptr<Bootstrap> bootstrap;
  throwIfError(StoreBootstrap::create(env, Deadline::afterMs(state->timeout_ms), &bootstrap));
  state->bootstrap = std::move(bootstrap);
  World world;
  world.state_ = std::move(state);
  return world;
}

World World::fromCallbacks(const BootstrapCallbacks& callbacks) {
  std::unique_ptr<Bootstrap> bootstrap;
  throwIfError(CallbackBootstrap::create(callbacks, &bootstrap));
  auto state = std::make_shared<State>();
  state->local_rank = callbacks.rank;
  state->timeout_ms = defaultTimeoutMs();
  state->bootstrap = std::move(bootstrap);
  World world;
  world.state_ = std::move(state);
  return world;
}

World World::fromMpiComm(const void* mpi_comm) {
#ifdef MOECOMM_HAVE_MPI
  if (mpi_comm == nullptr) {
    throw Error(StatusCode::kInvalidArgument, "World::fromMpiComm: the communicator is null");
  }
  std::unique_ptr<Bootstrap> bootstrap;
  throwIfError(MpiBootstrap::create(*static_cast<const MPI_Comm*>(mpi_comm), &bootstrap));
  auto state = std::make_shared<State>();
  state->local_rank = static_cast<int>(
      envInt("OMPI_COMM_WORLD_LOCAL_RANK", envInt("SLURM_LOCALID", bootstrap->rank())));
  state->timeout_ms = defaultTimeoutMs();
  state->bootstrap = std::move(bootstrap);
  World world;
  world.state_ = std::move(state);
  return world;
#else
  (void)mpi_comm;
  throw Error(StatusCode::kInvalidUsage,
              "this moecomm was built without MPI; rebuild with MOECOMM_WITH_MPI=ON or use "
              "World::fromEnv");
#endif
}

int World::rank() const noexcept {
  return state_ ? state_->bootstrap->rank() : -1;
}
int World::size() const noexcept {
  return state_ ? state_->bootstrap->size() : 0;
}
int World::localRank() const noexcept {
  return state_ ? state_->local_rank : -1;
}
const char* World::kind() const noexcept {
  return state_ ? state_->bootstrap->kind() : "none";
}

}  // namespace moecomm
