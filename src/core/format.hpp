// String formatting for messages: fmt where the build found it, std::format otherwise (a GPU
// machine with only the CUDA toolkit and a C++20 library). The same format strings work in both.
#pragma once

#if defined(MOECOMM_STD_FORMAT)
#include <format>
#else
#include <fmt/format.h>
#endif

namespace moecomm::text {

#if defined(MOECOMM_STD_FORMAT)
using std::format;
template <typename... Args>
using format_string = std::format_string<Args...>;
#else
using ::fmt::format;
template <typename... Args>
using format_string = ::fmt::format_string<Args...>;
#endif

}  // namespace moecomm::text
