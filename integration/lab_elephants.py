"""The lab's elephants: an iperf3 elephant from pod1 on hv1 to pod3 on hv2 beside
sockperf mice, detected in the kernel by the bpf source on both chassis,
attributed as source and sink, published and withdrawn (followed by OVSDB monitor
clients); a live threshold change; an IPv6 elephant; and the ctnetlink source on
the same kind of elephant."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from integration.lab_observe import try_wait
from integration.lab_traffic import iperf_mbits
from integration.sandbox import sh

if TYPE_CHECKING:
    from integration.lab_scenario import Lab

# The elephant phase's elephant: long enough to be seen published while it runs
# when the host is busy and everything in the VM is emulated.
ELEPHANT_S = 20
IPV6_ELEPHANT_S = 10


def elephant_phase(lab: Lab) -> None:
    r = lab.report
    mon = {hv: lab.observer.monitor(hv) for hv in lab.nodes.chassis}
    _, mice = lab.traffic.mice(ELEPHANT_S + 6)
    started = time.time()
    client = lab.traffic.iperf(ELEPHANT_S, 5201)
    r.event("elephant started", src="pod1@hv1", dst="pod3@hv2",
            flow=f"iperf3 200 Mbit/s {ELEPHANT_S} s")
    r.event("mice started", src="pod2@hv1", dst="pod4@hv2", flow="sockperf ping-pong")
    seen, rows1 = {}, {}

    def detected():
        """Asks each elephant's chassis until it lists one; keeps that list."""
        for hv in ("hv1", "hv2"):
            if hv in seen:
                continue
            rows = lab.observer.elephants(hv)
            for e in rows:
                if e["port"] and hv not in seen:
                    seen[hv], rows1[hv] = e, rows
                    r.event(f"elephant detected on {hv}", at=e["detected_ns"] / 1e9,
                            port=e["port"], workload=e["workload"], role=e["role"],
                            zone=e["zone"])
        return len(seen) == 2

    def visible():
        """Do the monitor clients see both elephant ports' keys published?"""
        return all(any(e["table"] == "Interface" and e["name"] == lab.nodes.pods[pod]["interface"]
                       and e["ids"].get("ovsfoot-elephants") == "1"
                       for e in lab.observer.monitor_events(hv))
                   for hv, pod in (("hv1", "pod1"), ("hv2", "pod3")))
    # What was published first, as soon as a consumer sees it: asking the agents
    # (ovs-appctl) is slow while the elephant takes the emulated CPUs.
    try_wait(visible, 60)
    lab.observer.snapshot("during")
    ok = try_wait(detected, 60)
    r.check("elephant detected on both chassis", ok, ",".join(seen))
    for hv in ("hv1", "hv2"):
        rows1.setdefault(hv, [])
    client.wait(60)
    ended = time.time()
    r.event("elephant ended (iperf3 done)", at=ended,
            mbits=iperf_mbits(client.stdout.read()))
    try_wait(lambda: not any(lab.observer.elephants(hv) for hv in lab.nodes.chassis), 60)
    mice.wait(60)
    lab.observer.snapshot("after")
    for m in mon.values():
        m.terminate()
        m.wait()
    lab.traffic.kill()
    judge_elephant(lab, rows1, started, ended)


def judge_elephant(lab: Lab, rows, started, ended) -> None:
    r = lab.report
    p1, p3 = lab.nodes.pods["pod1"], lab.nodes.pods["pod3"]
    for hv, pod, role in (("hv1", p1, "source"), ("hv2", p3, "sink")):
        mine = [e for e in rows[hv] if e["port"] == pod["lport"]]
        r.check(f"{hv}: elephant attributed to {pod['lport']} as {role}",
                len(mine) == 1 and mine[0]["role"] == role
                and mine[0]["workload"] == pod["workload"],
                json.dumps(mine))
        others = [e for e in rows[hv] if e["port"] != pod["lport"]]
        r.check(f"{hv}: no other elephant (the mice are not)", not others, json.dumps(others))
    during, after = r.data["published"]["during"], r.data["published"]["after"]
    for hv, pod in (("hv1", p1), ("hv2", p3)):
        ids = during[hv]["interfaces"][pod["lport"]]
        r.check(f"{hv}: Interface keys published", ids.get("ovsfoot-footprint") == "heavy"
                and ids.get("ovsfoot-elephants") == "1", json.dumps(ids))
        node = during[hv]["node"]
        r.check(f"{hv}: node keys published on Bridge br-int",
                node.get("ovsfoot-footprint") == "heavy"
                and node.get("ovsfoot-elephants") == "1", json.dumps(node))
        root = during[hv]["open_vswitch"]
        r.check(f"{hv}: no ovsfoot key on the Open_vSwitch row", not root, json.dumps(root))
        ids = after[hv]["interfaces"][pod["lport"]]
        r.check(f"{hv}: Interface keys withdrawn after the flow",
                ids.get("ovsfoot-elephants") == "0" and ids.get("ovsfoot-footprint") == "light",
                json.dumps(ids))
        node = after[hv]["node"]
        r.check(f"{hv}: node keys withdrawn after the flow",
                node.get("ovsfoot-elephants") == "0", json.dumps(node))
    for mouse in ("pod2", "pod4"):
        hv, lport = lab.nodes.pods[mouse]["chassis"], lab.nodes.pods[mouse]["lport"]
        ids = during[hv]["interfaces"][lport]
        r.check(f"{hv}: mice port {mouse} stays light", ids.get("ovsfoot-footprint") == "light",
                json.dumps(ids))
    latency = {}
    for hv, pod in (("hv1", p1), ("hv2", p3)):
        crossed = [e["detected_ns"] / 1e9 for e in rows[hv] if e["port"] == pod["lport"]]
        mine = [e for e in lab.observer.monitor_events(hv)
                if e["table"] == "Interface" and e["name"] == pod["interface"]]
        pub = [e["t"] for e in mine if e["ids"].get("ovsfoot-elephants") == "1"]
        gone = [e["t"] for e in mine if pub and e["t"] > pub[0]
                and e["ids"].get("ovsfoot-elephants") == "0"]
        if pub:
            r.event(f"published on {hv}", at=pub[0], interface=pod["interface"],
                    keys="ovsfoot-footprint=heavy ovsfoot-elephants=1")
        if gone:
            r.event(f"withdrawn on {hv}", at=gone[0], interface=pod["interface"],
                    keys="ovsfoot-footprint=light ovsfoot-elephants=0")
        if crossed and pub:
            latency[hv] = round((pub[0] - crossed[0]) * 1000, 1)
    r.data["detection_latency_ms"] = latency
    r.check("detection latency measured (threshold crossing to OVSDB monitor update)",
            len(latency) == 2, json.dumps(latency))


def threshold_phase(lab: Lab) -> None:
    """A live threshold change reaches the kernel program without a reload."""
    r = lab.report
    hv1 = lab.nodes.agents["hv1"]
    before = hv1.json("stats")["elephants_detected"]

    def set_threshold_and_send(threshold: str, said: str, port: int) -> None:
        """Sets hv1's byte threshold live, then sends a 4 s iperf3 flow through it."""
        hv1.appctl("threshold/set", f"bytes={threshold}")
        r.event(f"threshold {said} on hv1 (live)")
        lab.traffic.iperf(4, port).wait(60)
        lab.traffic.kill()
    set_threshold_and_send("100000000000", "raised to 100 GB", 5202)
    time.sleep(1.5)
    quiet = hv1.json("stats")["elephants_detected"] == before
    r.check("raised threshold honoured in the kernel: no elephant", quiet)
    set_threshold_and_send("5000000", "lowered to 5 MB", 5203)
    ok = try_wait(lambda: hv1.json("stats")["elephants_detected"] > before, 20)
    r.check("lowered threshold honoured in the kernel: elephant", ok)
    hv1.appctl("threshold/set", "bytes=10000000")


def ipv6_phase(lab: Lab) -> None:
    """An IPv6 elephant, pod1 -> pod3 on the dual-stack switch: detected on both
    chassis with its v6 tuple, attributed as source and sink, published, withdrawn."""
    r = lab.report
    ends = (("hv1", lab.nodes.pods["pod1"], "source"), ("hv2", lab.nodes.pods["pod3"], "sink"))
    src, dst = lab.nodes.pods["pod1"]["ip6"], lab.nodes.pods["pod3"]["ip6"]
    client = lab.traffic.iperf(IPV6_ELEPHANT_S, 5204, ipv6=True)
    r.event("IPv6 elephant started", src=f"pod1@hv1 {src}", dst=f"pod3@hv2 {dst}")
    found: dict[str, dict] = {}

    def detected():
        for hv, _, _ in ends:
            found.update({hv: e for e in lab.observer.elephants(hv)
                          if hv not in found and (e["src"], e["dst"]) == (src, dst)})
        return len(found) == 2

    def keys(value: str):
        return lambda: all(lab.observer.published(hv)["interfaces"][pod["lport"]]
                           .get("ovsfoot-elephants") == value for hv, pod, _ in ends)
    try_wait(detected, 60)
    published = try_wait(keys("1"), 60)
    for hv, pod, role in ends:
        e = found.get(hv, {})
        if e:
            r.event(f"IPv6 elephant detected on {hv}", at=e["detected_ns"] / 1e9,
                    tuple=f"[{e['src']}]:{e['sport']} -> [{e['dst']}]:{e['dport']}",
                    role=e["role"], zone=e["zone"])
        r.check(f"{hv}: IPv6 elephant attributed to {pod['lport']} as {role}",
                e.get("port") == pod["lport"] and e.get("role") == role
                and e.get("dport") == 5204 and e.get("workload") == pod["workload"],
                json.dumps(e))
    r.check("IPv6 elephant published on both chassis", published)
    client.wait(60)
    lab.traffic.kill()
    r.check("IPv6 elephant withdrawn on both chassis", try_wait(keys("0"), 60))
    r.data["ipv6_elephant"] = found


def ctnetlink_phase(lab: Lab) -> None:
    """The ctnetlink source on the same chassis attributes the same kind of elephant."""
    r = lab.report
    lab.nodes.stop_agents()
    sh("ip", "netns", "exec", "hv1", "conntrack", "-F", check=False)
    lab.nodes.spawn_agents("ctnetlink", ("hv1",))
    lab.nodes.agents_ready()
    client = lab.traffic.iperf(5, 5204)
    rows = []
    try_wait(lambda: rows.extend(lab.observer.elephants("hv1")) or rows, 30)
    client.wait(60)
    lab.traffic.kill()
    p1 = lab.nodes.pods["pod1"]
    mine = [e for e in rows if e["port"] == p1["lport"]]
    r.check("ctnetlink source: same elephant attribution on hv1",
            bool(mine) and mine[0]["role"] == "source"
            and mine[0]["workload"] == p1["workload"],
            json.dumps(mine))
    lab.nodes.stop_agents()
