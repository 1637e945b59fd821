// The World of a test program started once per rank: by scripts/moecomm-launch
// (MOECOMM_TEST_PROCESSES=env, torchrun's variables) or by mpirun (=mpi). Shared by the gtest main
// and the GPU tests' launched program; an includer that may run under mpirun defines
// MOECOMM_TEST_WITH_MPI and links MPI.
#pragma once

#include <moecomm/moecomm.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#ifdef MOECOMM_TEST_WITH_MPI
#include <moecomm/mpi.hpp>
#endif

namespace moecomm::testing {

struct LaunchedWorld {
  std::optional<World> world;  // empty when the program was not launched per rank
  bool mpi = false;            // MPI_Init ran, so leave() finalizes

  // Joins the world MOECOMM_TEST_PROCESSES names. Returns false, having said why, when that
  // fails or names no launcher moecomm knows.
  bool join(int* argc, char*** argv) {
    const char* mode = std::getenv("MOECOMM_TEST_PROCESSES");
    try {
      if (mode == nullptr || *mode == '\0') return true;
      if (std::strcmp(mode, "env") == 0) {
        world = World::fromEnv();
        return true;
      }
      if (std::strcmp(mode, "mpi") == 0) {
#ifdef MOECOMM_TEST_WITH_MPI
        MPI_Init(argc, argv);
        mpi = true;
        world = worldFromMpi(MPI_COMM_WORLD);
        return true;
#else
        (void)argc;
        (void)argv;
        std::fprintf(stderr, "MOECOMM_TEST_PROCESSES=mpi but this program was built without MPI\n");
        return false;
#endif
      }
      std::fprintf(stderr, "MOECOMM_TEST_PROCESSES=%s: expected env or mpi\n", mode);
      return false;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "cannot join the launched world: %s\n", e.what());
      return false;
    }
  }

  void leave() {
    world.reset();
#ifdef MOECOMM_TEST_WITH_MPI
    if (mpi) MPI_Finalize();
#endif
    mpi = false;
  }
};

}  // namespace moecomm::testing
