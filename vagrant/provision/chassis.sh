#!/bin/bash
# An OVN chassis: ovsdb-server, the integration bridge, ovs-vswitchd and
# ovn-controller, tunnelling to the other chassis in Geneve from ENCAP_IP.
# SOUTHBOUND: the central node's IP (its southbound database on tcp IP:6642), or
# the database's OVSDB remotes themselves (tcp:, ssl:, unix:; comma-separated).
# Run again, it starts whichever of the daemons does not run (lab mode).
USAGE="chassis.sh [--rundir DIR] [--netns NS] [--datapath system|netdev] [--bridge NAME] \
NAME ENCAP_IP SOUTHBOUND"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"
parse_args "" "$@"
positional 3
NAME=${POS[0]} ENCAP_IP=${POS[1]} SOUTHBOUND=${POS[2]}
case $SOUTHBOUND in
  tcp:*|ssl:*|unix:*) ;;
  *) SOUTHBOUND=tcp:$SOUTHBOUND:6642 ;;
esac
need ovs-vsctl:openvswitch-switch
need_for_mode modprobe:kmod ovsdb-tool:openvswitch-common ovsdb-server:openvswitch-common \
  ovs-vswitchd:openvswitch-switch ovn-controller:ovn-host

if [ "$MODE" = machine ]; then
  # ovs-ctl sets system-id from this file whenever ovsdb-server starts.
  if [ "$(cat /etc/openvswitch/system-id.conf 2>/dev/null)" != "$NAME" ]; then
    step "system-id $NAME"
    echo "$NAME" >/etc/openvswitch/system-id.conf
  fi
  enable_service openvswitch-switch /var/run/openvswitch/db.sock
else
  # As ovs-ctl does: the database made, or converted to the installed schema.
  ovs_lib upgrade_db "$RUNDIR/conf.db" /usr/share/openvswitch/vswitch.ovsschema
  run_daemon ovsdb-server "$RUNDIR/conf.db" \
    --remote="punix:$RUNDIR/db.sock" --remote=db:Open_vSwitch,Open_vSwitch,manager_options
  wait_file "$RUNDIR/db.sock"
  vsctl init
fi

# The bridge exists before ovs-vswitchd opens it: with OVS 3.1 on Linux 6.1's
# kernel datapath, a bridge made while ovs-vswitchd runs loses its upcalls.
if vsctl br-exists "$BRIDGE"; then
  step "$BRIDGE already there"
else
  step "creating $BRIDGE ($DATAPATH datapath)"
  vsctl add-br "$BRIDGE" -- set Bridge "$BRIDGE" fail-mode=secure \
    other_config:disable-in-band=true datapath_type="$DATAPATH"
fi

step "chassis $NAME: geneve from $ENCAP_IP, southbound $SOUTHBOUND"
vsctl set Open_vSwitch . \
  external_ids:system-id="$NAME" \
  external_ids:hostname="$NAME" \
  external_ids:ovn-remote="$SOUTHBOUND" \
  external_ids:ovn-encap-type=geneve \
  external_ids:ovn-encap-ip="$ENCAP_IP" \
  external_ids:ovn-bridge="$BRIDGE" \
  external_ids:ovn-bridge-datapath-type="$DATAPATH"

if [ "$MODE" = machine ]; then
  # ovs-vswitchd started with the package, before the bridge existed: restart
  # it once, after the first configuration.
  stamp=/var/lib/ovsfoot/vswitchd-restarted
  if [ ! -e "$stamp" ]; then
    step "restarting ovs-vswitchd once, now that $BRIDGE exists"
    systemctl restart ovs-vswitchd
    mkdir -p "${stamp%/*}" && touch "$stamp"
  fi
  step "enabling ovn-host (ovn-controller)"
  systemctl enable --now --quiet ovn-host
else
  if [ "$DATAPATH" = system ]; then
    step "loading the openvswitch and geneve modules"
    modprobe -a openvswitch geneve
  fi
  args=()
  [ "$DATAPATH" = system ] || args=(--disable-system)    # userspace datapath only
  run_daemon ovs-vswitchd "${args[@]}"
  run_daemon ovn-controller
fi
