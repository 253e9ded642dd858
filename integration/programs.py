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

# program -> the Debian package that ships it (`dpkg -S $(command -v PROGRAM)`)
PACKAGES = {
    "ping": "iputils-ping",
    "ip": "iproute2", "ss": "iproute2", "tc": "iproute2",
    "sysctl": "procps", "ps": "procps",
    "modprobe": "kmod", "depmod": "kmod",
    "conntrack": "conntrack",
    "nft": "nftables",
    "ethtool": "ethtool",
    "iperf3": "iperf3",
    "sockperf": "sockperf",
    "bpftool": "bpftool",
    "ovsdb-tool": "openvswitch-common", "ovsdb-server": "openvswitch-common",
    "ovs-appctl": "openvswitch-common", "ovs-ofctl": "openvswitch-common",
    "ovs-pki": "openvswitch-common",
    "openssl": "openssl", "curl": "curl",
    "ovsdb-client": "openvswitch-common",
    "prometheus": "prometheus",
    "logrotate": "logrotate",
    "ovs-vsctl": "openvswitch-switch", "ovs-vswitchd": "openvswitch-switch",
    "ovn-nbctl": "ovn-common", "ovn-sbctl": "ovn-common",
    "ovn-northd": "ovn-central",
    "ovn-controller": "ovn-host",
    "qemu-system-x86_64": "qemu-system-x86",
    "busybox": "busybox-static",          # virtme-ng builds the VM's initramfs with it
    "apt-get": "apt", "apt-cache": "apt",
    "dpkg-deb": "dpkg", "dpkg-query": "dpkg",
    "tar": "tar",
    "bash": "bash",
    "mkfifo": "coreutils", "timeout": "coreutils", "mktemp": "coreutils",
    "awk": "mawk",
    "ssh": "openssh-client",
    "setsid": "util-linux",
    "shellcheck": "shellcheck",
    "systemd-analyze": "systemd", "systemctl": "systemd",
    "vagrant": "vagrant",
    "virsh": "libvirt-clients",
    "libvirtd": "libvirt-daemon", "virtlogd": "libvirt-daemon",
    "mmdebstrap": "mmdebstrap",
    "mkfs.ext4": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "sha256sum": "coreutils", "dd": "coreutils",
    "flock": "util-linux",
}


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
