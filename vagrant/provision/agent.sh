#!/bin/bash
# The chassis' ovsfoot agent. Machine mode: the systemd unit ovsfoot-agent,
# its options in /etc/default/ovsfoot. Lab mode: a detached agent with its
# pidfile, control socket and log in the chassis' run directory, watching the
# conntrack of the chassis' namespace; ovs-appctl -t ovsfoot finds it there.
# --cluster-db: the members of ovsfoot's cluster database (cluster-db.sh), where
# the agent publishes the node's summary and learned classes and reads those of
# the other chassis; without it, no cluster view. With ssl: remotes, the
# chassis' key and certificate (CN = the chassis' name) and the CA's (pki.sh).
# Options after "--" go to the agent (thresholds, for instance).
USAGE="agent.sh [--rundir DIR] [--netns NS] [--bridge NAME] \
[--source auto|bpf|ctnetlink] [--cluster-db REMOTE[,REMOTE...]] \
[--private-key FILE --certificate FILE --ca-cert FILE] [--ovsfoot PATH] [-- AGENT-OPTIONS...]"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"
SOURCE=auto OVSFOOT="" CLUSTER_DB="" PRIVATE_KEY="" CERTIFICATE="" CA_CERT=""
parse_args "source cluster-db private-key certificate ca-cert ovsfoot" "$@"
positional 0
need_for_mode
opts=(--source="$SOURCE" --bridge="$BRIDGE" ${CLUSTER_DB:+--cluster-db="$CLUSTER_DB"}
      ${PRIVATE_KEY:+--private-key="$PRIVATE_KEY"} ${CERTIFICATE:+--certificate="$CERTIFICATE"}
      ${CA_CERT:+--ca-cert="$CA_CERT"} "${EXTRA[@]}")

if [ "$MODE" = machine ]; then
  [ -z "$OVSFOOT" ] || die "the unit runs /opt/ovsfoot/bin/ovsfoot (see install.sh)"
  rotate=/etc/logrotate.d/ovsfoot
  if ! cmp -s "$PROVISION/../systemd/ovsfoot.logrotate" "$rotate"; then
    step "installing $rotate (the agent's log, /var/log/ovsfoot/agent.log)"
    install -m 644 "$PROVISION/../systemd/ovsfoot.logrotate" "$rotate"
  fi
  run_unit ovsfoot-agent ovsfoot "OVSFOOT_OPTS=\"${opts[*]}\"" "agent options: ${opts[*]}"
else
  OVSFOOT=${OVSFOOT:-$(command -v ovsfoot || echo /opt/ovsfoot/bin/ovsfoot)}
  # Started here: the agent enters the namespace itself (--netns) to watch its conntrack.
  PATH=${OVSFOOT%/*}:$PATH run_daemon --here ovsfoot agent --state="$RUNDIR/ovsfoot.state" \
    ${NETNS:+--netns="$NETNS"} "${opts[@]}"
fi
