# moecomm's build switches. Backends take AUTO (on when found), ON (required) or OFF.
set(MOECOMM_BACKEND_VALUES AUTO ON OFF)
foreach(backend CUDA NCCL UCX MPI)
  set(MOECOMM_WITH_${backend} AUTO CACHE STRING "Build the ${backend} backend: AUTO, ON or OFF")
  set_property(CACHE MOECOMM_WITH_${backend} PROPERTY STRINGS ${MOECOMM_BACKEND_VALUES})
endforeach()
option(MOECOMM_BUILD_TESTS "Build the tests" ${PROJECT_IS_TOP_LEVEL})
option(MOECOMM_BUILD_PERF "Build the benchmarks" ${PROJECT_IS_TOP_LEVEL})
option(MOECOMM_BUILD_EXAMPLES "Build the examples" ${PROJECT_IS_TOP_LEVEL})
option(MOECOMM_WARNINGS_AS_ERRORS "Treat compiler warnings as errors" ON)
option(MOECOMM_EMULATED_GPU_TESTS "With CUDA and the tests: also run the GPU tests on a CPU emulation of CUDA" ON)
option(MOECOMM_ENABLE_ASAN "Build with AddressSanitizer" OFF)
option(MOECOMM_ENABLE_UBSAN "Build with UndefinedBehaviorSanitizer" OFF)
option(MOECOMM_ENABLE_TSAN "Build with ThreadSanitizer" OFF)

# Resolves an AUTO/ON/OFF switch against whether the dependency was found.
function(moecomm_resolve_backend name found)
  set(value ${MOECOMM_WITH_${name}})
  if(value STREQUAL "ON" AND NOT ${found})
    message(FATAL_ERROR "MOECOMM_WITH_${name}=ON but ${name} was not found")
  endif()
  if(value STREQUAL "OFF" OR NOT ${found})
    set(MOECOMM_HAVE_${name} OFF PARENT_SCOPE)
  else()
    set(MOECOMM_HAVE_${name} ON PARENT_SCOPE)
  endif()
endfunction()

function(moecomm_set_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
      -Wcast-align -Woverloaded-virtual -Wimplicit-fallthrough>)
  # nvcc: its own warnings and the host compiler's, for device code as for host code.
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra --Wreorder --Wext-lambda-captures-this>)
  if(MOECOMM_WARNINGS_AS_ERRORS)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>
                                             $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>)
  endif()
endfunction()

set(MOECOMM_SANITIZER_FLAGS "")
if(MOECOMM_ENABLE_ASAN)
  list(APPEND MOECOMM_SANITIZER_FLAGS -fsanitize=address -fno-omit-frame-pointer)
endif()
if(MOECOMM_ENABLE_UBSAN)
  list(APPEND MOECOMM_SANITIZER_FLAGS -fsanitize=undefined -fno-sanitize-recover=undefined)
endif()
if(MOECOMM_ENABLE_TSAN)
  list(APPEND MOECOMM_SANITIZER_FLAGS -fsanitize=thread)
endif()
if(MOECOMM_SANITIZER_FLAGS)
  # Host code only: nvcc does not take these flags.
  add_compile_options("$<$<COMPILE_LANGUAGE:C,CXX>:${MOECOMM_SANITIZER_FLAGS}>")
  add_link_options(${MOECOMM_SANITIZER_FLAGS})
endif()
