#!/bin/bash
# The seed's experiment across hypervisors, once `vagrant up` has finished:
# the 99th-percentile latency of mice (sockperf ping-pong, UDP) between pods
#   1. alone, from hv1 to hv2;
#   2. beside an elephant (iperf3, TCP) from hv1 to hv2, on the same hypervisors;
#   3. with the elephant still running, between pods on the chassis that
#      ovsfoot says are light (ovsfoot-footprint and ovsfoot-elephants, which the
#      agents publish in the external_ids of each chassis' integration bridge,
#      Bridge br-int): a scheduler placing the light workload away from the
#      heavy nodes.
# Every chassis has a mice-client-hvN and a mice-server-hvN pod; hv1 has the
# elephant's client, hv2 its server (see the Vagrantfile). Run in vagrant/.
set -euo pipefail
cd "$(dirname "$0")"

MICE_SECS=${MICE_SECS:-15}          # each latency measurement
MICE_MPS=${MICE_MPS:-1000}          # mice messages per second
ELEPHANT_SECS=$((2 * MICE_SECS + 60))

step() { printf '[experiment] %s\n' "$*"; }
fail() { printf 'experiment: %s\n' "$*" >&2; exit 1; }

# need [NODE] PROGRAM:PACKAGE...: fails at once, naming the program and the
# Debian package that ships it, unless every PROGRAM is on this machine's PATH,
# or with NODE (an hvN), on that VM's.
need() {
  local node="" p found=""
  if [[ $1 != *:* ]]; then
    node=$1
    shift
    found=$(on "$node" sh -c "'which ${*%%:*}; echo which-done'" 2>&1) || true
    [[ $found == *which-done* ]] || { echo "experiment: cannot run commands on $node: $found" >&2; exit 1; }
  fi
  for p in "$@"; do
    if [ -z "$node" ]; then
      command -v "${p%%:*}" >/dev/null && continue
    elif [[ $'\n'$found$'\n' == *"/${p%%:*}"$'\n'* ]]; then
      continue
    fi
    echo "experiment: program '${p%%:*}' not found${node:+ on $node}:" \
      "install the Debian package ${p#*:}" >&2
    exit 1
  done
}
need vagrant:vagrant ssh:openssh-client awk:mawk mktemp:coreutils

# Runs a command as root on a VM (the ssh configuration comes from Vagrant
# once: a `vagrant ssh -c` per command would spend seconds starting Vagrant).
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT
vagrant ssh-config >"$TMP/ssh_config"
on() {
  local node=$1
  shift
  ssh -F "$TMP/ssh_config" -q "$node" sudo "$@"
}

# Starts a server in a pod, detached; it exits by itself after SECS.
serve() {
  local node=$1 pod=$2 secs=$3
  shift 3
  on "$node" setsid -f ip netns exec "$pod" timeout "$secs" "$@" '>/dev/null' '2>&1'
}

pod_ip() {
  on "$1" ip -n "$2" -4 -o addr show eth0 | awk '{ sub("/.*", "", $4); print $4 }'
}

# The chassis' node footprint, as "light 0" or "heavy 1" (footprint, elephants),
# from its integration bridge (not the Open_vSwitch row: ovsfoot never writes
# there, since every change of it makes ovn-controller recompute everything).
footprint() {
  local ids
  ids=$(on "$1" ovs-vsctl get Bridge br-int external_ids)
  printf '%s %s\n' \
    "$(grep -o 'ovsfoot-footprint=[a-z]*' <<<"$ids" | cut -d= -f2)" \
    "$(grep -o 'ovsfoot-elephants="[0-9]*"' <<<"$ids" | tr -dc 0-9)"
}

# mice CLIENT_NODE SERVER_NODE PORT: prints the p99 latency in microseconds.
mice() {
  local ip
  ip=$(pod_ip "$2" "mice-server-$2")
  serve "$2" "mice-server-$2" $((MICE_SECS + 30)) sockperf server -i "$ip" -p "$3"
  sleep 1
  on "$1" ip netns exec "mice-client-$1" \
    sockperf ping-pong -i "$ip" -p "$3" -t "$MICE_SECS" --mps "$MICE_MPS" 2>&1 |
    awk '/percentile 99.000/ { print $NF }'
}

# mice_row WHAT CLIENT_NODE SERVER_NODE PORT [NOTE]: the mice's p99, a row of the table.
mice_row() {
  local p99
  p99=$(mice "$2" "$3" "$4") || true
  rows+=("$1|$2 -> $3|$p99|${5:-}")
}

mapfile -t CHASSIS < <(vagrant status --machine-readable |
  awk -F, '$3 == "state" && $4 == "running" && $2 ~ /^hv/ { print $2 }')
[ ${#CHASSIS[@]} -ge 2 ] || { echo "experiment: needs hv1 and hv2 running (vagrant up)" >&2; exit 1; }
step "chassis: ${CHASSIS[*]}"
for hv in "${CHASSIS[@]}"; do
  need "$hv" ip:iproute2 ovs-vsctl:openvswitch-switch sockperf:sockperf iperf3:iperf3 \
    setsid:util-linux timeout:coreutils
done
rows=() letters=abc

step "1/3 mice alone, hv1 -> hv2 (${MICE_SECS} s)"
mice_row alone hv1 hv2 11111

step "2/3 elephant hv1 -> hv2 (${ELEPHANT_SECS} s), mice beside it"
server_ip=$(pod_ip hv2 elephant-server)
serve hv2 elephant-server $((ELEPHANT_SECS + 30)) iperf3 -s -1 -B "$server_ip"
sleep 1
on hv1 ip netns exec elephant-client iperf3 -c "$server_ip" -t "$ELEPHANT_SECS" \
  >"$TMP/iperf" 2>&1 &
elephant=$!
for _ in $(seq 30); do
  [[ $(footprint hv1) == heavy* ]] && break
  sleep 1
done
fp=$(footprint hv1)
step "ovsfoot on hv1: $fp"
[[ $fp == heavy* ]] || fail "ovsfoot did not mark hv1 heavy within 30 s of the" \
  "elephant's start: see \`vagrant ssh hv1 -c 'sudo ovs-appctl -t ovsfoot elephant/list'\`"
mice_row "beside the elephant" hv1 hv2 11112

step "3/3 placing the mice by the published footprints"
light=()
for hv in "${CHASSIS[@]}"; do
  fp=$(footprint "$hv")
  step "  $hv: ovsfoot-footprint=${fp% *} ovsfoot-elephants=${fp#* }"
  [ "${fp% *}" = light ] && light+=("$hv")
done
case ${#light[@]} in
  0) rows+=("placed by ovsfoot|-||every chassis is heavy: OVSFOOT_CHASSIS=3 gives one light, 4 two") ;;
  1) mice_row "placed by ovsfoot" "${light[0]}" "${light[0]}" 11113 \
       "one light chassis: no Geneve hop" ;;
  *) mice_row "placed by ovsfoot" "${light[0]}" "${light[1]}" 11113 ;;
esac

wait "$elephant" || true
throughput=$(awk '/receiver/ { print $(NF-2), $(NF-1) }' "$TMP/iperf")
# The table of the VM lab (`make lab`, integration/lab.py): p99 in ms, beside the
# seed's (LPC 2019); here with no bottleneck but the hypervisors' own.
ms() { awk -v us="$1" 'BEGIN { if (us == "") print "-"; else printf "%.2f ms\n", us / 1000 }'; }
seed=("0.28 ms" "14.04 ms" "-")
echo
echo "== the experiment: mice p99 (sockperf ping-pong), bottleneck none (hypervisors) =="
printf '  %-28s %10s   %15s\n' "" here "seed (LPC 2019)"
for i in "${!rows[@]}"; do
  IFS='|' read -r what where p99 note <<<"${rows[$i]}"
  printf '  (%s) %-24s %10s   %15s   %s%s\n' "${letters:i:1}" "$what" "$(ms "$p99")" \
    "${seed[$i]}" "$where" "${note:+ ($note)}"
done
echo "  elephant (iperf3 hv1 -> hv2): ${throughput:-?}"
for row in "${rows[@]}"; do
  IFS='|' read -r what where p99 _ <<<"$row"
  [ "$where" = - ] || [ -n "$p99" ] || fail "no p99 for \"$what\" ($where): sockperf gave none"
done
