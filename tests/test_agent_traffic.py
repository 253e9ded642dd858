"""Throughput and flow rate, per port, from kernel conntrack (the ctnetlink source;
tests/test_bpf_vm.py covers the kernel's per-zone counters), and the classes
they give: a shuffle of many medium flows is heavy without a single elephant, a
loop of short RPC connections is sensitive, an idle pod stays light. Each is
published (buckets, not raw numbers), shown by appctl and learned.

The rate window is 4 s here (10 s by default) to keep the test short, the heavy
threshold 100 Mbit/s (200 by default: this shared machine does not always carry the
shuffle's 320 Mbit/s through kernel conntrack in namespaces), and closed
TCP entries stay 2 s in this conntrack (120 s by default): the RPC loop's entries
would otherwise pile up to where each ctnetlink dump takes seconds."""

import time

import pytest

from integration.sandbox import wait_for
from ovsfoot import api

WINDOW = 4
HEAVY_BPS = 100_000_000


def ids(node, pod):
    return node.ovs.external_ids("Interface", node.pods[pod].interface)


@pytest.fixture
def agent(node, tmp_path):
    with node.short_time_wait():
        node.flush_conntrack()
        a = node.agent(f"--rate-window={WINDOW}", "--heavy-at=2", f"--heavy-bps={HEAVY_BPS}",
                       state=tmp_path / "state").start()
        yield a
        a.stop()
        node.flush_conntrack()


def published(node) -> dict[str, str]:
    """Every ovsfoot key on the pods' Interfaces and the Bridge, by row and key."""
    rows = [("Interface", p.interface) for p in node.pods.values()]
    return {f"{name} {k}": v for table, name in rows + [("Bridge", node.ovs.bridge)]
            for k, v in node.ovs.external_ids(table, name).items() if k.startswith("ovsfoot-")}


def stop(*procs):
    for p in procs:
        p.kill()
        p.wait()


def test_heavy_without_an_elephant_sensitive_rpc_and_idle_light(node, agent):
    # 25 flows of 1.6 MB each per second: 320 Mbit/s, and no flow is an elephant (5 MB)
    shuffle = node.workload("p1", "p2", 7001, "shuffle", "25", "1600000", "60")
    # 150 short connections per second of 64 bytes each
    rpc = node.workload("p3", "p4", 7002, "rpc", "150", "60")
    try:
        heavy = wait_for(lambda: (i := ids(node, "p1")).get("ovsfoot-footprint") == "heavy"
                         and i, timeout=40, what="p1 published heavy")
        sensitive = wait_for(lambda: (i := ids(node, "p3")).get("ovsfoot-footprint")
                             == "sensitive" and i, timeout=40, what="p3 published sensitive")
        assert agent.json("elephant/list") == []             # heavy by throughput alone
        # a bucket: 100M at least (a rate just past the threshold may still be in the
        # bucket below it: buckets hold 10% past their bounds)
        assert int(heavy["ovsfoot-bps"]) >= 50_000_000
        assert heavy["ovsfoot-elephants"] == "0"
        assert int(sensitive["ovsfoot-flows-per-s"]) >= 50    # a bucket: 50, 100 or 200
        assert int(sensitive["ovsfoot-bps"]) < 20_000_000

        show = agent.json("footprint/show")
        p1, p3 = (show["ports"][node.pods[p].lport] for p in ("p1", "p3"))
        assert p1["traffic"] == "heavy" and p1["bps"] > 0.9 * HEAVY_BPS and p1["elephants"] == 0
        assert p3["traffic"] == "sensitive" and p3["flows_per_s"] >= 50
        assert show["node"]["sensitive_ports"] >= 1 and show["node"]["heavy_ports"] >= 1
        summary = node.ovs.external_ids("Bridge", node.ovs.bridge)
        assert int(summary["ovsfoot-sensitive-ports"]) >= 1
        assert int(summary["ovsfoot-bps"]) >= 100_000_000
        with api.Node(node.ovs.remote) as n:               # the library reads them too
            port = n.port_footprint(node.pods["p3"].interface)
            assert port.sensitive and port.flows_per_s >= 50
            assert n.node_footprint(node.ovs.bridge).sensitive_ports >= 1

        # learned after --heavy-at=2 windows
        learned = wait_for(lambda: (w := agent.json("workload/show"))["shop/web"]["learned"]
                           == "heavy" and w["team-a/cache"]["learned"] == "sensitive" and w,
                           timeout=4 * WINDOW + 10, what="the classes learned")
        assert learned["shop/web"]["elephants_seen"] == 0
        assert ids(node, "p3")["ovsfoot-workload-class"] == "sensitive"

        # The rates are averaged over the window and published as buckets: once the
        # classes are learned, steady traffic rewrites no key, though the agent
        # samples the rates every second.
        before = agent.json("stats")["transactions"]
        seen: dict[str, list[str]] = {}
        end = time.monotonic() + 2 * WINDOW
        while time.monotonic() < end:
            for k, v in published(node).items():
                if not k.endswith("-ts") and v not in seen.setdefault(k, []):
                    seen[k].append(v)
            time.sleep(0.25)
        steady = agent.json("stats")["transactions"] - before
        moved = {k: v for k, v in seen.items() if len(v) > 1}
        print(f"transactions in {2 * WINDOW} s of steady traffic: {steady}; moved: {moved}")
        assert steady <= 2          # a noisy rate may cross a bucket's margin and back
    finally:
        stop(*shuffle, *rpc)

    # Idle again: the traffic classes go, the learned ones stay (and keep the ports' class).
    wait_for(lambda: ids(node, "p1").get("ovsfoot-bps") == "0", timeout=3 * WINDOW + 10,
             what="p1's throughput back to 0")
    assert ids(node, "p1")["ovsfoot-footprint"] == "heavy"            # learned
    assert ids(node, "p3")["ovsfoot-footprint"] == "sensitive"        # learned


def test_an_idle_pod_stays_light_and_the_threshold_moves_live(node, agent):
    shuffle = node.workload("p1", "p2", 7003, "shuffle", "10", "1000000", "60")
    try:
        wait_for(lambda: int(ids(node, "p1").get("ovsfoot-bps", "0")) >= 50_000_000,
                 timeout=30, what="p1's throughput published")
        assert ids(node, "p1")["ovsfoot-footprint"] == "light"     # 80 Mbit/s < 100
        agent.appctl("threshold/set", "heavy-bps=20000000")
        assert agent.json("threshold/show")["heavy_bps"] == 20e6
        wait_for(lambda: ids(node, "p1").get("ovsfoot-footprint") == "heavy", timeout=15,
                 what="p1 heavy at the lower threshold")
        for idle in ("p3", "p4"):
            assert ids(node, idle)["ovsfoot-footprint"] == "light"
            assert ids(node, idle)["ovsfoot-bps"] == "0"
            assert ids(node, idle)["ovsfoot-flows-per-s"] == "0"
    finally:
        stop(*shuffle)
