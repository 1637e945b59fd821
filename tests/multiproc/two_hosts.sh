#!/usr/bin/env bash
# Two "hosts" on one machine: network namespaces joined by a veth pair, with addresses only on
# that link from 198.18.0.0/15 (reserved for network tests). Ranks 0-1 run in host A, which also
# serves the store; ranks 2-3 in host B. Between hosts UCX runs over TCP on the veth link (puts
# too: MOECOMM_UCX_DIRECT_PUTS=0 keeps them off the shared mapping one kernel allows); within
# a host, over shared memory. The given test binary checks its results against its reference.
# Exit 77 (skip) with the reason when namespaces cannot be made here.
# Usage: two_hosts.sh <test binary> [gtest args...]
set -uo pipefail
binary=$1
shift
tag=$$
a=mc-a-$tag b=mc-b-$tag
skip() { echo "two_hosts: SKIPPED: $*"; exit 77; }

[ "$(id -u)" -eq 0 ] || skip "needs root to create network namespaces"
command -v ip >/dev/null || skip "iproute2 (ip) is not installed"
cleanup() {
  ip netns del "$a" 2>/dev/null
  ip netns del "$b" 2>/dev/null
}
trap cleanup EXIT
ip netns add "$a" 2>/dev/null || skip "ip netns add is not permitted here"
ip netns add "$b" || skip "ip netns add failed"
ip link add "va-$tag" type veth peer name "vb-$tag" || skip "cannot create a veth pair"
ip link set "va-$tag" netns "$a" && ip link set "vb-$tag" netns "$b" || exit 1
ip -n "$a" addr add 198.18.0.1/30 dev "va-$tag" && ip -n "$b" addr add 198.18.0.2/30 dev "vb-$tag"
for ns in "$a" "$b"; do ip -n "$ns" link set lo up; done
ip -n "$a" link set "va-$tag" up && ip -n "$b" link set "vb-$tag" up || exit 1

run_rank() {  # namespace, device, rank
  ip netns exec "$1" env RANK=$3 LOCAL_RANK=$(($3 % 2)) WORLD_SIZE=4 MASTER_ADDR=198.18.0.1 \
    MASTER_PORT=29555 MOECOMM_TEST_PROCESSES=env MOECOMM_TEST_TRANSPORT=ucx \
    MOECOMM_UCX_DIRECT_PUTS=0 UCX_NET_DEVICES="$2" timeout 240 "$binary" "$@"
}
pids=()
for r in 0 1; do run_rank "$a" "va-$tag" "$r" "$@" & pids+=($!); done
for r in 2 3; do run_rank "$b" "vb-$tag" "$r" "$@" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
[ $status -eq 0 ] && echo "two_hosts: all ranks passed across the veth link"
exit $status
