// Environment configuration, read the UCX/NCCL way: MOECOMM_<NAME>, read once where it is used.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace moecomm {

std::optional<std::string> envString(const char* name);
// Returns fallback when unset; a value that is not an integer is reported at warn level and
// ignored.
int64_t envInt(const char* name, int64_t fallback);

// MOECOMM_TIMEOUT_MS, or 300000 (5 minutes) when unset.
int64_t defaultTimeoutMs();

}  // namespace moecomm
