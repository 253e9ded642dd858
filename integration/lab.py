"""`python -m integration.lab` (`make lab`): the whole story in one command.

Boots a VM with a Debian kernel (virtme-ng; KVM when it works, software
emulation otherwise) on this machine's own root filesystem, runs
integration/lab_scenario.py in it (OVN central + three chassis on the OVS kernel
datapath, Geneve between them, ovsfoot's 3-member cluster database, pods, an
elephant and mice, an ovsfoot agent per chassis), then prints the timeline, what
was published and each agent's footprint/show, what OVN and OVS spent with and
without the agents, and writes the same as JSON.
Exits non-zero if anything expected did not happen.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from integration import tracer_matrix
from integration.lab_isolation import picture
from integration.lab_scenario import PKI_NAMES, PROVISION
from integration.vm import ensure_kernel, progress, run_in_vm

VM_TIMEOUT = 1800


def run(workdir: Path) -> tuple[dict | None, str]:
    """Runs the scenario in the VM; returns its report (None if there is none) and output."""
    kernel = ensure_kernel()
    # The cluster database's keys, made here: in the VM, under emulation, they take a minute.
    pki = subprocess.run(["bash", str(PROVISION / "pki.sh"), "--dir", str(workdir / "pki"),
                          *PKI_NAMES], capture_output=True, text=True, timeout=120)
    if pki.returncode:
        return None, f"provision/pki.sh failed:\n{pki.stdout}{pki.stderr}"
    cmd = f"{sys.executable} -m integration.lab_scenario {workdir}"
    # the scenario's `-m integration...` from the source tree: the package is not installed
    result = run_in_vm(cmd, workdir, VM_TIMEOUT, kernel=kernel,
                       env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    output = result.output_path.read_text(errors="replace") if result.output_path.exists() else ""
    path = workdir / "lab-report.json"
    if not path.exists():
        return None, output + f"\n--- VM console ---\n{result.log}"
    report = json.loads(path.read_text())
    report["vm"] = {"kernel": kernel.version, "seconds": round(result.seconds, 1),
                    "exit_status": result.rc}
    report["kernel_matrix"] = tracer_matrix.load()
    return report, output


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


def main(args) -> int:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ovsfoot-lab-"))
    workdir.mkdir(parents=True, exist_ok=True)
    progress(f"lab work directory: {workdir}")
    report, output = run(workdir)
    if report is None:
        print(output[-6000:])
        print("ovsfoot lab: the VM produced no report (see above); "
              f"logs are in {workdir}", file=sys.stderr)
        return 1
    print(render(report))
    Path(args.report).write_text(json.dumps(report, indent=1))
    png = picture(report, Path(args.report).with_suffix(".png"))
    if png:
        print(f"\npicture: {png} (mice latency CDFs (a)-(d), the elephant's throughput)")
    failed = [c for c in report["checks"] if not c["ok"]]
    if failed:
        print(f"\nreport: {args.report}; logs: {workdir}")
        print(f"ovsfoot lab: {len(failed)} check(s) failed; agent and daemon logs are in "
              f"{workdir}", file=sys.stderr)
        return 1
    if args.workdir:
        print(f"\nreport: {args.report}; logs: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"\nreport: {args.report} (keep the logs with --workdir DIR)")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m integration.lab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help="where the lab keeps its files (default: a temp dir)")
    p.add_argument("--report", default="lab-report.json", help="JSON report to write")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


if __name__ == "__main__":      # `make lab`; the lab's own entry point, not the product's
    _args = parser().parse_args()
    logging.basicConfig(level=(logging.DEBUG if _args.verbose > 1 else
                               logging.INFO if _args.verbose else logging.WARNING),
                        format="%(asctime)s|%(name)s|%(levelname)s|%(message)s")
    sys.exit(main(_args))
