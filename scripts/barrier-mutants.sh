#!/usr/bin/env bash
# Which barriers of kernels/cuda the emulated GPU tests depend on: deletes each __syncthreads()
# and __syncwarp() in turn, rebuilds the emulated programs and runs them, and prints "caught by
# <program>: <first failing case>" or "missed" for each. A missed barrier is either not needed or
# ordered in the emulation by something a GPU does not promise (docs/cuda.md). Every file is put
# back as it was, also on Ctrl-C. About 3 minutes a barrier on two cores.
# usage: scripts/barrier-mutants.sh [BUILD_DIR (default build)] [kernel sources...]
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shift || true
sources=("$@")
[ ${#sources[@]} -eq 0 ] && sources=(kernels/cuda/*.cu)
programs=(kernels engine layer)
targets=(emulated_test_gpu_kernels emulated_test_gpu_engine emulated_test_gpu_layer)
tmp=$(mktemp -d)
current=""
restore() { [ -n "$current" ] && cp "$tmp/original" "$current"; current=""; }
trap 'restore; rm -rf "$tmp"; exit 130' INT TERM
if ! ninja -C "$build" "${targets[@]}" > "$tmp/build.log" 2>&1; then
  echo "the emulated programs do not build in $build (configure with -DMOECOMM_BUILD_TESTS=ON)"
  exit 2
fi
while IFS=: read -r file line _; do
  cp "$file" "$tmp/original"
  current=$file
  sed -i "${line}d" "$file"
  verdict="missed"
  if ! ninja -C "$build" "${targets[@]}" > "$tmp/build.log" 2>&1; then
    verdict="does not build without it"
  else
    for p in "${programs[@]}"; do
      if ! timeout 400 "$build/tests/emulated/emulated_test_gpu_$p" > "$tmp/run.log" 2>&1; then
        verdict="caught by $p: $(grep -m1 '^\[ FAIL \]' "$tmp/run.log" || echo "exit status, no failing case")"
        break
      fi
    done
  fi
  restore
  echo "$file:$line $verdict"
done < <(grep -H -n "__syncthreads();\|__syncwarp();" "${sources[@]}")
ninja -C "$build" "${targets[@]}" > /dev/null 2>&1
rm -rf "$tmp"
