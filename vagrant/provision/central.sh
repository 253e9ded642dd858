#!/bin/bash
# OVN central: the northbound and southbound databases, listening on
# tcp IP:6641 and IP:6642 for the chassis and the CMS, and ovn-northd.
# Lab mode without IP: the databases serve only their unix sockets in the run
# directory (which any network namespace reaches), as the tests' central node.
USAGE="central.sh [--rundir DIR] [--netns NS] IP | central.sh --rundir DIR [--netns NS]"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"
parse_args "" "$@"
[ ${#POS[@]} -eq 1 ] || { [ ${#POS[@]} -eq 0 ] && [ "$MODE" = lab ]; } || usage_exit
IP=${POS[0]:-}
need_for_mode ovsdb-tool:openvswitch-common ovsdb-server:openvswitch-common \
  ovn-northd:ovn-central
OVN_CTL=/usr/share/ovn/scripts/ovn-ctl

if [ "$MODE" = machine ]; then
  enable_service ovn-central /var/run/ovn/ovnsb_db.sock "NB, SB, ovn-northd"
else
  # As the ovn-central service starts them, with OVN's ovn-ctl (ovs-lib underneath),
  # here in the node's run directory and namespace: each database also serves the
  # connections listed in its own NB_Global or SB_Global row (set below).
  [ -x "$OVN_CTL" ] || die "$OVN_CTL not found: install the Debian package ovn-common"
  step "ovn-ctl start_northd (NB, SB, ovn-northd)"
  in_ns "$OVN_CTL" start_northd | steps
  wait_file "$RUNDIR/ovnsb_db.sock"
fi

# listen nb|sb PORT: the database serves the chassis and the CMS on IP:PORT.
listen() {
  local ctl=ovn-${1}ctl target=ptcp:$2:$IP
  if [ "$($ctl get-connection | awk '{print $NF}')" = "$target" ]; then
    step "$1 already listening on $target"
  else
    step "$1 listening on $target"
    $ctl set-connection "$target"
  fi
}
ovn-nbctl init
ovn-sbctl init
if [ -n "$IP" ]; then
  listen nb 6641
  listen sb 6642
fi
