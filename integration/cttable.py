"""A large kernel conntrack table in a network namespace, for ctnetlink at scale.

`ConntrackTable(n).create()` gives namespace `name` n entries in zones 1-8: one
UDP datagram each, sent from inside it to distinct addresses behind a veth
whose other end, in a second namespace, drops them (tracked in OUTPUT only,
zone set by nftables in the raw hook; UDP timeout raised so none expires).
The host-wide `nf_conntrack_max` is raised for it and put back by `destroy()`.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from integration.programs import require
from integration.sandbox import sh

REPO = Path(__file__).resolve().parents[1]
CT_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"


def fill(entries: int) -> None:
    """Runs in the namespace (child of `ip netns exec`): one datagram per entry."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    deadline = time.monotonic() + 120 + entries / 5000
    for i in range(entries):
        addr = f"10.200.{(i >> 8) & 0xff}.{i & 0xff}"
        port = 1000 + (i >> 16)
        while True:
            try:
                s.sendto(b"x", (addr, port))
                break
            except BlockingIOError:
                time.sleep(0.001)
            if time.monotonic() > deadline:
                raise TimeoutError(f"filling the conntrack table with {entries:,} entries "
                                   f"took too long")


class ConntrackTable:
    def __init__(self, entries: int, name: str | None = None):
        self.entries = entries
        self.name = name or f"ovsfoot-ct{os.getpid() % 10000}"
        self.sink = self.name + "-sink"
        self._old_max: str | None = None

    def run(self, *cmd: str, **kw) -> str:
        return sh("ip", "netns", "exec", self.name, *cmd, **kw)

    def count(self) -> int:
        return int(self.run("cat", "/proc/sys/net/netfilter/nf_conntrack_count"))

    def create(self) -> "ConntrackTable":
        require("ip", "sysctl", "nft")
        old = Path(CT_MAX).read_text().strip()
        if int(old) < self.entries + 10_000:
            self._old_max = old
            Path(CT_MAX).write_text(str(self.entries + 10_000))
        sh("ip", "netns", "add", self.name)
        self.run("ip", "link", "set", "lo", "up")
        # A veth into a second namespace that drops it all; one permanent neighbour, no ARP.
        sh("ip", "netns", "add", self.sink)
        sh("ip", "link", "add", "d0", "netns", self.name, "type", "veth", "peer", "name", "d1",
           "netns", self.sink)
        sh("ip", "-n", self.sink, "link", "set", "d1", "up")
        self.run("ip", "addr", "add", "10.201.0.1/30", "dev", "d0")
        self.run("ip", "link", "set", "d0", "up")
        self.run("ip", "neigh", "add", "10.201.0.2", "lladdr", "02:00:00:00:00:02", "dev", "d0",
                 "nud", "permanent")
        self.run("ip", "route", "add", "10.200.0.0/16", "via", "10.201.0.2", "dev", "d0")
        for k in ("net.netfilter.nf_conntrack_udp_timeout=3600",
                  "net.netfilter.nf_conntrack_acct=1", "net.netfilter.nf_conntrack_timestamp=1"):
            self.run("sysctl", "-qw", k)
        rules = "\n".join(f"    ip daddr 10.200.{32 * z}.0/19 ct zone set {z + 1}"
                          for z in range(8))
        self.run("nft", "-f", "-", input=f"""
table ip bench {{
  chain out {{
    type filter hook output priority raw; policy accept;
{rules}
  }}
}}
""")
        self.run(sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); "
                 f"from integration.cttable import fill; fill({self.entries})",
                 timeout=300 + self.entries / 2000)
        return self

    def destroy(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)
        sh("ip", "netns", "del", self.sink, check=False)
        if self._old_max is not None:
            try:
                Path(CT_MAX).write_text(self._old_max)
            except OSError:
                pass                # entries still dying: the kernel refuses nothing here
            self._old_max = None

    def __enter__(self) -> "ConntrackTable":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.destroy()


@contextmanager
def table_agent(table: ConntrackTable, workdir: Path, *args: str):
    """A real `ovsfoot agent --source ctnetlink` on `table`, with an ovsdb-server of its
    own (no ovs-vswitchd), after its first dump."""
    from integration.agentproc import AgentProcess
    from integration.sandbox import Ovs, wait_for
    ovs = Ovs(workdir, bridge="br-ct").start_db().create_bridge()
    agent = AgentProcess(ovs, "--source=ctnetlink", f"--netns={table.name}", *args)
    try:
        agent.start()
        wait_for(lambda: agent.json("stats")["source"]["polls"] >= 1, timeout=120,
                 what="the agent's first dump")
        yield agent
    finally:
        agent.stop()
        ovs.stop_all()


def unixctl_during_polls(agent, polls: int = 2) -> dict:
    """`ovs-appctl -t ovsfoot version` asked back to back until the agent has finished
    `polls` more dumps, alternating with the same question to the sandbox's
    ovsdb-server (a C daemon the dumps cannot hold up: what the machine itself
    allows). Returns each answer's time (ms), for both, the agent's peak RSS (VmHWM,
    KiB), its source stats and its warnings about slow polls."""
    first = agent.json("stats")["source"]["polls"]
    answers, baseline = [], []
    ovsdb = str(agent.ovs.dir / "ovsdb-server.ctl")
    while True:
        for target, into in (("ovsfoot", answers), (ovsdb, baseline)):
            t0 = time.perf_counter()
            out = agent.ovs.appctl(target, "version")
            into.append((time.perf_counter() - t0) * 1000)
            if not out:
                raise RuntimeError(f"ovs-appctl -t {target} version answered nothing")
        stats = agent.json("stats")["source"]
        if stats["polls"] >= first + polls:
            break
    with open(f"/proc/{agent.proc.pid}/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return {"answers_ms": answers, "ovsdb_server_ms": baseline, "peak_rss_kib": hwm,
            "stats": stats,
            "warned": [line for line in agent.log_text().splitlines()
                       if "longer than --interval" in line]}
