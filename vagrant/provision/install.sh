#!/bin/bash
# Machine mode: the Debian packages a node of ROLE needs and ovsfoot from the
# source tree (the synced folder) in a virtualenv, its Python dependencies from
# the wheelhouse WHEELS where there is one (the box of vagrant/box/ has it: then
# nothing is downloaded), else from PyPI: on a chassis for the agent
# (the virtualenv sees Debian's bcc, python3-bpfcc), on the central node for
# `ovsfoot cluster-db`. Lab nodes use their host's installation.
USAGE="install.sh [--src DIR] [--venv DIR] [--wheels DIR] [--podman yes|no] central|chassis"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"
SRC=$(cd "$PROVISION/../.." && pwd) VENV=/opt/ovsfoot PODMAN=no WHEELS=/var/cache/ovsfoot/wheels
parse_args "src venv wheels podman" "$@"
positional 1
[ "$MODE" = machine ] || die "install.sh is for machines; lab nodes use the host's packages"
need apt-get:apt apt-cache:apt dpkg-query:dpkg

case ${POS[0]} in
  central) pkgs=(ovn-central python3-venv) ;;
  chassis)
    pkgs=(openvswitch-switch ovn-host python3-venv python3-bpfcc bpfcc-tools
          iperf3 sockperf conntrack ethtool tcpdump)
    [ "$PODMAN" = no ] || pkgs+=(podman) ;;
  *) usage_exit ;;
esac

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
apt_install() { apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
export DEBIAN_FRONTEND=noninteractive

missing=()
for p in "${pkgs[@]}"; do
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  step "packages already installed"
else
  step "installing ${missing[*]}"
  apt-get update -qq
  apt_install "${missing[@]}"
fi

if [ "${POS[0]}" = chassis ]; then
  # bcc compiles the eBPF program against the running kernel's headers.
  headers=linux-headers-$(uname -r)
  if installed "$headers"; then
    step "$headers already installed"
  elif apt-cache show "$headers" >/dev/null 2>&1; then
    step "installing $headers (for bcc)"
    apt_install "$headers"
  else
    step "no $headers in the archive: the agent will fall back to ctnetlink"
  fi
fi

if [ -x "$VENV/bin/python" ]; then
  step "virtualenv $VENV already there"
else
  step "virtualenv $VENV (with the system's site packages, for bcc)"
  python3 -m venv --system-site-packages "$VENV"
fi
# Editable: the agent runs the synced tree, and finds bpf/ in it.
if [ "$VENV/.installed" -nt "$SRC/setup.py" ]; then
  step "ovsfoot already installed from $SRC"
else
  if [ -d "$WHEELS" ]; then
    step "installing ovsfoot from $SRC, its dependencies from $WHEELS"
    "$VENV/bin/pip" install --quiet --no-index --find-links "$WHEELS" --editable "$SRC"
  else
    step "installing ovsfoot from $SRC, its dependencies from PyPI"
    "$VENV/bin/pip" install --quiet --editable "$SRC"
  fi
  touch "$VENV/.installed"
fi
