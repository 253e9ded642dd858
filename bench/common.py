"""What every benchmark reports, and the table `make bench` prints.

A result is a figure measured side by side with a baseline in the same run,
and their ratio; `goal` says what is wanted in words and `met` whether the
figure meets it (None: informational, no goal).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results.json"


@dataclass
class Result:
    name: str
    value: float | None
    unit: str
    baseline: float | None
    baseline_is: str            # what the baseline is, in a few words
    ratio: float | None         # value / baseline unless `ratio_is` says otherwise
    goal: str
    met: bool | None
    ratio_is: str = "value / baseline"
    detail: dict = field(default_factory=dict)

    def record(self) -> dict:
        d = asdict(self)
        del d["name"]
        d["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        return d


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or (isinstance(b, float) and math.isnan(b)):
        return None
    return a / b


def percentile(xs: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100): a value that was actually measured."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, math.ceil(p / 100 * len(s)) - 1)
    return s[k]


def median(xs):
    return statistics.median(xs) if xs else None


def fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) >= 100):
        return f"{int(x):,}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 0.01 or x == 0:
        return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"
    return f"{x:.2e}"


def table(results: list[Result]) -> str:
    head = ("name", "value", "unit", "baseline", "ratio", "goal", "met?")
    rows = [(r.name, fmt(r.value), r.unit, fmt(r.baseline), fmt(r.ratio), r.goal,
             "-" if r.met is None else ("MET" if r.met else "MISSED")) for r in results]
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out.append("")
    out.append("baselines (and what the ratio is):")
    out += [f"  {r.name}: {r.baseline_is}  [ratio = {r.ratio_is}]" for r in results]
    return "\n".join(out)


def save(results: list[Result], path: Path = RESULTS) -> dict:
    """Merges `results` into the results file (other benchmarks' entries stay)."""
    data = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            data = {}
    for r in results:
        data[r.name] = r.record()
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


def rss_kib() -> int:
    """Peak resident set size of this process (KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def iperf3_pod1_to_pod2(seconds: float) -> str:
    """iperf3 -J from pod1 to pod2's server (bench/vmguest.py's node) for SECONDS: its report."""
    return subprocess.run(["ip", "netns", "exec", "pod1", "iperf3", "-c", "10.0.0.2",
                           "-t", str(seconds), "-J"], capture_output=True, text=True,
                          timeout=seconds + 60).stdout


def received_bps(report: str) -> float | None:
    """The bits per second the server received, from an iperf3 -J report (None: it failed)."""
    try:
        return json.loads(report)["end"]["sum_received"]["bits_per_second"]
    except (ValueError, KeyError):
        return None
