#!/usr/bin/env bash
# Every C/C++ source follows the checked-in .clang-format.
set -euo pipefail
cd "${1:-.}"
if ! command -v clang-format >/dev/null; then
  echo "clang-format not installed; run scripts/install-deps.sh" >&2
  exit 1
fi
files=$(git ls-files '*.cpp' '*.hpp' '*.h' '*.c' '*.cu' '*.cuh' 2>/dev/null || \
        find include src transport kernels tests examples perf -name '*.[ch]pp' -o -name '*.[ch]')
clang-format --dry-run --Werror $files
echo "format: OK ($(echo "$files" | wc -w) files)"
