#include "perf/cli/perf_world.hpp"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <thread>

#include "src/group/group_impl.hpp"
#ifdef MOECOMM_HAVE_MPI
#include <moecomm/mpi.hpp>
#endif

namespace moecomm::perf {

const char* RankContext::launch() const {
  if (local_ != nullptr) return "threads";
  return mpi_ ? "mpi" : "env";
}

Group RankContext::makeGroup(const GroupConfig& config) {
  if (local_ != nullptr) return Group::create(*local_, rank_, config);
  return Group::create(*world_, config);
}

std::vector<double> RankContext::gather(Group& group, const std::vector<double>& mine) {
  std::vector<double> all(mine.size() * static_cast<size_t>(group.size()));
  Group::Impl& impl = group.impl();
  throwIfError(impl.bootstrap->allGather(mine.data(), all.data(), mine.size() * sizeof(double),
                                         impl.deadline()));
  return all;
}

std::string hostName() {
  char host[64] = {};
  gethostname(host, sizeof(host) - 1);
  return host;
}

namespace {

bool launchedByMpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"}) {
    if (std::getenv(v) != nullptr) return true;
  }
  return false;
}

int runThreads(int n, const std::function<int(RankContext&)>& body) {
  LocalWorld world(n);
  std::vector<int> codes(static_cast<size_t>(n), 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        RankContext context(&world, nullptr, r, n, false);
        codes[r] = body(context);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "moecomm-perf: rank %d: %s\n", r, e.what());
        codes[r] = 1;
      }
    });
  }
  for (auto& t : threads) t.join();
  int worst = 0;
  for (int c : codes) worst = std::max(worst, c);
  return worst;
}

}  // namespace

int runOnRanks(const CommonOptions& options, const std::function<int(RankContext&)>& body) {
  if (options.threads > 0) return runThreads(options.threads, body);
  if (launchedByMpi()) {
#ifdef MOECOMM_HAVE_MPI
    MPI_Init(nullptr, nullptr);
    int code = 0;
    {
      World world = worldFromMpi(MPI_COMM_WORLD);
      try {
        RankContext context(nullptr, &world, world.rank(), world.size(), true);
        code = body(context);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "moecomm-perf: rank %d: %s\n", world.rank(), e.what());
        code = 1;
      }
    }
    MPI_Finalize();
    return code;
#else
    std::fprintf(stderr, "moecomm-perf: started by mpirun, but built without MPI\n");
    return 2;
#endif
  }
  if (std::getenv("WORLD_SIZE") != nullptr || std::getenv("MOECOMM_WORLD_SIZE") != nullptr) {
    World world = World::fromEnv(static_cast<int64_t>(options.timeout_s * 1000));
    try {
      RankContext context(nullptr, &world, world.rank(), world.size(), false);
      return body(context);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "moecomm-perf: rank %d: %s\n", world.rank(), e.what());
      return 1;
    }
  }
  return runThreads(1, body);
}

}  // namespace moecomm::perf
