"""The programs ovsfoot's lab, tests and benchmarks run, and the Debian packages
that ship them.

A helper that shells out calls `require(...)` where it starts, so that a program
a fresh machine lacks is an error at once that names it and its package, never a
wait that times out (`ip netns exec pod1 ping ...` failing to exec reads as "not
reachable") or a check that quietly reads as false.

    require("ip", "ping")   # MissingProgram: ovsfoot: program 'ping' not found: ...

integration/install-deps.sh (`make deps`) installs every package named here that
a fresh Debian 12 machine lacks; tests/test_programs.py checks that it does.
The VM shares this machine's root filesystem, so the same holds inside it.
"""

from __future__ import annotations

import shutil

# Each Debian package, and the programs it ships that ovsfoot runs
# (`dpkg -S $(command -v PROGRAM)`); virtme-ng builds the VM's initramfs with busybox.
_SHIPPED = """
iputils-ping        ping
iproute2            ip ss tc
procps              sysctl ps
kmod                modprobe depmod
conntrack           conntrack
nftables            nft
ethtool             ethtool
iperf3              iperf3
sockperf            sockperf
bpftool             bpftool
openvswitch-common  ovsdb-tool ovsdb-server ovsdb-client ovs-appctl ovs-ofctl ovs-pki
openssl             openssl
curl                curl
prometheus          prometheus
logrotate           logrotate
openvswitch-switch  ovs-vsctl ovs-vswitchd
ovn-common          ovn-nbctl ovn-sbctl
ovn-central         ovn-northd
ovn-host            ovn-controller
qemu-system-x86     qemu-system-x86_64
busybox-static      busybox
apt                 apt-get apt-cache
dpkg                dpkg-deb dpkg-query
tar                 tar
bash                bash
coreutils           mkfifo timeout mktemp sha256sum dd
mawk                awk
openssh-client      ssh
util-linux          setsid flock
shellcheck          shellcheck
systemd             systemd-analyze systemctl
vagrant             vagrant
libvirt-clients     virsh
libvirt-daemon      libvirtd virtlogd
mmdebstrap          mmdebstrap
e2fsprogs           mkfs.ext4
qemu-utils          qemu-img
"""
# program -> the Debian package that ships it
PACKAGES = {program: package
            for package, *programs in map(str.split, _SHIPPED.strip().splitlines())
            for program in programs}


class MissingProgram(RuntimeError):
    """A program ovsfoot runs is not installed."""


def missing(*programs: str) -> list[str]:
    """The programs, of those given, that are not on PATH."""
    unknown = [p for p in programs if p not in PACKAGES]
    if unknown:     # a programming error: every program run must say where it comes from
        raise ValueError(f"integration/programs.py: no Debian package known for "
                         f"{', '.join(map(repr, unknown))}: add it to PACKAGES")
    return [p for p in programs if shutil.which(p) is None]


def require(*programs: str) -> None:
    """Raises MissingProgram, naming each absent program and its Debian package,
    unless every one of `programs` is on PATH."""
    gone = missing(*programs)
    if len(gone) == 1:
        p = gone[0]
        raise MissingProgram(f"ovsfoot: program '{p}' not found: install the Debian package "
                             f"{PACKAGES[p]} (or run `make deps`)")
    if gone:
        pkgs = sorted({PACKAGES[p] for p in gone})
        raise MissingProgram(f"ovsfoot: programs {', '.join(map(repr, gone))} not found: "
                             f"install the Debian packages {' '.join(pkgs)} (or run `make deps`)")


def shell_require(*programs: str) -> str:
    """The lines of a shell script that check `programs` the way `require` does
    (for scripts run where Python is not at hand, e.g. in the VM)."""
    missing(*programs)      # each must have its package here
    pairs = " ".join(f"{p}:{PACKAGES[p]}" for p in programs)
    return (f"for need in {pairs}; do        # program:Debian package\n"
            "    command -v \"${need%%:*}\" >/dev/null || { echo \"scenario: program "
            "'${need%%:*}' not found:\" \\\n"
            "        \"install the Debian package ${need#*:} (or run \\`make deps\\`)\"; "
            "exit 1; }\ndone\n")
