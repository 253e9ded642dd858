#!/bin/bash
# A workload as ovn-kubernetes would plug it: a pod (network namespace, or a
# podman container in it) whose eth0 is a veth to the integration bridge, the
# Interface bound with iface-id to a logical port with the pod's MAC and IP,
# on a logical switch whose allow-related ACLs send traffic through conntrack.
# --ip6 makes the pod dual-stack (its IPv6 address/length too).
USAGE="workloads.sh [--rundir DIR] [--netns NS] [--bridge NAME] [--switch LS] \
[--lport LPORT] [--mac MAC] [--mtu N] [--ip6 IP6/LEN] CENTRAL_IP POD IP/LEN"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"
SWITCH=demo LPORT="" MAC="" MTU=1400 IP6=""   # 1400: room for Geneve on a 1500 underlay
parse_args "switch lport mac mtu ip6" "$@"
positional 3
CENTRAL_IP=${POS[0]} POD=${POS[1]} CIDR=${POS[2]}
need ip:iproute2 ovn-nbctl:ovn-common ovs-vsctl:openvswitch-switch ethtool:ethtool
IP=${CIDR%/*}
LPORT=${LPORT:-$POD}
IFACE=${POD:0:15}                        # the bridge's end of the veth
if [ -z "$MAC" ]; then                   # like ovn-kubernetes: 0a:58 and the IP
  IFS=. read -r a b c d <<<"$IP"
  MAC=$(printf '0a:58:%02x:%02x:%02x:%02x' "$a" "$b" "$c" "$d")
fi
IMAGE=${PODMAN_IMAGE:-docker.io/library/debian:bookworm-slim}

# Waits for the central node (it may still be coming up), but not forever.
nbctl() { in_ns ovn-nbctl --db="tcp:$CENTRAL_IP:6641" --timeout=120 "$@"; }

step "logical switch $SWITCH, allow-related ACLs both ways"
nbctl --may-exist ls-add "$SWITCH"
for dir in from-lport to-lport; do
  nbctl --may-exist acl-add "$SWITCH" "$dir" 1000 ip allow-related
done
step "logical port $LPORT: $MAC $IP ${IP6%/*}"
nbctl --may-exist lsp-add "$SWITCH" "$LPORT" -- lsp-set-addresses "$LPORT" \
  "$MAC $IP${IP6:+ ${IP6%/*}}"

if add_netns "$POD" "pod $POD" && [ "$MODE" = lab ]; then
  echo "$POD" >>"$RUNDIR/pods"                           # for teardown.sh
fi
if [ "$MODE" = machine ] && command -v podman >/dev/null; then
  if podman container exists "$POD"; then
    step "container $POD already running"
  else
    step "container $POD ($IMAGE) in the pod's namespace"
    podman run --detach --quiet --name "$POD" --network "ns:/run/netns/$POD" "$IMAGE" \
      sleep infinity >/dev/null
  fi
fi

if in_ns ip link show "$IFACE" >/dev/null 2>&1; then
  step "veth $IFACE already there"
else
  step "veth $IFACE - $POD:eth0"
  in_ns ip link add "$IFACE" type veth peer name eth0 netns "$POD"
fi
in_ns ip link set "$IFACE" up
ip -n "$POD" link set eth0 address "$MAC" mtu "$MTU" up
ip -n "$POD" addr replace "$CIDR" dev eth0
if [ -n "$IP6" ]; then
  ip -n "$POD" addr replace "$IP6" dev eth0 nodad
fi
if [ "$(vsctl get Bridge "$BRIDGE" datapath_type)" = netdev ]; then
  # The userspace datapath does not fill in checksums that veths offload.
  in_ns ethtool -K "$IFACE" tx off >/dev/null
  ip netns exec "$POD" ethtool -K eth0 tx off >/dev/null
fi

step "port $IFACE on $BRIDGE, iface-id=$LPORT"
vsctl --may-exist add-port "$BRIDGE" "$IFACE" -- set Interface "$IFACE" \
  external_ids:iface-id="$LPORT" external_ids:ip_addresses="$CIDR${IP6:+,$IP6}" \
  external_ids:attached_mac="$MAC"

for _ in $(seq 600); do
  if [ "$(vsctl --if-exists get Interface "$IFACE" external_ids:ovn-installed)" = '"true"' ]
  then
    step "$LPORT bound by ovn-controller"
    exit 0
  fi
  sleep 0.1
done
die "ovn-controller did not bind $LPORT within 60 s"
