#!/bin/bash
# Lab mode: stops the node's daemons, deletes its pods and its namespace, and
# the underlay bridge once no node is left on it. Logs stay in the run directory.
USAGE="teardown.sh --rundir DIR [--netns NS] [--bridge NAME]"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"
parse_args "" "$@"
positional 0
[ "$MODE" = lab ] || usage_exit
need_for_mode

for daemon in ovsfoot ovn-controller ovs-vswitchd; do
  ovs_lib stop_daemon "$daemon"
done
if [ -S "$RUNDIR/ovsdb-server.ctl" ]; then
  # A member of ovsfoot's cluster database (cluster-db.sh) names its control socket so, not
  # ovsdb-server.PID.ctl: ovn-lib's stop_ovn_daemon is ovs-lib's stop_daemon, told where.
  # shellcheck disable=SC2016  # (expanded by that shell)
  bash -c '. "$0" && . "$1" && stop_ovn_daemon ovsdb-server "" "$2"' "$OVS_LIB_FILE" \
    /usr/share/ovn/scripts/ovn-lib "$RUNDIR/ovsdb-server.ctl" | steps
else
  ovs_lib stop_daemon ovsdb-server
fi
# ovn-northd and the databases it came with (central.sh), if they run here
if [ -e "$RUNDIR/ovn-northd.pid" ]; then
  /usr/share/ovn/scripts/ovn-ctl stop_northd | steps
fi

if [ -e "$RUNDIR/pods" ]; then
  while read -r pod; do
    [ -e "/run/netns/$pod" ] || continue
    step "deleting pod $pod"
    ip netns del "$pod"
  done <"$RUNDIR/pods"
  rm "$RUNDIR/pods"
fi

# The veth first: a namespace's links go some time after the namespace.
if [ -e "$RUNDIR/underlay" ]; then
  read -r link port <"$RUNDIR/underlay"
  rm "$RUNDIR/underlay"
  if ip link show "$port" >/dev/null 2>&1; then
    step "unplugging $port from $link"
    ip link del "$port"
  fi
  if ip link show "$link" >/dev/null 2>&1 && [ -z "$(ip link show master "$link")" ]; then
    step "deleting underlay bridge $link, now empty"
    ip link del "$link"
  fi
fi

if [ -n "$NETNS" ]; then
  if [ -e "/run/netns/$NETNS" ]; then
    step "deleting namespace $NETNS"
    ip netns del "$NETNS"
  fi
else
  # The userspace datapath leaves tap devices named after its bridges.
  for tap in "$BRIDGE" ovs-netdev; do
    if [[ $(ip -d link show "$tap" 2>/dev/null) == *" tun "* ]]; then
      step "deleting tap $tap"
      ip link del "$tap"
    fi
  done
fi
