# shellcheck shell=bash disable=SC2034  # (variables for the scripts that source this)
# Sourced by every provisioning script: option parsing, the two modes, helpers.
#
# Machine mode (no --rundir): a real host with systemd; Debian's services run
# the daemons and the tools find them at their default places.
# Lab mode (--rundir DIR): one of several nodes inside one Linux machine, no
# systemd. The node's daemons keep pidfiles, sockets, logs and databases in
# DIR, under the names ovs-ctl and ovn-ctl use, and OVS_RUNDIR, OVN_RUNDIR &c.
# point there, so ovs-vsctl, ovn-nbctl and ovs-appctl need no --db.
#
# Common options:
#   --rundir DIR               lab mode, with the node's files in DIR
#   --netns NS                 lab mode: the node's daemons run in network namespace NS
#   --datapath system|netdev   OVS datapath of the integration bridge (default system)
#   --bridge NAME              integration bridge (default br-int)

set -euo pipefail

SCRIPT=$(basename "$0" .sh)
PROVISION=$(cd "$(dirname "$0")" && pwd)
RUNDIR="" NETNS="" DATAPATH=system BRIDGE=br-int
POS=() EXTRA=()

step() { printf '[%s%s] %s\n' "$SCRIPT" "${NETNS:+ $NETNS}" "$*"; }
die() { printf '[%s] error: %s\n' "$SCRIPT" "$*" >&2; exit 1; }

# run_unit UNIT DEFAULTS CONF SAYS (machine mode): installs vagrant/systemd/UNIT.service,
# writes CONF to /etc/default/DEFAULTS (saying SAYS), enables the unit, and restarts it if
# either changed (else starts it).
run_unit() {
  local name=$1 defaults=/etc/default/$2 conf=$3 says=$4 restart=""
  local unit=/etc/systemd/system/$name.service
  if ! cmp -s "$PROVISION/../systemd/$name.service" "$unit"; then
    step "installing $unit"
    install -m 644 "$PROVISION/../systemd/$name.service" "$unit"
    systemctl daemon-reload
    restart=yes
  fi
  if [ "$(cat "$defaults" 2>/dev/null)" != "$conf" ]; then
    step "$says"
    echo "$conf" >"$defaults"
    restart=yes
  fi
  step "enabling $name"
  systemctl enable --quiet "$name"
  if [ -n "$restart" ]; then
    systemctl restart "$name"
  else
    systemctl start "$name"
  fi
}

usage_exit() { printf 'usage: %s\n' "$USAGE" >&2; exit 2; }

# need PROGRAM:PACKAGE...: where a script starts, fails at once, naming the
# program and the Debian package that ships it, unless every PROGRAM is on PATH
# (rather than failing later, or reading "cannot run" as "not there"). With
# MAKE_DEPS=yes (lab mode, vagrant/lab.sh: this machine's own tools) it says that
# `make deps` installs them.
need() {
  local p hint=""
  if [ "${MAKE_DEPS:-}" = yes ]; then hint=" (or run \`make deps\`)"; fi
  for p in "$@"; do
    command -v "${p%%:*}" >/dev/null ||
      die "program '${p%%:*}' not found: install the Debian package ${p#*:}$hint"
  done
}

# need_for_mode PROGRAM:PACKAGE...: machine mode needs systemctl; lab mode needs
# ip, OVS's shell library, and the programs given (the daemons the script starts itself).
# shellcheck disable=SC2120  # (none given: ip and ovs-lib are all a script needs)
need_for_mode() {
  if [ "$MODE" = machine ]; then
    need systemctl:systemd
  else
    need ip:iproute2 "$@"
    [ -e "$OVS_LIB_FILE" ] || die "$OVS_LIB_FILE not found: install the Debian package \
openvswitch-common (or run \`make deps\`)"
  fi
}

# parse_args "OWN OPTIONS" "$@": every option takes one value, and --foo-bar V
# sets FOO_BAR=V. Other words land in POS, anything after "--" in EXTRA.
parse_args() {
  local own=" rundir netns datapath bridge $1 " name
  shift
  while [ $# -gt 0 ]; do
    case $1 in
      -h|--help) printf 'usage: %s\n' "$USAGE"; exit 0 ;;
      --) shift; EXTRA=("$@"); break ;;
      --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
      --*)
        name=${1#--}
        case $own in *" $name "*) ;; *) die "unknown option $1" ;; esac
        [ $# -ge 2 ] || die "$1 needs a value"
        printf -v "$(tr a-z- A-Z_ <<<"$name")" %s "$2"
        shift 2 ;;
      *) POS+=("$1"); shift ;;
    esac
  done
  case $DATAPATH in system|netdev) ;; *) die "--datapath is system or netdev" ;; esac
  if [ -n "$RUNDIR" ]; then
    MODE=lab MAKE_DEPS=yes
    mkdir -p "$RUNDIR"
    RUNDIR=$(cd "$RUNDIR" && pwd)
    export OVS_RUNDIR=$RUNDIR OVS_LOGDIR=$RUNDIR OVS_DBDIR=$RUNDIR
    export OVN_RUNDIR=$RUNDIR OVN_LOGDIR=$RUNDIR OVN_DBDIR=$RUNDIR
    export OVN_SYSCONFDIR=$RUNDIR       # ovn-ctl's configuration: not the machine's /etc/ovn
  else
    MODE=machine
    [ -z "$NETNS" ] || die "--netns needs --rundir (lab mode)"
  fi
}

# The positional arguments, exactly N of them.
positional() { [ ${#POS[@]} -eq "$1" ] || usage_exit; }

# Runs a command in the node's network namespace (lab mode), else here.
in_ns() {
  if [ -n "$NETNS" ]; then ip netns exec "$NETNS" "$@"; else "$@"; fi
}

vsctl() { ovs-vsctl --timeout=30 --no-wait "$@"; }

# add_netns NAME WHAT: the network namespace NAME, with lo up; true only if it made it
# (a step line says which; WHAT names it). Called in conditions, where set -e is off.
add_netns() {
  if [ -e "/run/netns/$1" ]; then
    step "$2 already there"
    return 1
  fi
  step "$2: network namespace"
  { ip netns add "$1" && ip -n "$1" link set lo up; } || die "cannot make network namespace $1"
}

# OVS's own shell library (openvswitch-common), which ovs-ctl and ovn-ctl use: in lab
# mode its daemon functions find pidfiles, logs and control sockets in the node's
# OVS_RUNDIR and OVS_LOGDIR, and databases in OVS_DBDIR. Called in a shell of its own
# (it is not written for set -eu), so that in_ns can run it too: "${OVS_LIB[@]}" FUNCTION ARGS...
OVS_LIB_FILE=/usr/share/openvswitch/scripts/ovs-lib
# shellcheck disable=SC2016  # (expanded by that shell)
OVS_LIB=(bash -c '. "$0" && "$@"' "$OVS_LIB_FILE")

# ... | steps: each line read as a step line (ovs-lib's and ovn-ctl's messages).
steps() { while IFS= read -r line; do step "$line"; done; }

# ovs_lib FUNCTION ARGS...: an ovs-lib function here, its messages as step lines.
ovs_lib() { "${OVS_LIB[@]}" "$@" | steps; }

# Lab mode: run_daemon [--here] PROGRAM ARGS... starts the OVS-style daemon PROGRAM (found
# on PATH) in the node's network namespace (--here: in this one) unless it runs, with
# ovs-lib's start_daemon: detached and monitored (a monitor reaps its daemon: the init of
# a VM lab may never do it), pidfile and log PROGRAM.pid and PROGRAM.log in the run directory.
run_daemon() {
  local ns=in_ns
  if [ "$1" = --here ]; then ns="command"; shift; fi
  if "${OVS_LIB[@]}" daemon_is_running "$1"; then
    step "$1 already running"
    return
  fi
  step "starting $1"
  "$ns" "${OVS_LIB[@]}" start_daemon "" "" "$@" 2>"$RUNDIR/$1.stderr" >/dev/null || {
    cat "$RUNDIR/$1.stderr" >&2
    die "$1 did not start (see $RUNDIR/$1.log)"
  }
}

# Machine mode: enable_service UNIT SOCKET [WHAT] enables and starts Debian's
# service UNIT (which runs WHAT) and waits for its SOCKET.
enable_service() {
  step "enabling $1${3:+ ($3)}"
  systemctl enable --now --quiet "$1"
  wait_file "$2"
}

# Waits up to 30 s for a file (a daemon's socket) to appear.
wait_file() {
  for _ in $(seq 300); do
    [ -e "$1" ] && return
    sleep 0.1
  done
  die "$1 did not appear"
}
