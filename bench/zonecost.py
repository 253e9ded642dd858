"""What the per-zone counters cost the kernel program, in the VM, in one boot.

    python -m bench.zonecost [--quick]          (root; boots the VM, merges results.json)

The guest half (`--guest WORKDIR`) sets up bench/vmguest.py's OVS kernel-datapath
bridge (two pods, ct zones 1 and 2), loads the program twice, without the zone
counters (-DNO_ZONE_COUNTERS: "before") and with them ("after", what the agent
runs), detaches both, then runs iperf3 pod1 -> pod2 with one or the other attached,
alternating in pairs, with kernel.bpf_stats_enabled=1. The result is the per-packet
program's (__nf_ct_refresh_acct) run time per run, after / before; goal <= 1.10.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench.common import (  # noqa: E402
    Result, iperf3_pod1_to_pod2, median, ratio, received_bps, save, table)

HOT = "kprobe____nf_ct_refresh_acct"
CONFIRM = "kprobe____nf_conntrack_confirm"
VM_TIMEOUT = 1500


class Loaded:
    """One loaded BpfSource whose kprobes can be detached and attached again."""

    def __init__(self, extra_cflags: tuple[str, ...] = ()):
        from bench import bpfstats
        from ovsfoot.events import Thresholds
        from ovsfoot.sources.bpf import BpfSource
        self.src = BpfSource(Thresholds(), extra_cflags=extra_cflags)
        self.probes = bpfstats.Probes(self.src.bpf)
        self.progs = bpfstats.programs(self.src.bpf)


def guest(work: Path, pairs: int, seconds: float) -> int:
    from bench import bpfstats
    from bench.vmguest import setup
    ovs, driver = setup(work, monitor=False)
    driver.kill()                   # vmguest's datapath driver: not this benchmark
    try:
        t0 = time.monotonic()
        variants = {"before": Loaded(("-DNO_ZONE_COUNTERS",)), "after": Loaded()}
        load_s = time.monotonic() - t0
        for v in variants.values():
            v.probes.detach()
        runs = []
        with bpfstats.stats_enabled():
            for i in range(pairs):
                for name in (("before", "after") if i % 2 == 0 else ("after", "before")):
                    v = variants[name]
                    v.probes.attach()
                    t0_stats = bpfstats.read(v.progs)
                    report = iperf3_pod1_to_pod2(seconds)
                    used = bpfstats.delta(bpfstats.read(v.progs), t0_stats)
                    v.probes.detach()
                    v.src.run()
                    runs.append({"pair": i, "variant": name,
                                 "bits_per_second": received_bps(report),
                                 "progs": {n: [u.run_time_ns, u.run_cnt] for n, u in used.items()}})
        zones = variants["after"].src.zone_counters()
        (work / "zonecost.json").write_text(json.dumps(
            {"runs": runs, "load_s": load_s,
             "zones_after": {z: [c.bytes, c.packets, c.flows] for z, c in zones.items()}},
            indent=1))
        return 0
    finally:
        ovs.stop_all()


def results(data: dict) -> list[Result]:
    """ns per run of the per-packet and the confirm programs, after / before."""
    out = []
    vm = data.get("_vm", {})
    for prog, name, goal in ((HOT, "zone_counters_ns_per_packet", 1.10),
                             (CONFIRM, "zone_counters_ns_per_new_flow", None)):
        per = {"before": [], "after": []}
        for r in data.get("runs", []):
            ns, cnt = r["progs"].get(prog, [0, 0])
            if cnt:
                per[r["variant"]].append(ns / cnt)
        v, b = median(per["after"]), median(per["before"])
        rt = ratio(v, b)
        out.append(Result(name, v, "ns/run", b, "the same program without the zone "
                          "counters, same boot, alternated in pairs", rt,
                          f"ratio <= {goal:.2f}" if goal else "(informational)",
                          (rt is not None and rt <= goal) if goal else None,
                          detail={"after": [round(x, 1) for x in per["after"]],
                                  "before": [round(x, 1) for x in per["before"]],
                                  "where": f"VM {vm.get('kernel')} (TCG), one boot of "
                                           f"{vm.get('seconds')} s",
                                  "zones_after": data.get("zones_after")}))
    return out


def run(quick: bool = False, log=print) -> list[Result]:
    from integration.vm import ensure_kernel, run_in_vm
    work = Path(tempfile.mkdtemp(prefix="ovsfoot-bench-zonecost-"))
    kernel = ensure_kernel()
    pairs, seconds = (3, 2) if quick else (5, 3)
    log(f"zonecost: one VM boot (loads the program twice: a few minutes), in {work}")
    r = run_in_vm(f"{sys.executable} {BENCH / 'zonecost.py'} --guest {work} {pairs} {seconds}",
                  work, VM_TIMEOUT, kernel=kernel)
    path = work / "zonecost.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data["_vm"] = {"seconds": round(r.seconds, 1), "kernel": kernel.version}
    if not data.get("runs"):
        out = r.output_path.read_text(errors="replace") if r.output_path.exists() else ""
        raise RuntimeError(f"the VM measured nothing (exit {r.rc}), see {work}:\n{out[-3000:]}")
    return results(data)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--guest"]:
        return guest(Path(argv[1]).resolve(), int(argv[2]), float(argv[3]))
    got = run(quick="--quick" in argv)
    save(got)
    print(table(got))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
