"""ctnetlink polling at scale, on the host: one full poll of a 100,000-entry table.

A network namespace gets 100,000 conntrack entries in zones 1-8: one UDP
datagram each, sent from inside it to distinct addresses behind a veth
whose other end, in a second namespace, drops them (tracked in OUTPUT only,
zone set by nftables in the raw hook). Then, alternating, `conntrack -L` (conntrack-tools,
output to /dev/null) and one `CtnetlinkSource.poll()` of ovsfoot in a child
process, each timed; the ratio is the median of ovsfoot over the median of
conntrack-tools.

    python -m bench.ctnetlink_scale child NETNS ROUNDS   (internal)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from bench.common import REPO, Result, median, ratio
from integration.programs import require

NS = f"ovsfoot-bench-ct{os.getpid() % 10000}"
SINK = NS + "-sink"


def sh(*cmd, check=True, input=None):
    p = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=120)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return p


def fill(entries: int) -> None:
    """Runs in the namespace (child of `ip netns exec`): one datagram per entry."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    deadline = time.monotonic() + 120
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
                raise TimeoutError("filling the conntrack table took over 120 s")


def setup(entries: int) -> int:
    require("ip", "sysctl", "nft", "conntrack")
    sh("ip", "netns", "add", NS)
    run = lambda *c, **kw: sh("ip", "netns", "exec", NS, *c, **kw)  # noqa: E731
    run("ip", "link", "set", "lo", "up")
    # A veth into a second namespace that drops it all; one permanent neighbour, no ARP.
    sh("ip", "netns", "add", SINK)
    sh("ip", "link", "add", "d0", "netns", NS, "type", "veth", "peer", "name", "d1",
       "netns", SINK)
    sh("ip", "-n", SINK, "link", "set", "d1", "up")
    run("ip", "addr", "add", "10.201.0.1/30", "dev", "d0")
    run("ip", "link", "set", "d0", "up")
    run("ip", "neigh", "add", "10.201.0.2", "lladdr", "02:00:00:00:00:02", "dev", "d0",
        "nud", "permanent")
    run("ip", "route", "add", "10.200.0.0/16", "via", "10.201.0.2", "dev", "d0")
    for k in ("net.netfilter.nf_conntrack_udp_timeout=900", "net.netfilter.nf_conntrack_acct=1",
              "net.netfilter.nf_conntrack_timestamp=1"):
        run("sysctl", "-qw", k)
    rules = "\n".join(f"    ip daddr 10.200.{32 * z}.0/19 ct zone set {z + 1}" for z in range(8))
    run("nft", "-f", "-", input=f"""
table ip bench {{
  chain out {{
    type filter hook output priority raw; policy accept;
{rules}
  }}
}}
""")
    run(sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); "
        f"from bench.ctnetlink_scale import fill; fill({entries})")
    n = int(run("cat", "/proc/sys/net/netfilter/nf_conntrack_count").stdout)
    return n


def child(netns: str, rounds: int) -> dict:
    """One CtnetlinkSource, polled `rounds` times when told to on stdin."""
    from ovsfoot.events import Thresholds
    from ovsfoot.sources.ctnetlink import CtnetlinkSource
    src = CtnetlinkSource(netns=netns, interval=1.0, thresholds=Thresholds())
    print("ready", flush=True)
    for _ in range(rounds):
        sys.stdin.readline()
        t0, c0 = time.perf_counter(), time.process_time()
        src.poll()
        print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                          "entries": src.entries}), flush=True)
    src.close()
    return {}


def run(quick: bool = False, log=print) -> list[Result]:
    entries = 100_000
    rounds = 3 if quick else 5
    try:
        n = setup(entries)
        log(f"ctnetlink: {n:,} conntrack entries in namespace {NS}")
        p = subprocess.Popen([sys.executable, "-m", "bench.ctnetlink_scale", "child", NS,
                              str(rounds)], cwd=str(REPO), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        tools, ours, shown = [], [], []
        for i in range(rounds):
            for which in (("tools", "ovsfoot") if i % 2 == 0 else ("ovsfoot", "tools")):
                if which == "tools":
                    t0 = time.perf_counter()
                    r = subprocess.run(["ip", "netns", "exec", NS, "conntrack", "-L"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       text=True, timeout=300)
                    tools.append(time.perf_counter() - t0)
                    shown.append(r.stderr.strip())
                else:
                    p.stdin.write("go\n")
                    p.stdin.flush()
                    ours.append(json.loads(p.stdout.readline()))
        p.wait(60)
        n_after = int(sh("ip", "netns", "exec", NS, "cat",
                         "/proc/sys/net/netfilter/nf_conntrack_count").stdout)
    finally:
        sh("ip", "netns", "del", NS, check=False)
        sh("ip", "netns", "del", SINK, check=False)
    v, b = median([o["seconds"] for o in ours]), median(tools)
    r = ratio(v, b)
    log(f"ctnetlink: ovsfoot poll {v:.2f} s, conntrack -L {b:.2f} s")
    return [Result("ctnetlink_poll_100k", v, "s per poll", b,
                   "`conntrack -L` (conntrack-tools) on the same table, alternated", r,
                   "ratio <= 2 (within 2x of conntrack-tools)", r is not None and r <= 2,
                   detail={"entries": n, "entries_after": n_after, "rounds": rounds,
                           "ovsfoot": ours, "conntrack_tools_s": tools,
                           "conntrack_tools_said": shown[-1] if shown else None})]


if __name__ == "__main__":
    if sys.argv[1] == "child":
        child(sys.argv[2], int(sys.argv[3]))
    else:
        for res in run(quick="--quick" in sys.argv):
            print(res)
