#!/bin/bash
# OVN central: the northbound and southbound databases, listening on
# tcp IP:6641 and IP:6642 for the chassis and the CMS, and ovn-northd.
USAGE="central.sh [--rundir DIR] [--netns NS] IP"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"
parse_args "" "$@"
positional 1
IP=${POS[0]}

if [ "$MODE" = machine ]; then
  step "enabling ovn-central (NB, SB, ovn-northd)"
  systemctl enable --now --quiet ovn-central
  wait_file /var/run/ovn/ovnsb_db.sock
else
  # Each database also serves the connections listed in it (set below),
  # as ovn-ctl starts them.
  for db in nb sb; do
    name=ovn${db}_db
    create_db "$RUNDIR/$name.db" "/usr/share/ovn/ovn-$db.ovsschema"
    schema=$(ovsdb-tool db-name "$RUNDIR/$name.db")
    table=$(tr '[:lower:]' '[:upper:]' <<<"$db")_Global
    start_daemon "$name" in_ns ovsdb-server "$RUNDIR/$name.db" \
      --remote="punix:$RUNDIR/$name.sock" --remote="db:$schema,$table,connections" \
      --unixctl="$RUNDIR/$name.ctl"
    wait_file "$RUNDIR/$name.sock"
  done
  start_daemon ovn-northd in_ns ovn-northd
fi

ovn-nbctl init
ovn-sbctl init
for db in nb:6641 sb:6642; do
  target="ptcp:${db#*:}:$IP"
  if [ "$(ovn-"${db%:*}"ctl get-connection | awk '{print $NF}')" = "$target" ]; then
    step "${db%:*} already listening on $target"
  else
    step "${db%:*} listening on $target"
    ovn-"${db%:*}"ctl set-connection "$target"
  fi
done
