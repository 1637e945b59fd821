#include "src/core/status.hpp"

#include "src/core/log.hpp"

namespace moecomm {

const char* statusString(StatusCode code) noexcept {
  switch (code) {
    case StatusCode::kSuccess:
      return "success";
    case StatusCode::kInvalidArgument:
      return "invalid argument";
    case StatusCode::kInvalidUsage:
      return "invalid usage";
    case StatusCode::kSystemError:
      return "system error";
    case StatusCode::kInternalError:
      return "internal error";
    case StatusCode::kRemoteError:
      return "remote error";
    case StatusCode::kTimeout:
      return "timeout";
    case StatusCode::kInProgress:
      return "in progress";
  }
  return "unknown status";
}

Error::Error(StatusCode code, const std::string& message)
    : std::runtime_error(std::string("moecomm: ") + statusString(code) + ": " + message),
      code_(code) {}

void throwIfError(const Status& status) {
  if (status.isOk()) return;
  MOECOMM_LOG(LogLevel::kWarn, "{}: {}", statusString(status.code()), status.message());
  throw Error(status.code(), status.message());
}

}  // namespace moecomm
