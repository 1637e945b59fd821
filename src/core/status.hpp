// The status every internal function returns. Holds a code and a message that names what was
// wrong, where, and what to do; the C++ API edge turns it into moecomm::Error.
#pragma once

#include "src/core/format.hpp"

#include <string>
#include <utility>

#include "moecomm/error.hpp"

namespace moecomm {

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return {}; }
  bool isOk() const noexcept { return code_ == StatusCode::kSuccess; }
  StatusCode code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }

 private:
  StatusCode code_ = StatusCode::kSuccess;
  std::string message_;
};

template <typename... Args>
Status makeError(StatusCode code, text::format_string<Args...> format, Args&&... args) {
  return Status(code, text::format(format, std::forward<Args>(args)...));
}

// The C++ API edge: throws moecomm::Error for a failed status.
void throwIfError(const Status& status);

}  // namespace moecomm

#define MOECOMM_RETURN_IF_ERROR(expr)                    \
  do {                                                   \
    ::moecomm::Status moecomm_status_ = (expr);          \
    if (!moecomm_status_.isOk()) return moecomm_status_; \
  } while (0)
