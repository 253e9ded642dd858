"""What OVN and OVS spend (integration/ovncost.py's counters): during the agents'
elephant phase, during a control phase with the same traffic and no agent, and
during a probe that shows the counters see a recompute; judged against each other."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from integration.lab_elephants import ELEPHANT_S
from integration.ovncost import northd_recomputes, recompute_reasons, snapshot as ovn_snapshot

if TYPE_CHECKING:
    from integration.lab_scenario import Lab

# What the OVN cost counters count (integration/ovncost.py), per daemon.
COST_COUNTERS = {
    "ovn-controller": "recomputes of its flow engine nodes (runtime_data, logical_flow_output, "
                      "physical_flow_output, ct_zones; inc-engine/show-stats)",
    "ovs-vswitchd": "bridge reconfigurations (coverage/show bridge_reconfigure)",
    "ovn-northd": "recomputes of its northd and lflow engine nodes (inc-engine/show-stats)"}


def counters(lab: Lab) -> dict[str, dict[str, int]]:
    """The counters now: ovn-controller and ovs-vswitchd of every chassis,
    ovn-northd of the central node (see COST_COUNTERS)."""
    out = {}
    for hv, ovs in lab.nodes.chassis.items():
        c = ovn_snapshot(ovs, None)
        out[hv] = {"ovn-controller": c.controller, "ovs-vswitchd": c.vswitchd_reconfigures}
    out["central"] = {"ovn-northd": northd_recomputes(lab.nodes.central)}
    return out


def costed(lab: Lab, label: str, phase, seconds: float | None = None) -> float:
    """Runs phase(lab), then idles until `seconds` have passed (if given), and records
    what OVN and OVS spent meanwhile as ovn_cost[label]; returns the seconds taken."""
    northd_log = lab.nodes.central / "ovn-northd.log"
    offset = northd_log.stat().st_size
    before, t0 = counters(lab), time.monotonic()
    phase(lab)
    if seconds is not None:
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    took = time.monotonic() - t0
    after = counters(lab)
    spent = {node: {d: after[node][d] - n for d, n in daemons.items()}
             for node, daemons in before.items()}
    cost = lab.report.data.setdefault("ovn_cost", {"counters": COST_COUNTERS})
    cost[label] = {"seconds": round(took, 1), **spent}
    why = recompute_reasons(northd_log, offset)
    lab.report.data.setdefault("northd_recompute_reasons", {})[label] = why
    lab.report.event(f"OVN/OVS cost of the {label} phase", seconds=round(took, 1),
                     **{n: ",".join(f"{d}={v}" for d, v in x.items())
                        for n, x in spent.items()},
                     **({"northd_why": json.dumps(why)} if why else {}))
    return took


def control_phase(lab: Lab) -> None:
    """The elephant phase's traffic (elephant and mice), with no agent running."""
    if lab.nodes.agents:
        raise RuntimeError(f"agents still running on {', '.join(lab.nodes.agents)}")
    _, mice = lab.traffic.mice(ELEPHANT_S + 6)
    client = lab.traffic.iperf(ELEPHANT_S, 5206)
    r = lab.report
    r.event("control: elephant and mice again, no agents", src="pod1@hv1", dst="pod3@hv2")
    client.wait(60)
    mice.wait(60)
    lab.traffic.kill()


def probe_phase(lab: Lab) -> None:
    """What ovsfoot no longer does, to show that the counters see it: a key set on
    hv3's Open_vSwitch row, then removed (--no-wait: ovs-vswitchd need not reload)."""
    ovs = lab.nodes.chassis["hv3"]
    for change in (("set", "Open_vSwitch", ".", "external_ids:ovsfoot-lab-probe=1"),
                   ("remove", "Open_vSwitch", ".", "external_ids", "ovsfoot-lab-probe")):
        ovs.vsctl("--no-wait", *change)
        time.sleep(2)           # ovn-controller handles each change on its own


def judge_cost(lab: Lab) -> None:
    """No more recomputes or reconfigurations with the agents than without them."""
    r = lab.report
    cost = lab.report.data.get("ovn_cost", {})
    control, agents = cost.get("control"), cost.get("agents")
    if not (control and agents):
        r.check("OVN cost measured in a control phase and with the agents", False,
                f"measured: {', '.join(k for k in cost if k != 'counters') or 'nothing'}")
        return
    for node in (*lab.nodes.chassis, "central"):
        more = {d: f"{n} with the agents > {control[node][d]} without"
                for d, n in agents[node].items() if n > control[node][d]}
        r.check(f"{node}: the agents cost no recompute ({', '.join(agents[node])}: "
                f"no more than the control phase)", not more,
                json.dumps(more or {"agents": agents[node], "control": control[node]}))
    probe = cost.get("probe", {}).get("hv3", {})
    r.check("the counters see a recompute: two writes of hv3's Open_vSwitch row",
            probe.get("ovn-controller", 0) >= 1, json.dumps(probe))
