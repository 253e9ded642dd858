"""ctnetlink polling at scale, on the host: 100,000 and 1,000,000 conntrack entries.

A network namespace gets N conntrack entries in zones 1-8 (`integration.cttable`).
Then, alternating, `conntrack -L` (conntrack-tools, output to /dev/null) and one
`CtnetlinkSource.poll()` of ovsfoot in a child process, each timed; the ratio is the
median of ovsfoot over the median of conntrack-tools. At 1,000,000 entries, a real
`ovsfoot agent --source ctnetlink --interval 1` then runs on the same table: its
peak RSS, and `ovs-appctl -t ovsfoot version` asked back to back during its dumps.

    python -m bench.ctnetlink_scale child NETNS ROUNDS   (internal)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Result, median, percentile, ratio
from integration.cttable import ConntrackTable, table_agent, unixctl_during_polls
from integration.programs import require


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


def alternate(table: ConntrackTable, rounds: int) -> tuple[list[dict], list[dict], str]:
    """ovsfoot's polls and `conntrack -L` runs, alternated: their wall and CPU seconds
    (user + system: the kernel's dump work is done in their receive calls)."""
    p = subprocess.Popen([sys.executable, "-m", "bench.ctnetlink_scale", "child", table.name,
                          str(rounds)], cwd=str(REPO), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    tools, ours, said = [], [], ""
    for i in range(rounds):
        for which in (("tools", "ovsfoot") if i % 2 == 0 else ("ovsfoot", "tools")):
            if which == "tools":
                t0, c0 = time.perf_counter(), _children_cpu()
                r = subprocess.run(["ip", "netns", "exec", table.name, "conntrack", "-L"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True, timeout=600)
                tools.append({"seconds": time.perf_counter() - t0,
                              "cpu_s": _children_cpu() - c0})
                said = r.stderr.strip()
            else:
                p.stdin.write("go\n")
                p.stdin.flush()
                ours.append(json.loads(p.stdout.readline()))
    p.wait(60)
    return ours, tools, said


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run(quick: bool = False, log=print) -> list[Result]:
    require("conntrack")
    results = []
    for entries, name in ((100_000, "100k"), (1_000_000, "1m")):
        rounds = 3 if quick or entries > 100_000 else 5
        with ConntrackTable(entries) as table:
            n = table.count()
            log(f"ctnetlink: {n:,} conntrack entries in namespace {table.name}")
            ours, tools, said = alternate(table, rounds)
            v, b = median([o["seconds"] for o in ours]), median([t["seconds"] for t in tools])
            vc, bc = median([o["cpu_s"] for o in ours]), median([t["cpu_s"] for t in tools])
            r = ratio(v, b)
            log(f"ctnetlink {name}: ovsfoot poll {v:.2f} s ({vc:.2f} s CPU), conntrack -L "
                f"{b:.2f} s ({bc:.2f} s CPU)")
            detail = {"entries": n, "entries_after": table.count(), "rounds": rounds,
                      "ovsfoot": ours, "conntrack_tools": tools, "cpu_ratio": ratio(vc, bc),
                      "conntrack_tools_said": said}
            results.append(Result(
                f"ctnetlink_poll_{name}", v, "s per poll", b,
                "`conntrack -L` (conntrack-tools) on the same table, alternated", r,
                "ratio <= 2 (within 2x of conntrack-tools)", r is not None and r <= 2,
                detail=detail))
            if entries < 1_000_000:
                continue
            results.append(Result(
                "ctnetlink_keeps_up_entries", n / vc, "entries a poll covers per CPU second "
                "(user + system)", n / bc, "the same for `conntrack -L`", ratio(n / vc, n / bc),
                "informational", None, detail={"poll_cpu_s": vc, "conntrack_tools_cpu_s": bc,
                                               "by_wall_time": n / v}))
            with tempfile.TemporaryDirectory(prefix="ovsfoot-bench-ct-") as tmp, \
                    table_agent(table, Path(tmp), "--interval=1") as agent:
                a = unixctl_during_polls(agent, polls=2)
            ms = a["answers_ms"]
            log(f"ctnetlink 1m agent: peak RSS {a['peak_rss_kib'] / 1024:.0f} MiB, "
                f"unixctl p95 {percentile(ms, 95):.0f} ms, max {max(ms):.0f} ms over "
                f"{len(ms)} answers (ovsdb-server p95 {percentile(a['ovsdb_server_ms'], 95):.0f}"
                f" ms), "
                f"poll {a['stats']['last_poll_s']:.2f} s")
            results.append(Result(
                "ctnetlink_agent_rss_1m", a["peak_rss_kib"] / 1024, "MiB peak RSS (VmHWM)",
                None, "", None, "< 200 MiB", a["peak_rss_kib"] < 200 * 1024,
                detail={"stats": a["stats"], "warning": a["warned"]}))
            base = a["ovsdb_server_ms"]
            p95, base95 = percentile(ms, 95), percentile(base, 95)
            results.append(Result(
                "ctnetlink_unixctl_ms_1m", p95, "ms, p95 of `ovs-appctl -t ovsfoot version` "
                "during the agent's dumps", base95, "p95 of the same to its ovsdb-server, "
                "alternated", ratio(p95, base95), "<= 200 ms", p95 <= 200,
                detail={"answers_ms": ms, "ovsdb_server_ms": base, "max_ms": max(ms),
                        "longest_slice_s": a["stats"]["longest_slice_s"],
                        "longest_slice_cpu_s": a["stats"]["longest_slice_cpu_s"]}))
    return results


if __name__ == "__main__":
    if sys.argv[1] == "child":
        child(sys.argv[2], int(sys.argv[3]))
    else:
        for res in run(quick="--quick" in sys.argv):
            print(res)
