#!/usr/bin/env bash
# The main job: install what is missing, build in Release, run one training step (forward and
# backward) of a whole MoE layer on 4 in-process ranks, checked against a dense reference.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build=${MOECOMM_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOECOMM_BUILD_TESTS=OFF -DMOECOMM_BUILD_PERF=OFF
cmake --build "$build" --target moe_step
"$build/examples/moe_step"
