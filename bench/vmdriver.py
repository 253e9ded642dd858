"""Datapath cost, in the VM: iperf3 through the OVS kernel bridge, with and without the tracer.

    vmdriver.py WORKDIR PAIRS SECONDS COST_RUNS

Loads ovsfoot's BpfSource (compiling takes about a minute under emulation)
and an empty program on the same kernel functions with the same probe type
(bpf/empty_ct.c), detaches both and writes WORKDIR/driver-ready.json; when
WORKDIR/driver-go appears, with kernel.bpf_stats_enabled=1:

* throughput: PAIRS pairs of iperf3 runs of SECONDS, one without the tracer and
  one with it (order alternating, so drift favours neither). The same loaded
  programs are attached and detached, so "with" is exactly what the agent runs;
* cost: COST_RUNS iperf3 runs with ovsfoot's programs and the empty ones both
  attached, so both run on the very same calls: run time per call of each.

Every run records each program's run time and count (bpf_stats) and the packets
that entered the datapath from the two pods (their OVS-side veths' rx).
Writes WORKDIR/datapath.json. The ring buffer is drained between runs, as the
agent would.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import bcc
from pyroute2 import IPRoute

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bpfstats  # noqa: E402
from bench.common import iperf3_pod1_to_pod2, received_bps  # noqa: E402
from ovsfoot.events import Thresholds  # noqa: E402
from ovsfoot.sources.bpf import BpfSource, plan  # noqa: E402

EMPTY = Path(__file__).resolve().parents[1] / "bpf" / "empty_ct.c"
PORTS = ("pod1-ovs", "pod2-ovs")     # the datapath's ports towards the pods


def datapath_packets() -> tuple[int, int]:
    """Packets and bytes the pods have sent into the datapath (rx of its ports towards
    them; with TSO a packet is up to 64 KB)."""
    with IPRoute() as ip:
        stats = [ip.get_links(ip.link_lookup(ifname=p)[0])[0].get("stats64") for p in PORTS]
    return sum(s["rx_packets"] for s in stats), sum(s["rx_bytes"] for s in stats)


def load_empty(probe: str):
    """bpf/empty_ct.c, built like ovsfoot's program (DESTROY_FN, probe type)."""
    _, _, cflags = plan(bcc)
    return bcc.BPF(src_file=str(EMPTY), cflags=cflags + (["-DUSE_FENTRY"] if probe == "fentry"
                                                          else []))


def main() -> int:
    work, pairs, seconds, cost_runs = (Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]),
                                       int(sys.argv[4]))
    t0 = time.monotonic()
    src = BpfSource(Thresholds())          # the agent's defaults: 10 MB, 1 s
    load_s = time.monotonic() - t0
    empty = load_empty(src.probe)
    tracer, floor = bpfstats.Probes(src.bpf), bpfstats.Probes(empty)
    tracer.detach()
    floor.detach()
    progs = {"ovsfoot": bpfstats.programs(src.bpf), "empty": bpfstats.programs(empty)}
    (work / "driver-ready.json").write_text(json.dumps({"load_s": load_s, "probe": src.probe,
                                                        "programs": list(progs["ovsfoot"])}))
    deadline = time.monotonic() + 1200
    while not (work / "driver-go").exists():
        if time.monotonic() > deadline:
            return 1
        time.sleep(0.5)

    def iperf(label: str, pair: int, attached: list[bpfstats.Probes]) -> dict:
        for probes in attached:
            probes.attach()
        before = {k: bpfstats.read(v) for k, v in progs.items()}
        (pkts, nbytes), t = datapath_packets(), time.monotonic_ns()
        report = iperf3_pod1_to_pod2(seconds)
        elapsed = time.monotonic_ns() - t
        pkts_after, bytes_after = datapath_packets()
        after = {k: bpfstats.read(v) for k, v in progs.items()}
        for probes in attached:
            probes.detach()
        src.run()
        return {"run": label, "pair": pair, "tracer": tracer in attached,
                "bits_per_second": received_bps(report), "elapsed_ns": elapsed,
                "packets": pkts_after - pkts, "bytes": bytes_after - nbytes,
                "progs": {k: {n: [s.run_time_ns, s.run_cnt]
                              for n, s in bpfstats.delta(after[k], before[k]).items()}
                          for k in progs}}

    runs = []
    with bpfstats.stats_enabled():
        for i in range(pairs):
            for on in ((False, True) if i % 2 == 0 else (True, False)):
                runs.append(iperf("throughput", i, [tracer] if on else []))
        for i in range(cost_runs):
            runs.append(iperf("cost", i, [tracer, floor]))
    stats = src.stats()
    src.close()
    empty.cleanup()
    (work / "datapath.json").write_text(json.dumps({"runs": runs, "load_s": load_s,
                                                    "probe": src.probe, "stats": stats},
                                                   indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
