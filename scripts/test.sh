#!/usr/bin/env bash
# Every test: install what is missing, build with warnings as errors, run the whole ctest suite,
# then again under AddressSanitizer+UndefinedBehaviorSanitizer and under ThreadSanitizer (the
# ranks are threads, so data races are the bug class that matters most).
# MOECOMM_TEST_SANITIZERS=0 skips the sanitizer passes. The Release pass compiles every CUDA
# source (warnings as errors) when nvcc is present; its GPU tests skip without a GPU. The
# sanitizer passes leave CUDA out: host sanitizers do not apply to device code.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# The CUDA toolkit's usual home, when its nvcc is not on PATH.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
jobs=$(nproc)

run_suite() {  # build-dir, extra cmake args...
  local dir=$1
  shift
  cmake -S . -B "$dir" -G Ninja -DMOECOMM_WARNINGS_AS_ERRORS=ON -DMOECOMM_BUILD_TESTS=ON "$@"
  cmake --build "$dir" -j "$jobs"
  (cd "$dir" && ctest -j "$jobs" --output-on-failure --timeout 300)
}

echo "== Release build, all tests"
run_suite build-test -DCMAKE_BUILD_TYPE=Release
if [ "${MOECOMM_TEST_SANITIZERS:-1}" != "0" ]; then
  echo "== AddressSanitizer + UndefinedBehaviorSanitizer"
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    run_suite build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOECOMM_ENABLE_ASAN=ON \
      -DMOECOMM_ENABLE_UBSAN=ON -DMOECOMM_WITH_CUDA=OFF
  echo "== ThreadSanitizer"
  # UCX's memory hooks (libucm patches madvise at load) crash under TSan when a thread exits;
  # these turn them off for the TSan pass (the build runs the test binaries to list their tests).
  TSAN_OPTIONS=halt_on_error=1 UCX_MEM_MMAP_HOOK_MODE=none UCX_MEM_EVENTS=no \
    run_suite build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOECOMM_ENABLE_TSAN=ON \
      -DMOECOMM_WITH_CUDA=OFF
fi
echo "== all test passes finished"
