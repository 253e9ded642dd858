#!/bin/sh
# Installs the Debian packages ovsfoot, its tests and its lab need. Idempotent.
set -e
# Every package whose programs the code runs and a fresh machine lacks (the map of
# program -> package is integration/programs.py; ../shared/tools/deps-check checks).
PKGS="openvswitch-switch openvswitch-common ovn-central ovn-host ovn-common python3-venv
python3-pip python3-bpfcc bpfcc-tools bpftool iperf3 sockperf iputils-ping conntrack
nftables iproute2 ethtool tcpdump procps psmisc kmod qemu-system-x86
containernetworking-plugins busybox-static vagrant vagrant-libvirt shellcheck systemd
prometheus logrotate libvirt-daemon libvirt-daemon-system libvirt-clients dnsmasq-base
mmdebstrap qemu-utils python3-matplotlib"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "ovsfoot: installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing
  # the tests run their own prometheus: the package's system service is not wanted
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
