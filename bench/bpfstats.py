"""What loaded eBPF programs cost, from the kernel's own accounting (bpf_stats).

With `kernel.bpf_stats_enabled=1` the kernel times every run of every program
and adds it to the program's `run_time_ns` and `run_cnt`, shown in the
program fd's /proc/self/fdinfo. The time is the program's own, from just before
to just after it runs (two clock reads of the kernel's own), not the hook's
(a kprobe's breakpoint or an fentry trampoline). Compare a program with an
empty one on the same hooks (bpf/empty_ct.c) to see what its body costs.

    with stats_enabled():
        before = read(progs)
        ...                                   # traffic
        cost = delta(read(progs), before)     # {name: ProgStats}

`Probes` detaches and re-attaches the kprobes a bcc `BPF` object attached at
load, so that the same loaded programs can run with and without their hooks.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


@dataclass(frozen=True, slots=True)
class ProgStats:
    run_time_ns: int
    run_cnt: int

    @property
    def ns_per_run(self) -> float | None:
        return self.run_time_ns / self.run_cnt if self.run_cnt else None


def programs(bpf) -> dict[str, int]:
    """{function name: program fd} of the functions a bcc `BPF` object loaded."""
    return {(n.decode() if isinstance(n, bytes) else n): fn.fd for n, fn in bpf.funcs.items()}


def read(progs: dict[str, int]) -> dict[str, ProgStats]:
    """{name: ProgStats} now, from /proc/self/fdinfo of each program fd."""
    out = {}
    for name, fd in progs.items():
        info = dict(line.split(":", 1) for line in
                    Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines() if ":" in line)
        if "run_time_ns" not in info:
            raise RuntimeError(f"fd {fd} ({name}) has no run_time_ns in its fdinfo: "
                               "not a bpf program, or a kernel before 5.1")
        out[name] = ProgStats(int(info["run_time_ns"]), int(info["run_cnt"]))
    return out


def delta(after: dict[str, ProgStats], before: dict[str, ProgStats]) -> dict[str, ProgStats]:
    return {n: ProgStats(a.run_time_ns - before[n].run_time_ns, a.run_cnt - before[n].run_cnt)
            for n, a in after.items()}


@contextmanager
def stats_enabled():
    """kernel.bpf_stats_enabled=1 for the duration (it costs two clock reads per run,
    for every program on the machine), then what it was."""
    was = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1")
    try:
        yield
    finally:
        STATS_SYSCTL.write_text(was)


class Probes:
    """The kprobes a bcc `BPF` object attached at load, detached and attached again."""

    def __init__(self, bpf):
        if getattr(bpf, "kfunc_entry_fds", None):
            raise ValueError("Probes handles kprobes; this object attached fentry programs")
        self.bpf = bpf
        self.probes = {ev: list(fns) for ev, fns in bpf.kprobe_fds.items()}

    def detach(self) -> None:
        for ev, fns in self.probes.items():
            for fn in fns:
                self.bpf.detach_kprobe_event_by_fn(ev, fn)

    def attach(self) -> None:
        for ev, fns in self.probes.items():
            for fn in fns:
                self.bpf.attach_kprobe(event=ev[2:], fn_name=fn)
