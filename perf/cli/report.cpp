#include "perf/cli/report.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

extern char** environ;

namespace moecomm::perf {

Progress::Progress(bool enabled) : enabled_(enabled && isatty(STDERR_FILENO)) {}

void Progress::update(size_t done, size_t total, const std::string& what) {
  if (!enabled_) return;
  std::fprintf(stderr, "\r\033[K[%zu/%zu] %s", done, total, what.c_str());
  std::fflush(stderr);
}

Progress::~Progress() {
  if (enabled_) std::fprintf(stderr, "\r\033[K");
}

nlohmann::json environmentJson() {
  nlohmann::json env = nlohmann::json::object();
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    const size_t eq = entry.find('=');
    const std::string name = entry.substr(0, eq);
    for (const char* prefix : {"MOECOMM_", "UCX_", "OMPI_COMM_WORLD_SIZE", "WORLD_SIZE",
                               "MASTER_ADDR", "SLURM_NTASKS", "OPENBLAS_NUM_THREADS"}) {
      if (name.rfind(prefix, 0) == 0)
        env[name] = eq == std::string::npos ? "" : entry.substr(eq + 1);
    }
  }
  return env;
}

bool writeJson(const std::string& path, const nlohmann::json& doc) {
  std::ofstream out(path);
  if (!out) {
    std::fprintf(stderr, "moecomm-perf: cannot write %s\n", path.c_str());
    return false;
  }
  out << doc.dump(2) << "\n";
  return static_cast<bool>(out);
}

double minimumBandwidth() {
  const char* v = std::getenv("MOECOMM_PERF_MIN_BW");
  return v != nullptr ? std::atof(v) : 0.0;
}

}  // namespace moecomm::perf
