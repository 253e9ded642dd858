"""`make bench`: ovsfoot's benchmarks, each side by side with a baseline in the same run.

    bench/run.py [--only NAME[,NAME]] [--quick] [--list]

Host: pipeline, ctnetlink, publishing, clusterdb, extender, isolate. VM (one boot for all three):
latency, datapath, churn. Prints one table and merges the results into
bench/results.json. See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, table, save  # noqa: E402

HOST = ("pipeline", "ctnetlink", "publishing", "clusterdb", "extender", "isolate")
VM = ("latency", "datapath", "churn")
ALL = HOST + VM
MODULES = {"ctnetlink": "ctnetlink_scale", "clusterdb": "clusterdb_scale"}
ABOUT = {
    "pipeline": "host: 1M recorded events through the agent (replay source, speed 0)",
    "ctnetlink": "host: ctnetlink polls of 100,000 and 1,000,000 entries vs conntrack -L; "
                 "the agent at 1,000,000 (RSS, unixctl)",
    "publishing": "host: 1,000 elephant starts + ends per second, OVSDB transactions",
    "clusterdb": "host: 200 chassis' ClusterPublishers on a 3-member raft cluster vs standalone",
    "extender": "host: scheduler extender, 100 nodes: 20 clients on new connections, keep-alive",
    "isolate": "host: the underlay classifier's ns per packet vs a minimal tc classifier",
    "latency": "VM: threshold crossing -> OVSDB monitor sees the key, bpf vs ctnetlink",
    "datapath": "VM: tracer's ns per call vs an empty program (bpf_stats); iperf3 with/without",
    "churn": "VM: connect/reset churn with the tracer; drops, evictions, agent CPU",
}


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help=f"comma-separated subset of: {','.join(ALL)}")
    ap.add_argument("--quick", action="store_true", help="fewer iterations, smaller inputs")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    a = ap.parse_args(argv)
    if a.list:
        for n in ALL:
            print(f"{n:12} {ABOUT[n]}")
        return 0
    only = a.only.split(",") if a.only else list(ALL)
    bad = [n for n in only if n not in ALL]
    if bad:
        ap.error(f"unknown benchmark(s) {', '.join(bad)}; choose from {', '.join(ALL)}")
    if os.geteuid() != 0:
        ap.error("the benchmarks create network namespaces, OVS daemons and a VM: run as root")
    t0 = time.monotonic()
    results, failed = [], []
    for name in (n for n in HOST if n in only):
        say(f"{name}: {ABOUT[name]}")
        try:
            mod = __import__(f"bench.{MODULES.get(name, name)}",
                             fromlist=["run"])
            results += mod.run(quick=a.quick, log=say)
        except Exception as e:      # one broken benchmark must not hide the others
            failed.append(name)
            say(f"{name} FAILED: {e!r}")
    vm = [n for n in VM if n in only]
    if vm:
        from bench import vmbench
        say(f"{', '.join(vm)}: one VM boot (software emulation; several minutes)")
        try:
            data, work = vmbench.run_vm(a.quick, vm)
            (Path(work) / "vm-data.json").write_text(json.dumps(data, indent=1))
            got = vmbench.results(data, vm)
            results += got
            missing = [n for n in vm if not any(r.name.startswith(
                {"latency": "detect_latency", "datapath": "datapath", "churn": "churn"}[n])
                for r in got)]
            failed += missing
            say(f"VM run: {data['_vm']['seconds']} s, raw data in {work}")
        except Exception as e:
            failed += vm
            say(f"VM benchmarks FAILED: {e!r}")
    if results:
        save(results)
    print()
    print(table(results))
    took = time.monotonic() - t0
    print(f"\n{len(results)} figures in {took / 60:.1f} min"
          + (" (quick)" if a.quick else "") + f"; written to {RESULTS}")
    if failed:
        print(f"FAILED to measure: {', '.join(failed)}")
    missed = [r.name for r in results if r.met is False]
    if missed:
        print(f"goals MISSED: {', '.join(missed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
