#!/usr/bin/env bash
# A ucx run (messages and window puts, 4 processes) leaves no shared-memory segment behind: no new
# file in /dev/shm and no new System V segment. Runs alone (RUN_SERIAL) so nothing else adds any.
# Usage: no_leftovers.sh <launcher> <test binary> <port>
set -uo pipefail
launcher=$1 binary=$2 port=$3
snapshot() { { ls -1 /dev/shm 2>/dev/null; ipcs -m 2>/dev/null | awk 'NR > 3 && $2 ~ /^[0-9]+$/ {print "sysv " $2}'; } | sort; }
before=$(snapshot)
MOECOMM_TEST_PROCESSES=env MOECOMM_TEST_TRANSPORT=ucx "$launcher" -n 4 --port "$port" -- \
  "$binary" --gtest_filter='*Puts*:*ZeroOdd*' >/dev/null || { echo "the ucx run failed"; exit 1; }
after=$(snapshot)
left=$(comm -13 <(echo "$before") <(echo "$after"))
if [ -n "$left" ]; then
  echo "left behind:"; echo "$left"; exit 1
fi
echo "no_leftovers: /dev/shm and System V segments as before ($(echo "$before" | grep -c .) entries)"
