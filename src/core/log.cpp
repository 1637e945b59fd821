#include "src/core/log.hpp"

#include <unistd.h>

#include <strings.h>
#include <cstdio>
#include <functional>
#include <mutex>
#include <thread>

#include "src/core/env.hpp"

namespace moecomm {

namespace {
LogLevel parseLevel() {
  auto value = envString("MOECOMM_LOG_LEVEL");
  if (!value) return LogLevel::kWarn;
  const char* names[] = {"error", "warn", "info", "debug", "trace"};
  for (int i = 0; i < 5; ++i) {
    if (strcasecmp(value->c_str(), names[i]) == 0) return static_cast<LogLevel>(i);
  }
  std::fprintf(stderr,
               "MOECOMM WARN MOECOMM_LOG_LEVEL='%s' is not one of error, warn, info, "
               "debug, trace; using warn\n",
               value->c_str());
  return LogLevel::kWarn;
}
}  // namespace

LogLevel logLevel() {
  static const LogLevel level = parseLevel();
  return level;
}

void logWrite(LogLevel level, const std::string& message) {
  static const char* names[] = {"ERROR", "WARN", "INFO", "DEBUG", "TRACE"};
  static std::mutex mutex;
  char host[64] = "?";
  gethostname(host, sizeof(host) - 1);
  size_t tid = std::hash<std::thread::id>{}(std::this_thread::get_id()) % 100000;
  std::lock_guard<std::mutex> lock(mutex);
  std::fprintf(stderr, "%s:%d:%zu MOECOMM %s %s\n", host, static_cast<int>(getpid()), tid,
               names[static_cast<int>(level)], message.c_str());
}

}  // namespace moecomm
