"""Traffic classes and learned classes: many medium flows (heavy without an
elephant), a loop of short RPC connections (sensitive) and an idle pod (light),
measured in the kernel, published and learned; the scheduler extender's ranking
of new pods by class; and a class learned on one chassis reaching another through
the cluster database."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from integration.lab_nodes import CHASSIS
from integration.lab_observe import try_wait

if TYPE_CHECKING:
    from integration.lab_scenario import Lab

# The traffic phase: 20 flows of 500 kB a second (80 Mbit/s, no elephant) and 100 short
# connections a second; the emulated VM moves far less than real hosts (the RPC loop
# makes 51-60 of its 100 a second), so the heavy threshold is lowered from 200 to
# 40 Mbit/s for it, and the sensitive one from 50 to 25 new flows a second, so that
# a loaded host's slower loop still clears it (threshold/set, live).
SHUFFLE = ("20", "500000")
RPC_RATE = "100"
LAB_HEAVY_BPS = 40_000_000
LAB_SENSITIVE_FLOWS = 25
TRAFFIC_S = 90


def learned_class_phase(lab: Lab) -> None:
    """A class learned on one chassis reaches another through the cluster database:
    hv2 has received elephant after elephant for lab/elephant-server (and learned it
    heavy); hv3, where it never ran, classes it heavy too."""
    r = lab.report
    workload = lab.nodes.pods["pod3"]["workload"]
    here = lab.nodes.agents["hv2"].json("workload/show").get(workload, {})
    r.check(f"hv2 learned {workload} heavy", here.get("learned") == "heavy",
            json.dumps(here))
    rows = [row for row in lab.observer.cluster_rows("Workload_Class")
            if row["workload"] == workload]
    seen = {}

    def classed():
        seen.update(lab.nodes.agents["hv3"].json("workload/show").get(workload, {}))
        return seen.get("cluster") == "heavy" and seen.get("learned") == "heavy"
    ok = try_wait(classed, 20)
    r.event("learned class in the cluster database", workload=workload,
            rows=json.dumps(rows), hv3=seen.get("learned"))
    r.check(f"hv3 classes {workload} heavy, learned on hv2 (cluster database)", ok,
            json.dumps({"hv3": seen, "Workload_Class": rows}))


def traffic_phase(lab: Lab) -> None:
    """Many medium flows (heavy without an elephant: pod1 -> pod3), a loop of short
    RPC connections (sensitive: pod2 -> pod4), an idle pod (light: pod5), each
    measured in the kernel, published and learned; then the extender ranks a
    sensitive, a light and a heavy pod with what the chassis published."""
    r = lab.report
    for a in lab.nodes.agents.values():
        a.appctl("threshold/set", f"heavy-bps={LAB_HEAVY_BPS}",
                 f"sensitive-flows={LAB_SENSITIVE_FLOWS}")
    r.event("traffic phase: heavy-bps and sensitive-flows lowered for the emulated VM",
            bps=LAB_HEAVY_BPS, flows_per_s=LAB_SENSITIVE_FLOWS)
    lab.traffic.workload("pod1", "pod3", 7001, "shuffle", *SHUFFLE, str(TRAFFIC_S))
    lab.traffic.workload("pod2", "pod4", 7002, "rpc", RPC_RATE, str(TRAFFIC_S))
    seen: dict[str, dict] = {}

    def classed():
        seen.update({pod: lab.observer.port_traffic(pod) for pod in ("pod1", "pod2", "pod5")})
        return seen["pod1"]["traffic"] == "heavy" and seen["pod2"]["traffic"] == "sensitive"
    ok = try_wait(classed, TRAFFIC_S - 10)
    snap = {hv: lab.observer.published(hv) for hv in lab.nodes.chassis}
    r.event("traffic classes", **{pod: json.dumps({k: v[k] for k in (
        "class", "traffic", "bps", "flows_per_s", "elephants")}) for pod, v in seen.items()})
    p2 = lab.nodes.pods["pod2"]
    keys = {p: snap[lab.nodes.pods[p]["chassis"]]["interfaces"][lab.nodes.pods[p]["lport"]]
            for p in ("pod1", "pod2", "pod5")}
    r.check("many medium flows: pod1 heavy by throughput, without an elephant",
            ok and seen["pod1"]["elephants"] == 0
            and int(keys["pod1"].get("ovsfoot-bps", 0)) >= LAB_HEAVY_BPS / 2,
            json.dumps({"shown": seen.get("pod1"), "published": keys["pod1"]}))
    r.check("RPC loop: pod2 sensitive, published",
            ok and keys["pod2"].get("ovsfoot-footprint") == "sensitive"
            and int(keys["pod2"].get("ovsfoot-flows-per-s", 0)) >= 20,
            json.dumps({"shown": seen.get("pod2"), "published": keys["pod2"]}))
    # (pod5 is a replica of pod2's workload: once that is learned sensitive, pod5's
    # footprint is too, by design; its own traffic stays light)
    r.check("idle pod5: its traffic stays light", seen["pod5"]["traffic"] == "light"
            and keys["pod5"].get("ovsfoot-bps") == "0", json.dumps(keys["pod5"]))
    learned = {}

    def learned_sensitive():
        learned.update(lab.nodes.agents["hv1"].json("workload/show").get(p2["workload"], {}))
        return learned.get("learned") == "sensitive"
    r.check(f"hv1 learned {p2['workload']} sensitive", try_wait(learned_sensitive, 60),
            json.dumps(learned))
    scores = {}
    for klass in ("sensitive", "light", "heavy"):
        pod = {"metadata": {"name": f"new-{klass}", "namespace": "lab",
                            "labels": {"ovsfoot.io/footprint": klass}}}
        scores[klass] = lab.observer.extender_pick(list(CHASSIS), pod)[1]
    r.event("extender scores by pod class", **{k: json.dumps(v) for k, v in scores.items()})
    s, li, h = scores["sensitive"], scores["light"], scores["heavy"]
    r.check("extender: the sensitive pod ranks the quiet hv3 first, and minds the busy "
            "chassis more than a light pod",
            all(isinstance(x.get(hv), int) for x in (s, li, h) for hv in CHASSIS)
            and s["hv3"] > max(s["hv1"], s["hv2"])
            and all(s[hv] < li[hv] for hv in ("hv1", "hv2")), json.dumps(scores))
    r.check("extender: the heavy pod ranks hv3, without sensitive pods, first",
            isinstance(h.get("hv3"), int) and h["hv3"] > max(h.get("hv1") or 0,
                                                             h.get("hv2") or 0),
            json.dumps(h))
    lab.traffic.kill()
