# How messages are formatted: the target moecomm_format carries one of three ways, tried in this
# order, so that the GPU check builds on a machine with only the CUDA toolkit and PyTorch:
#   1. fmt's package (Debian: libfmt-dev);
#   2. std::format, where the C++ library has it (g++ 13, libc++ 17);
#   3. fmt's headers alone, header-only, from MOECOMM_FMT_INCLUDE_DIR (the folder holding fmt/;
#      scripts/gpu-check.sh points it at the copy inside PyTorch's wheel).
# src/core/format.hpp reads MOECOMM_STD_FORMAT; the same format strings work in all three.
include(CheckCXXSourceCompiles)
set(MOECOMM_FMT_INCLUDE_DIR "" CACHE PATH
    "A folder holding fmt/format.h, used header-only when neither fmt's package nor std::format is found")
add_library(moecomm_format INTERFACE)
find_package(fmt QUIET)
if(fmt_FOUND)
  target_link_libraries(moecomm_format INTERFACE fmt::fmt)
  set(MOECOMM_FORMAT_WAY "fmt ${fmt_VERSION}")
  return()
endif()
check_cxx_source_compiles([[
#include <format>
#include <string>
int main() { return static_cast<int>(std::format("{} {:.2f}", 1, 2.5).size()); }
]] MOECOMM_HAS_STD_FORMAT)
if(MOECOMM_HAS_STD_FORMAT)
  target_compile_definitions(moecomm_format INTERFACE MOECOMM_STD_FORMAT=1)
  set(MOECOMM_FORMAT_WAY "std::format")
  return()
endif()
if(MOECOMM_FMT_INCLUDE_DIR AND EXISTS "${MOECOMM_FMT_INCLUDE_DIR}/fmt/format.h")
  # Only fmt/ goes on the include path, not the rest of the folder (PyTorch's holds much else).
  set(headers "${PROJECT_BINARY_DIR}/fmt-headers")
  file(MAKE_DIRECTORY "${headers}")
  file(CREATE_LINK "${MOECOMM_FMT_INCLUDE_DIR}/fmt" "${headers}/fmt" SYMBOLIC)
  set(CMAKE_REQUIRED_INCLUDES "${headers}")
  set(CMAKE_REQUIRED_DEFINITIONS -DFMT_HEADER_ONLY=1)
  check_cxx_source_compiles([[
#include <fmt/format.h>
int main() { return static_cast<int>(fmt::format("{} {:.2f}", 1, 2.5).size()); }
]] MOECOMM_HAS_HEADER_ONLY_FMT)
  unset(CMAKE_REQUIRED_INCLUDES)
  unset(CMAKE_REQUIRED_DEFINITIONS)
  if(MOECOMM_HAS_HEADER_ONLY_FMT)
    target_include_directories(moecomm_format SYSTEM INTERFACE "${headers}")
    target_compile_definitions(moecomm_format INTERFACE FMT_HEADER_ONLY=1)
    set(MOECOMM_FORMAT_WAY "fmt header-only from ${MOECOMM_FMT_INCLUDE_DIR}")
    return()
  endif()
endif()
message(FATAL_ERROR "moecomm: no way to format messages: fmt was not found (Debian: apt install "
        "libfmt-dev), the C++ library has no std::format (g++ 13 or newer has it), and "
        "MOECOMM_FMT_INCLUDE_DIR ('${MOECOMM_FMT_INCLUDE_DIR}') holds no usable fmt/format.h")
