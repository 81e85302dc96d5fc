#!/usr/bin/env bash
# Two "hosts" on one machine: network namespaces joined by a veth pair, with addresses from the loopback range
# (127.100.x.1 and .2, route_localnet on), so nothing leaves the machine. Rank 0 runs in the first, rank 1 in the
# second; rank 0 is reached by address, as on a cluster.
#   two_hosts.sh HYBRIDIFF OUT_DIR GENERATE_ARGS...     writes OUT_DIR/rank0.safetensors; exit 77: no namespaces
# With CUT_AFTER=TEXT the link between the hosts goes down (no packet passes, no connection closes: a pulled cable)
# once rank 1's log holds TEXT; the time just before it is logged as "[HH:MM:SS.mmm] cut the link between the hosts".
set -u
binary=$1 out=$2
shift 2
tag=$$ subnet=$(( $$ % 200 + 20 ))
host0=hyb${tag}a host1=hyb${tag}b
cleanup() { ip netns del "$host0" 2>/dev/null; ip netns del "$host1" 2>/dev/null; }
trap cleanup EXIT
{ ip netns add "$host0" && ip netns add "$host1" &&
  ip link add "v${tag}a" type veth peer name "v${tag}b" &&
  ip link set "v${tag}a" netns "$host0" && ip link set "v${tag}b" netns "$host1"; } 2>/dev/null || {
  echo "two_hosts.sh: cannot create network namespaces here (needs root and ip netns)"; exit 77; }
setup() {  # namespace device address
  ip netns exec "$1" sysctl -qw net.ipv4.conf.all.route_localnet=1 "net.ipv4.conf.$2.route_localnet=1" &&
  ip netns exec "$1" ip addr add "$3/24" dev "$2" && ip netns exec "$1" ip link set "$2" up &&
  ip netns exec "$1" ip link set lo up
}
setup "$host0" "v${tag}a" "127.100.$subnet.1" && setup "$host1" "v${tag}b" "127.100.$subnet.2" || exit 77
env="WORLD_SIZE=2 MASTER_ADDR=127.100.$subnet.1 MASTER_PORT=29500"
ip netns exec "$host1" env $env RANK=1 timeout 120 "$binary" generate "$@" --output /dev/null > "$out/rank1.log" 2>&1 &
rank1=$!
: > "$out/cut.log"
if [ -n "${CUT_AFTER:-}" ]; then
  (for _ in $(seq 1200); do grep -q -- "$CUT_AFTER" "$out/rank1.log" && break; sleep 0.05; done
   # The time is read before the cut: rank 1 sees its own link go down at once, before a later `date` returns.
   at=$(date +%H:%M:%S.%3N)
   ip netns exec "$host1" ip link set "v${tag}b" down
   echo "[$at] cut the link between the hosts" > "$out/cut.log") &
fi
ip netns exec "$host0" env $env RANK=0 timeout 120 "$binary" generate "$@" --output "$out/rank0.png" \
  --save-latents "$out/rank0.safetensors" > "$out/rank0.log" 2>&1
status0=$?
wait $rank1
status1=$?
wait
cat "$out/rank0.log" "$out/rank1.log" "$out/cut.log"
echo "rank 0 exit $status0, rank 1 exit $status1"
[ "$status0" -eq 0 ] && [ "$status1" -eq 0 ]
