#!/bin/bash
# A member of ovsfoot's cluster database: OVSFoot_Cluster, a raft cluster of
# its own (nothing of it lives in OVN's databases, so neither ovn-northd nor
# ovn-controller recomputes because of it), run with `ovsfoot cluster-db start`.
# The first member (no --join) creates the cluster and the chassis connection
# (ptcp:6647, pssl:6647 with SSL) where the agents and the scheduler extender
# connect; the others join it at their raft address IP:6648.
# Machine mode: the systemd unit ovsfoot-cluster-db, its options in
# /etc/default/ovsfoot-cluster-db, the database in /var/lib/ovsfoot/cluster-db.
# Lab mode: a detached member with its database, pidfile, log and sockets in
# the run directory, in the node's network namespace (every member listens on
# the same chassis connection: one namespace per member).
USAGE="cluster-db.sh [--rundir DIR] [--netns NS] [--join ADDR[,ADDR...]] \
[--private-key FILE --certificate FILE --ca-cert FILE] [--ovsfoot PATH] IP"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"
JOIN="" PRIVATE_KEY="" CERTIFICATE="" CA_CERT="" OVSFOOT=""
parse_args "join private-key certificate ca-cert ovsfoot" "$@"
positional 1
IP=${POS[0]}
need_for_mode
need ovsdb-tool:openvswitch-common ovsdb-server:openvswitch-common \
  ovsdb-client:openvswitch-common ovs-appctl:openvswitch-common

scheme=tcp ssl=()
if [ -n "$PRIVATE_KEY$CERTIFICATE$CA_CERT" ]; then
  scheme=ssl
  ssl=(--private-key="$PRIVATE_KEY" --certificate="$CERTIFICATE" --ca-cert="$CA_CERT")
fi
opts=(--local="$scheme:$IP" ${JOIN:+--join="$JOIN"} "${ssl[@]}")
what="member $scheme:$IP${JOIN:+, joining $JOIN}"

if [ "$MODE" = machine ]; then
  [ -z "$OVSFOOT" ] || die "the unit runs /opt/ovsfoot/bin/ovsfoot (see install.sh)"
  run_unit ovsfoot-cluster-db ovsfoot-cluster-db \
    "OVSFOOT_CLUSTER_DB_OPTS=\"${opts[*]}\"" "cluster-db $what"
  wait_file /var/lib/ovsfoot/cluster-db/db.sock
else
  OVSFOOT=${OVSFOOT:-$(command -v ovsfoot || echo /opt/ovsfoot/bin/ovsfoot)}
  # `ovsfoot cluster-db start` keeps its pidfile as $RUNDIR/ovsdb-server.pid,
  # the name teardown.sh stops; monitored, as ovs-lib starts a daemon.
  if "${OVS_LIB[@]}" daemon_is_running ovsdb-server; then
    step "cluster-db member already running"
  else
    step "starting cluster-db $what"
    in_ns "$OVSFOOT" cluster-db start --detach --monitor --dir="$RUNDIR" "${opts[@]}" | steps
  fi
fi
