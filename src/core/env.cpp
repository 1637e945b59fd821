#include "src/core/env.hpp"

#include <cerrno>
#include <cstdlib>

#include "src/core/log.hpp"

namespace moecomm {

std::optional<std::string> envString(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

int64_t envInt(const char* name, int64_t fallback) {
  auto value = envString(name);
  if (!value) return fallback;
  errno = 0;
  char* end = nullptr;
  long long parsed = std::strtoll(value->c_str(), &end, 10);
  if (errno != 0 || end == value->c_str() || *end != '\0') {
    MOECOMM_LOG(LogLevel::kWarn, "{}='{}' is not an integer; using {}", name, *value, fallback);
    return fallback;
  }
  return parsed;
}

int64_t defaultTimeoutMs() {
  static const int64_t value = [] {
    int64_t ms = envInt("MOECOMM_TIMEOUT_MS", 300000);
    return ms > 0 ? ms : 300000;
  }();
  return value;
}

}  // namespace moecomm
