#!/usr/bin/env bash
# The GPU check: one command for a machine with one NVIDIA H100 or H200, the CUDA toolkit, CMake
# and Python with PyTorch, and nothing else (no apt, no internet, no MPI, no UCX). It builds the
# CUDA kernels for sm_90 with every core, runs the GPU tests and the GPU benchmarks (each beside
# its baseline), and prints a summary table last. Under 8 minutes on an H100.
#
# Every step runs under its own time limit and the script goes on after a failure, so one broken
# step still leaves the others' results. Exit status: 0 when every step passed.
# MOECOMM_GPU_CHECK_DIR (default build-gpu) holds the build and the logs.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dir=${MOECOMM_GPU_CHECK_DIR:-build-gpu}
logs="$dir/logs"
mkdir -p "$logs"
started=$(date +%s)
declare -a step_names=() step_results=()

step() {  # name, time limit in seconds, command...
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  echo "== $name"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$logs/$name.log"
  local rc=${PIPESTATUS[0]}
  local verdict="passed"
  if [ "$rc" -eq 77 ]; then verdict="skipped (no usable GPU)"; fi
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then verdict="TIMED OUT after ${limit}s"; fi
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && [ "$verdict" = "passed" ]; then verdict="FAILED (exit $rc)"; fi
  step_names+=("$name")
  step_results+=("$verdict, $(( $(date +%s) - t0 ))s")
}

# The toolkit: nvcc on PATH or in /usr/local/cuda; CMake from PATH or Python's cmake package.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
if ! command -v cmake >/dev/null 2>&1; then
  cmake_bin=$(python3 -c 'import cmake, os; print(cmake.CMAKE_BIN_DIR)' 2>/dev/null || true)
  [ -n "$cmake_bin" ] && export PATH=$cmake_bin:$PATH
fi
export CUDACXX=${CUDACXX:-$(command -v nvcc || true)}
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
# NCCL for the nccl transport: the toolkit's or the system's, or the one inside Python's
# nvidia-nccl package.
nccl_dir=""
for candidate in /usr/local/cuda /usr; do
  [ -f "$candidate/include/nccl.h" ] && nccl_dir=$candidate && break
done
if [ -z "$nccl_dir" ]; then
  # nvidia/nccl is a namespace package (no __init__.py, so no __file__): take its __path__.
  nccl_dir=$(python3 -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null ||
             true)
  [ -n "$nccl_dir" ] && [ ! -f "$nccl_dir/include/nccl.h" ] && nccl_dir=""
fi

# fmt for the engine's messages where the C++ library has no std::format (g++ 12 or older): the
# headers PyTorch's wheel carries, used header-only (cmake/Format.cmake).
fmt_dir=$(python3 -c 'import importlib.util as u, os
print(os.path.join(os.path.dirname(u.find_spec("torch").origin), "include"))' 2>/dev/null || true)
[ -n "$fmt_dir" ] && [ ! -f "$fmt_dir/fmt/format.h" ] && fmt_dir=""

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
echo "nvcc: $(nvcc --version 2>/dev/null | tail -1)"
echo "cmake: $(cmake --version 2>/dev/null | head -1)"
echo "c++: $(c++ --version 2>/dev/null | head -1)"
echo "nccl: ${nccl_dir:-not found}"
echo "fmt headers (used only without std::format): ${fmt_dir:-not found}"
echo "cores: $(nproc)"

step configure 120 cmake -S "$root" -B "$dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DMOECOMM_WITH_CUDA=ON -DMOECOMM_WITH_MPI=OFF \
  -DMOECOMM_WITH_UCX=OFF -DMOECOMM_WARNINGS_AS_ERRORS=OFF -DMOECOMM_BUILD_EXAMPLES=OFF \
  -DMOECOMM_EMULATED_GPU_TESTS=OFF \
  ${nccl_dir:+-DMOECOMM_NCCL_ROOT="$nccl_dir"} ${fmt_dir:+-DMOECOMM_FMT_INCLUDE_DIR="$fmt_dir"}
# Two builds, so that a failure in the engine's build still leaves the kernels' tests to run.
step build 300 cmake --build "$dir" -j "$(nproc)" --target test_gpu_kernels bench_gpu_kernels
step build-engine 300 cmake --build "$dir" -j "$(nproc)" --target test_gpu_engine test_gpu_layer \
  bench_gpu_engine
step gpu-tests 180 "$dir/tests/gpu/test_gpu_kernels"
step gpu-engine 240 "$dir/tests/gpu/test_gpu_engine"
step gpu-layer 120 "$dir/tests/gpu/test_gpu_layer"
# The engine and layer cases again with every call tensor from the stream-ordered pool.
step gpu-engine-pool 240 env MOECOMM_CUDA_ALLOCATOR=stream "$dir/tests/gpu/test_gpu_engine" \
  dispatch_combine
step gpu-layer-pool 120 env MOECOMM_CUDA_ALLOCATOR=stream "$dir/tests/gpu/test_gpu_layer"
step gpu-bench 180 "$dir/perf/gpu/bench_gpu_kernels" "$dir/router_logits.bin"
step engine-bench 180 "$dir/perf/gpu/bench_gpu_engine"
step torch-router 120 python3 "$root/perf/gpu/torch_router_baseline.py" "$dir/router_logits.bin"

echo
echo "== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), $(date -u +%Y-%m-%d))"
printf '%-16s %s\n' step result
for i in "${!step_names[@]}"; do printf '%-16s %s\n' "${step_names[$i]}" "${step_results[$i]}"; done
echo
tests=("$logs/gpu-tests.log" "$logs/gpu-engine.log" "$logs/gpu-layer.log" "$logs/gpu-engine-pool.log"
       "$logs/gpu-layer-pool.log")
grep -h -A1 '^\[ FAIL \]' "${tests[@]}" 2>/dev/null || true
grep -h 'GPU test cases passed' "${tests[@]}" 2>/dev/null || true
grep -h '^RESULT' "$logs/gpu-bench.log" "$logs/engine-bench.log" 2>/dev/null | sed 's/^RESULT //' || true
# The router against PyTorch's softmax + topk on the same logits (target: 3x faster).
for shape in 4096 65536; do
  ours=$(grep -h "^RESULT router softmax top-8 T=$shape " "$logs/gpu-bench.log" 2>/dev/null |
         awk '{for (i = 1; i <= NF; ++i) if ($i == "us") print $(i - 1)}')
  torch=$(grep -h "^TORCH router softmax+topk T=$shape " "$logs/torch-router.log" 2>/dev/null |
          awk '{print $(NF - 1)}')
  if [ -n "$ours" ] && [ -n "$torch" ]; then
    awk -v o="$ours" -v t="$torch" -v s="$shape" 'BEGIN {
      r = t / o; printf "router vs torch softmax+topk T=%s: %.1f us vs %.1f us, %.2fx faster (target 3x) %s\n",
      s, o, t, r, (r >= 3 ? "MET" : "MISSED") }'
  fi
done
elapsed=$(( $(date +%s) - started ))
echo "gpu-check took ${elapsed}s"
for r in "${step_results[@]}"; do
  case "$r" in passed*) ;; *) exit 1 ;; esac
done
exit 0
