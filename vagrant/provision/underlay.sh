#!/bin/bash
# Lab mode: the node's network namespace, on the underlay. A Linux bridge
# LINK stands for the physical network; a veth pair plugs the namespace into
# it, with ADDR on the namespace's end (named ul). What Vagrant's private
# network is to a real machine.
USAGE="underlay.sh --rundir DIR --netns NS [--link BRIDGE] ADDR/LEN"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"
LINK=ovsfoot-ul
parse_args "link" "$@"
positional 1
ADDR=${POS[0]}
if [ -z "$RUNDIR" ] || [ -z "$NETNS" ]; then usage_exit; fi
need ip:iproute2
host_end=ul-$NETNS
host_end=${host_end:0:15}

if ip link show "$LINK" >/dev/null 2>&1; then
  step "underlay $LINK already there"
else
  step "creating underlay bridge $LINK"
  ip link add "$LINK" type bridge
  ip link set "$LINK" up
fi
echo "$LINK $host_end" >"$RUNDIR/underlay"        # for teardown.sh

add_netns "$NETNS" "the node" || true

if ip -n "$NETNS" link show ul >/dev/null 2>&1; then
  step "ul already plugged into $LINK"
else
  step "plugging $NETNS into $LINK ($host_end - ul)"
  ip link add "$host_end" type veth peer name ul netns "$NETNS"
  ip link set "$host_end" master "$LINK" up
  ip -n "$NETNS" link set ul up
fi

if [[ $(ip -n "$NETNS" -o addr show dev ul) == *" inet $ADDR "* ]]; then
  step "ul already has $ADDR"
else
  step "ul address $ADDR"
  ip -n "$NETNS" addr add "$ADDR" dev ul
fi
