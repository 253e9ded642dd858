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
from integration.lab_nodes import PKI_NAMES, PROVISION
from integration.lab_report import picture, render
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
