// Status codes and the exception the C++ API throws. Inside the library everything returns a
// status; the C++ edge turns a failed status into moecomm::Error, the C ABI returns the code.
#pragma once

#include <stdexcept>
#include <string>

#include "moecomm/export.hpp"

namespace moecomm {

// Mirrors ncclResult_t's meanings so NCCL users read them without a table.
enum class StatusCode : int {
  kSuccess = 0,
  kInvalidArgument = 1,  // a value passed in is wrong (shape, dtype, range, null data)
  kInvalidUsage = 2,     // calls in the wrong order or on the wrong object
  kSystemError = 3,      // the OS or a library below failed (allocation, sockets)
  kInternalError = 4,    // a bug in moecomm: please report it
  kRemoteError = 5,      // another rank failed or disagreed; its message says why
  kTimeout = 6,          // a deadline passed; the message names the ranks that did not answer
  kInProgress = 7,       // a non-blocking operation has not finished yet
};

MOECOMM_API const char* statusString(StatusCode code) noexcept;

class MOECOMM_API Error : public std::runtime_error {
 public:
  Error(StatusCode code, const std::string& message);
  StatusCode code() const noexcept { return code_; }

 private:
  StatusCode code_;
};

}  // namespace moecomm
