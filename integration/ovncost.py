"""What OVN and OVS spent while something ran: recomputes and reconfigurations.

From the daemons' own counters: `inc-engine/show-stats` of ovn-controller and
ovn-northd (recomputes of the engine nodes that make flows: a full recompute
runs them all) and `coverage/show` of ovs-vswitchd (`bridge_reconfigure`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path

from integration.sandbox import Ovs, sh

FLOW_NODES = {"ovn-controller": ("runtime_data", "logical_flow_output", "physical_flow_output",
                                 "ct_zones"),
              "ovn-northd": ("northd", "lflow")}
_NODE = re.compile(r"^Node: (\S+)\n- recompute:\s+(\d+)", re.M)
_RECONF = re.compile(r"^bridge_reconfigure\s.*total: (\d+)", re.M)


@dataclass(frozen=True)
class Cost:
    controller: int = 0             # ovn-controller flow-node recomputes
    northd: int = 0                 # ovn-northd northd/lflow recomputes
    vswitchd_reconfigures: int = 0

    def __sub__(self, other: "Cost") -> "Cost":
        return Cost(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def at_most(self, other: "Cost") -> bool:
        """No count above `other`'s."""
        return all(getattr(self, f.name) <= getattr(other, f.name) for f in fields(self))


def recomputes(stats: str, nodes) -> int:
    """Recomputes of `nodes` in `inc-engine/show-stats` output (an unknown name: error)."""
    counts = {m.group(1): int(m.group(2)) for m in _NODE.finditer(stats)}
    missing = [n for n in nodes if n not in counts]
    if missing:
        raise RuntimeError(f"inc-engine/show-stats has no node {', '.join(missing)}: "
                           f"this OVN names them {', '.join(sorted(counts))}")
    return sum(counts[n] for n in nodes)


def northd_ctl(rundir: Path) -> Path:
    ctls = sorted(Path(rundir).glob("ovn-northd*.ctl"))
    if not ctls:
        raise RuntimeError(f"no ovn-northd control socket in {rundir}: is ovn-northd running?")
    return ctls[0]


def snapshot(ovs: Ovs, northd_rundir: Path | None) -> Cost:
    """The counters now, of a chassis (`ovs`) and, if given, the central's ovn-northd."""
    controller = recomputes(ovs.appctl("ovn-controller", "inc-engine/show-stats"),
                            FLOW_NODES["ovn-controller"])
    northd = 0
    if northd_rundir is not None:
        northd = recomputes(sh("ovs-appctl", "-t", str(northd_ctl(northd_rundir)),
                               "inc-engine/show-stats"), FLOW_NODES["ovn-northd"])
    m = _RECONF.search(ovs.appctl("ovs-vswitchd", "coverage/show"))
    return Cost(controller, northd, int(m.group(1)) if m else 0)


def measure(ovs: Ovs, central, fn) -> Cost:
    """What `fn()` cost: counters after minus before (`central`: an OvnCentral or None)."""
    rundir = central.dir if central is not None else None
    before = snapshot(ovs, rundir)
    fn()
    return snapshot(ovs, rundir) - before


def northd_explain(rundir: Path) -> None:
    """Makes ovn-northd log why each engine node recomputes (inc_proc_eng at debug
    level, in its log file only): `recompute_reasons` reads it."""
    sh("ovs-appctl", "-t", str(northd_ctl(rundir)), "vlog/set", "inc_proc_eng:file:dbg")


_REASON = re.compile(r"\|inc_proc_eng\|DBG\|node: northd, recompute \(([^)]*)\)")


def recompute_reasons(log: Path, offset: int) -> dict[str, int]:
    """Why ovn-northd's northd node recomputed since byte `offset` of its log, with
    how often: {"missing handler for input SB_port_binding": 1, ...}."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    out: dict[str, int] = {}
    for m in _REASON.finditer(text):
        out[m.group(1)] = out.get(m.group(1), 0) + 1
    return out


def northd_recomputes(rundir: Path) -> int:
    """ovn-northd's flow-node recomputes now (its control socket in `rundir`), for
    a central node whose counters are read apart from any chassis' (the VM lab)."""
    return recomputes(sh("ovs-appctl", "-t", str(northd_ctl(rundir)), "inc-engine/show-stats"),
                      FLOW_NODES["ovn-northd"])
