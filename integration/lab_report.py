"""The lab's report: the timeline and checks the scenario records in the VM
(Report, saved as JSON), and what the host makes of it: the printed timeline and
tables (render) and the picture of the experiment (picture)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from integration import tracer_matrix


@dataclass
class Report:
    t0: float = field(default_factory=time.time)
    timeline: list[dict] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def event(self, what: str, at: float | None = None, **kw) -> None:
        at = time.time() if at is None else at
        row = {"t": round(at - self.t0, 3), "what": what, **kw}
        self.timeline.append(row)
        print(f"[lab {row['t']:8.3f}s] {what}" + "".join(f" {k}={v}" for k, v in kw.items()),
              flush=True)

    def check(self, name: str, ok: bool, detail="") -> bool:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        print(f"[lab check] {'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)
        return ok

    def save(self, path: Path) -> None:
        self.timeline.sort(key=lambda r: r["t"])
        path.write_text(json.dumps({"t0": self.t0, "timeline": self.timeline,
                                    "checks": self.checks, **self.data}, indent=1))


def render(report: dict) -> str:
    lines = ["", "== ovsfoot lab: timeline =="]
    for row in report["timeline"]:
        extra = "  ".join(f"{k}={v}" for k, v in row.items() if k not in ("t", "what"))
        lines.append(f"  {row['t']:8.3f} s  {row['what']}" + (f"  ({extra})" if extra else ""))
    latency = report.get("detection_latency_ms", {})
    if latency:
        lines.append("")
        lines.append("detection latency, threshold crossing -> OVSDB monitor sees the key: "
                     + ", ".join(f"{hv} {ms} ms" for hv, ms in sorted(latency.items())))
    for label, chassis in report.get("published", {}).items():
        lines.append("")
        lines.append(f"== published external_ids ({label} the elephant) ==")
        for hv, snap in sorted(chassis.items()):
            node = " ".join(f"{k}={v}" for k, v in sorted(snap["node"].items()))
            lines.append(f"  {hv} Bridge br-int: {node}")
            for lport, ids in sorted(snap["interfaces"].items()):
                kv = " ".join(f"{k}={v}" for k, v in sorted(ids.items()) if k != "ovsfoot-ts")
                lines.append(f"  {hv} Interface {lport}: {kv}")
            if label == "during" and snap.get("footprint_show"):
                lines.append(f"  {hv} $ ovs-appctl -t ovsfoot footprint/show")
                lines += [f"    {x}" for x in snap["footprint_show"].splitlines()]
        cluster = report.get("cluster_view", {}).get(label, {})
        for name, row in sorted(cluster.items()):
            kv = " ".join(f"{k}={v}" for k, v in row.items()) if isinstance(row, dict) else row
            lines.append(f"  cluster database Chassis {name}: {kv}")
    exp = report.get("experiment")
    if exp:
        lines.append("")
        lines.append(f"== the experiment: mice p99 (sockperf ping-pong), bottleneck "
                     f"{exp['bottleneck']} ==")
        lines.append(f"  {'':28} {'here':>10}   {'seed (LPC 2019)':>15}")
        for i, (case, ms) in enumerate(exp["p99_ms"].items()):
            seed = exp["seed_p99_ms"].get(case)
            where = f"   on {exp['placed_on']}" if case == "placed by ovsfoot" else ""
            lines.append(f"  ({'abcd'[i]}) {case:24} {_ms(ms):>10}   {_ms(seed):>15}{where}")
        lines += render_isolation(exp)
    lines += render_cost(report.get("ovn_cost"))
    for phase, why in (report.get("northd_recompute_reasons") or {}).items():
        if why:
            lines.append(f"  ovn-northd recomputed in the {phase} phase: "
                         + ", ".join(f"{n}x {reason}" for reason, n in why.items()))
    lines.append("")
    lines.append("== the tracer on Debian's kernels (the last `make kernels`) ==")
    lines += tracer_matrix.render(report.get("kernel_matrix") or {}) or [
        "  not run on this machine yet: `make kernels` (about 5 min per kernel)"]
    lines.append("")
    lines.append("== checks ==")
    for c in report["checks"]:
        lines.append(f"  {'PASS' if c['ok'] else 'FAIL'}  {c['name']}"
                     + ("" if c["ok"] else f"  {c['detail']}"))
    return "\n".join(lines)


def render_isolation(exp: dict) -> list[str]:
    """Row (d)'s details: the rounds alternated with (b), the elephant's throughput."""
    if "rounds" not in exp:
        return []
    lines = ["  rounds, in order: " + ", ".join(
        f"({r['row']}) {_ms(r['p99_ms'])} / elephant {r['elephant_mbits']} Mbit/s"
        for r in exp["rounds"])]
    by_row = exp.get("elephant_mbits_by_row", {})
    lines.append(f"  elephant throughput: {by_row.get('d')} Mbit/s isolated (d), "
                 f"{by_row.get('b')} Mbit/s not (b); first isolated packet "
                 f"{exp.get('detection_to_isolation_ms')} ms after detection")
    for goal, v in (exp.get("goals") or {}).items():
        lines.append(f"  goal {goal}: {v['ratio']}, {'met' if v['met'] else 'MISSED'}")
    return lines


def render_cost(cost: dict | None) -> list[str]:
    """The OVN cost table: counters per daemon, control phase vs. the agents' phase."""
    if not cost or not all(k in cost for k in ("control", "agents")):
        return []
    agents = cost["agents"]
    phases = [p for p in ("control", "agents", "probe") if p in cost]
    what = {"ovn-controller": "recomputes", "ovn-northd": "recomputes",
            "ovs-vswitchd": "reconfigures"}
    lines = ["", "== what OVN and OVS spent: a control phase without agents vs. the agents' "
                 "elephant phase ==",
             f"  {'':34}" + "".join(f" {p:>9}" for p in phases),
             f"  {'phase length (s)':34}" + "".join(f" {cost[p]['seconds']:>9}" for p in phases)]
    nodes = [n for n in agents if isinstance(agents[n], dict)]
    for node in sorted(nodes, key=lambda n: (n == "central", n)):
        for daemon in agents[node]:
            label = f"{node} {daemon} {what.get(daemon, '')}"
            lines.append(f"  {label:34}" + "".join(
                f" {cost[p].get(node, {}).get(daemon, '-'):>9}" for p in phases))
    if "probe" in cost:
        lines.append("  (probe: a key set on hv3's Open_vSwitch row and removed, what ovsfoot "
                     "no longer does)")
    return lines


def _ms(v) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def picture(report: dict, path: Path) -> Path | None:
    """The experiment as a PNG: the mice latency CDFs of (a)-(d) and the elephant's
    throughput over time with marks. None (and a line saying why) without matplotlib."""
    exp = report.get("experiment") or {}
    cdfs, series = exp.get("latency_cdf_ms") or {}, exp.get("elephant_mbits") or []
    if not cdfs and not series:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("ovsfoot lab: no picture: matplotlib is not installed (Debian: "
              "python3-matplotlib, `make deps`)")
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for label, values in cdfs.items():
        if values:
            xs = sorted(values)
            left.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post",
                      label=f"{label} (p99 {xs[min(len(xs) - 1, int(len(xs) * 0.99))]:.2f} ms)")
    left.set_xscale("log")
    left.set_xlabel("mice latency (ms; sockperf ping-pong, half the round trip)")
    left.set_ylabel("fraction of messages")
    left.set_title("mice latency CDF")
    left.grid(True, which="both", alpha=0.3)
    left.legend(loc="lower right", fontsize=8)
    if series:
        t0 = exp.get("elephant_started") or series[0][0]
        right.plot([t - t0 for t, _ in series], [m for _, m in series], color="tab:gray",
                   linewidth=1, label="elephant Mbit/s (at pod3)")
        colors = {"detection": "tab:red", "publication": "tab:orange",
                  "isolation": "tab:green", "placement": "tab:blue"}
        for mark in exp.get("marks", []):      # close together: named in the legend
            kind = mark["kind"]
            right.axvline(mark["t"] - t0, color=colors.get(kind, "black"),
                          linestyle="-" if kind in ("detection", "publication") else "--",
                          linewidth=1, label=f"{mark['label']} ({mark['t'] - t0:.3f} s)")
        for t_from, t_to, row in exp.get("windows", []):
            right.axvspan(t_from - t0, t_to - t0, alpha=0.08,
                          color="tab:green" if row == "d" else "tab:red")
        right.set_ylim(0, max(m for _, m in series) * 1.5 + 1)
        right.legend(loc="upper right", fontsize=7)
        right.set_xlabel("seconds since the elephant started")
        right.set_ylabel("Mbit/s")
        right.set_title("the elephant's throughput (shaded: (b) red, (d) green)")
        right.grid(True, alpha=0.3)
    fig.suptitle(f"ovsfoot lab: mice beside an elephant, bottleneck {exp.get('bottleneck', '')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
