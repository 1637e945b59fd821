// Logging in NCCL's shape: "host:pid:tid MOECOMM LEVEL message" on stderr, filtered by
// MOECOMM_LOG_LEVEL (error, warn, info, debug, trace; default warn).
#pragma once

#include "src/core/format.hpp"

#include <string>

namespace moecomm {

enum class LogLevel : int { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3, kTrace = 4 };

LogLevel logLevel();
void logWrite(LogLevel level, const std::string& message);

}  // namespace moecomm

#define MOECOMM_LOG(level, ...)                                             \
  do {                                                                      \
    if (static_cast<int>(level) <= static_cast<int>(::moecomm::logLevel())) \
      ::moecomm::logWrite(level, ::moecomm::text::format(__VA_ARGS__));     \
  } while (0)
