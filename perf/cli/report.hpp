// What moecomm-perf prints and writes: nccl-tests-style text on stdout (rank 0), a progress line on
// stderr when it is a terminal, and the JSON file.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <string>

namespace moecomm::perf {

// "\r[3/13] ..." on stderr while a sweep runs, only when stderr is a terminal.
class Progress {
 public:
  explicit Progress(bool enabled);
  void update(size_t done, size_t total, const std::string& what);
  ~Progress();

 private:
  bool enabled_;
};

// The environment worth recording with results: MOECOMM_*, UCX_*, OMPI_* and a few others.
nlohmann::json environmentJson();

// Writes `doc` to `path`; false (and a message on stderr) when it cannot.
bool writeJson(const std::string& path, const nlohmann::json& doc);

// Minimum average bus bandwidth from MOECOMM_PERF_MIN_BW (GB/s), or 0 when unset.
double minimumBandwidth();

}  // namespace moecomm::perf
