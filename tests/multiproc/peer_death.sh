#!/usr/bin/env bash
# Starts 4 ranks of peer_death with torchrun-style variables, kills rank 2 (it kills itself), and
# checks that the three survivors report it and exit 0 within the deadline, and rank 2 died by
# SIGKILL (exit 137). Usage: peer_death.sh <peer_death binary> <port>
set -uo pipefail
binary=$1 port=$2 n=4 victim=2
pids=()
for ((r = 0; r < n; r++)); do
  RANK=$r WORLD_SIZE=$n MASTER_ADDR=127.0.0.1 MASTER_PORT=$port MOECOMM_TRANSPORT=ucx \
    timeout 60 "$binary" "$victim" &
  pids+=($!)
done
fail=0
for ((r = 0; r < n; r++)); do
  wait "${pids[$r]}"
  rc=$?
  if [ "$r" -eq "$victim" ]; then
    [ "$rc" -eq 137 ] || { echo "rank $r: expected death by SIGKILL (137), got $rc"; fail=1; }
  elif [ "$rc" -ne 0 ]; then
    echo "rank $r: exit $rc (124 means it hung)"; fail=1
  fi
done
[ "$fail" -eq 0 ] && echo "peer_death: survivors reported rank $victim and exited cleanly"
exit $fail
