#!/usr/bin/env bash
# moecomm-perf writes JSON and scripts/plot-perf.py turns it into a non-empty PNG.
# Usage: plot_check.sh <moecomm-perf> <plot-perf.py> <work dir>
set -euo pipefail
perf=$1 plot=$2 dir=$3
mkdir -p "$dir"
"$perf" alltoall -t 2 -b 8K -e 256K -f 4 -n 2 -w 1 -J "$dir/a.json" >/dev/null
"$perf" alltoall -t 2 -b 8K -e 256K -f 4 -n 2 -w 1 --mode put -J "$dir/b.json" >/dev/null
"$plot" -o "$dir/bw.png" "$dir/a.json" "$dir/b.json"
test -s "$dir/bw.png"
