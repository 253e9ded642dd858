#!/bin/bash
# OVN central: the northbound and southbound databases, listening on
# tcp IP:6641 and IP:6642 for the chassis and the CMS, and ovn-northd.
USAGE="central.sh [--rundir DIR] [--netns NS] IP"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"
parse_args "" "$@"
positional 1
IP=${POS[0]}
need_for_mode ovsdb-tool:openvswitch-common ovsdb-server:openvswitch-common \
  ovn-northd:ovn-central

if [ "$MODE" = machine ]; then
  enable_service ovn-central /var/run/ovn/ovnsb_db.sock "NB, SB, ovn-northd"
else
  # As ovn-ctl starts them: each database also serves the connections
  # listed in its own NB_Global or SB_Global row (set below).
  start_db() {
    local name=$1 schema=$2 global=$3
    create_db "$RUNDIR/$name.db" "$schema"
    start_daemon "$name" in_ns ovsdb-server "$RUNDIR/$name.db" \
      --remote="punix:$RUNDIR/$name.sock" --remote="db:$global,connections" \
      --unixctl="$RUNDIR/$name.ctl"
    wait_file "$RUNDIR/$name.sock"
  }
  start_db ovnnb_db /usr/share/ovn/ovn-nb.ovsschema OVN_Northbound,NB_Global
  start_db ovnsb_db /usr/share/ovn/ovn-sb.ovsschema OVN_Southbound,SB_Global
  start_daemon ovn-northd in_ns ovn-northd
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
listen nb 6641
listen sb 6642
