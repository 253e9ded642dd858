"""Datapath cost, in the VM: iperf3 through the OVS kernel bridge without and with the tracer.

    vmdriver.py WORKDIR PAIRS SECONDS

Loads ovsfoot's BpfSource once (compiling takes about a minute under
emulation), detaches its kprobes and writes WORKDIR/driver-ready.json; when
WORKDIR/driver-go appears it runs PAIRS pairs of iperf3 runs of SECONDS each,
one without the tracer attached and one with it (order alternating, so drift
does not favour either), with kernel.bpf_stats_enabled=1, and writes
WORKDIR/datapath.json. The same loaded programs are attached and detached, so
"with" is exactly what the agent runs. The ring buffer is drained between runs,
as the agent would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ovsfoot.events import Thresholds
from ovsfoot.sources.bpf import BpfSource


def prog_ids(bpf) -> dict[str, int]:
    """{function name: kernel program id} of the loaded programs (from fdinfo)."""
    out = {}
    for name, fn in bpf.funcs.items():
        for line in Path(f"/proc/self/fdinfo/{fn.fd}").read_text().splitlines():
            if line.startswith("prog_id:"):
                out[name.decode() if isinstance(name, bytes) else name] = int(line.split()[1])
    return out


def bpftool_stats(ids: dict[str, int]) -> dict[str, tuple[int, int]]:
    """{function: (run_time_ns, run_cnt)} from `bpftool prog show id N -j`."""
    out = {}
    for name, pid in ids.items():
        p = subprocess.run(["bpftool", "prog", "show", "id", str(pid), "-j"],
                           capture_output=True, text=True, timeout=30)
        d = json.loads(p.stdout or "{}")
        out[name] = (d.get("run_time_ns", 0), d.get("run_cnt", 0))
    return out


def main() -> int:
    work, pairs, seconds = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    t0 = time.monotonic()
    src = BpfSource(Thresholds())          # the agent's defaults: 10 MB, 1 s
    load_s = time.monotonic() - t0
    bpf = src._bpf
    probes = {ev: list(fns) for ev, fns in bpf.kprobe_fds.items()}

    def detach():
        for ev, fns in probes.items():
            for fn in fns:
                bpf.detach_kprobe_event_by_fn(ev, fn)

    def attach():
        for ev, fns in probes.items():
            for fn in fns:
                bpf.attach_kprobe(event=ev[2:], fn_name=fn)

    detach()
    ids = prog_ids(bpf)
    (work / "driver-ready.json").write_text(json.dumps({"load_s": load_s, "programs": ids,
                                                        "probe": src.probe}))
    deadline = time.monotonic() + 1200
    while not (work / "driver-go").exists():
        if time.monotonic() > deadline:
            return 1
        time.sleep(0.5)
    subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"], check=False)
    runs = []
    for i in range(pairs):
        for on in ((False, True) if i % 2 == 0 else (True, False)):
            if on:
                attach()
            before = bpftool_stats(ids)
            t = time.monotonic_ns()
            p = subprocess.run(["ip", "netns", "exec", "pod1", "iperf3", "-c", "10.0.0.2",
                                "-t", str(seconds), "-J"], capture_output=True, text=True,
                               timeout=seconds + 60)
            elapsed = time.monotonic_ns() - t
            after = bpftool_stats(ids)
            if on:
                detach()
            src.run()
            try:
                bps = json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"]
            except (ValueError, KeyError):
                bps = None
            runs.append({"pair": i, "tracer": on, "bits_per_second": bps, "elapsed_ns": elapsed,
                         "progs": {n: [after[n][0] - before[n][0], after[n][1] - before[n][1]]
                                   for n in ids}})
    subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=0"], check=False)
    stats = src.stats()
    src.close()
    (work / "datapath.json").write_text(json.dumps({"runs": runs, "load_s": load_s,
                                                    "stats": stats}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
