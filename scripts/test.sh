#!/usr/bin/env bash
# Every test: install what is missing, build with warnings as errors, run the whole ctest suite,
# then again under AddressSanitizer+UndefinedBehaviorSanitizer and under ThreadSanitizer (the
# ranks are threads, so data races are the bug class that matters most).
# MOECOMM_TEST_SANITIZERS=0 skips the sanitizer passes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
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
      -DMOECOMM_ENABLE_UBSAN=ON
  echo "== ThreadSanitizer"
  # UCX's memory hooks (libucm patches madvise at load) crash under TSan when a thread exits;
  # these turn them off for the TSan pass (the build runs the test binaries to list their tests).
  TSAN_OPTIONS=halt_on_error=1 UCX_MEM_MMAP_HOOK_MODE=none UCX_MEM_EVENTS=no \
    run_suite build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOECOMM_ENABLE_TSAN=ON
fi
echo "== all test passes finished"
