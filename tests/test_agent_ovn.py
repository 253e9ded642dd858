"""The agent against a real OVN chassis, with traffic through kernel conntrack.

See conftest.py: the kernel conntrack path stands in for the OVS kernel
datapath, which tests/test_lab.py covers in the VM.
"""

import json
import subprocess
import time


from conftest import wait_elephants
from integration.sandbox import sh, wait_for

SHOW_COMMANDS = ["footprint/show", "elephant/list", "zone/map", "workload/show",
                 "threshold/show", "stats"]


def iface_ids(node, pod):
    return node.ovs.external_ids("Interface", node.pods[pod].interface)


def test_zone_map_is_what_ovn_controller_wrote(node, agent):
    written = node.ovs.zones()
    assert {p.lport for p in node.pods.values()} <= written.keys()
    zmap = agent.json("zone/map")
    for pod in node.pods.values():
        entry = zmap[str(pod.zone)]
        assert entry["owner"] == pod.lport
        assert entry["kind"] == "port"
        assert entry["interface"] == pod.interface
        assert entry["workload"] == pod.workload
    routers = {int(z): e for z, e in zmap.items() if e["kind"] == "router"}
    datapath_zones = {z for name, z in written.items() if name.endswith(("_dnat", "_snat"))}
    assert set(routers) == datapath_zones and routers


def test_elephant_attributed_published_and_withdrawn(node, agent):
    node.ovs.vsctl("set", "Interface", node.pods["p1"].interface, "external_ids:owner=cni")
    zones_before = node.ovs.zones()
    mice = [node.popen("p4", "sockperf", "server", "-i", node.pods["p4"].ip, "-p", "11111")]
    try:
        wait_for(lambda: "11111" in node.ns_exec("p4", "ss", "-lun"), what="sockperf server")
        mice.append(node.popen("p3", "sockperf", "ping-pong", "-i", node.pods["p4"].ip,
                               "-p", "11111", "-t", "6", "--mps", "1000"))
        p1, p2 = node.pods["p1"], node.pods["p2"]

        def published():
            rows = wait_elephants(agent, lambda rows: len(rows) == 2, what="two elephants")
            ids = wait_for(lambda: (i := iface_ids(node, "p1")).get("ovsfoot-elephants") == "1"
                           and i, what="p1's keys")
            summary = wait_for(lambda: (s := node.ovs.external_ids("Bridge", node.ovs.bridge))
                               .get("ovsfoot-elephants") == "2" and s, what="the node's summary")
            return rows, ids, iface_ids(node, "p2"), summary, \
                [iface_ids(node, mouse) for mouse in ("p3", "p4")]
        rows, ids, ids2, summary, mice_ids = node.iperf("p1", "p2", seconds=20,
                                                        during=published)
    finally:
        for p in mice:
            p.kill()
            p.wait()
    by_port = {r["port"]: r for r in rows}
    assert set(by_port) == {p1.lport, p2.lport}, rows      # the mice are not elephants
    assert by_port[p1.lport]["role"] == "source" and by_port[p1.lport]["zone"] == p1.zone
    assert by_port[p2.lport]["role"] == "sink" and by_port[p2.lport]["zone"] == p2.zone
    assert by_port[p1.lport]["workload"] == "shop/web"
    assert by_port[p2.lport]["workload"] == "shop/db"
    assert all(r["src"] == p1.ip and r["dst"] == p2.ip for r in rows)

    assert ids["ovsfoot-footprint"] == "heavy" and int(ids["ovsfoot-ts"]) > 0
    assert ids["owner"] == "cni" and ids["iface-id"] == p1.lport   # others' keys untouched
    assert ids2["ovsfoot-footprint"] == "heavy"
    for mouse in mice_ids:
        assert mouse["ovsfoot-footprint"] == "light"
        assert mouse["ovsfoot-elephants"] == "0"
    assert summary["ovsfoot-elephants"] == "2" and summary["ovsfoot-footprint"] == "heavy"
    assert summary["ovsfoot-heavy-ports"] == "2"
    assert not any(k.startswith("ovsfoot-") for k in node.ovs.external_ids("Open_vSwitch", "."))

    # The flow has closed: it ends, and its keys are withdrawn.
    wait_elephants(agent, lambda rows: not rows, what="the elephant to end")
    ids = wait_for(lambda: (i := iface_ids(node, "p1")).get("ovsfoot-elephants") == "0" and i,
                   what="p1's keys withdrawn")
    assert ids["ovsfoot-footprint"] == "light"
    summary = node.ovs.external_ids("Bridge", node.ovs.bridge)
    assert summary["ovsfoot-elephants"] == "0" and summary["ovsfoot-footprint"] == "light"
    assert node.ovs.zones() == zones_before          # ct-zone-* keys are ovn-controller's


def test_ipv6_elephant_attributed_published_and_withdrawn(node, agent):
    """The same over IPv6: the v6 tuple, both ends attributed by their ip_addresses' v6
    address and zone, published and withdrawn."""
    p1, p2 = node.pods["p1"], node.pods["p2"]

    def published():        # while the flow runs: it ends when its connection closes
        rows = wait_elephants(agent, lambda rows: len(rows) == 2, what="two IPv6 elephants")
        keys = [wait_for(lambda: (i := iface_ids(node, pod)).get("ovsfoot-elephants") == "1"
                         and i, what=f"{pod}'s keys") for pod in ("p1", "p2")]
        return rows, keys
    rows, keys = node.iperf("p1", "p2", seconds=20, ipv6=True, during=published)
    by_port = {r["port"]: r for r in rows}
    assert set(by_port) == {p1.lport, p2.lport}, rows
    assert by_port[p1.lport]["role"] == "source" and by_port[p1.lport]["zone"] == p1.zone
    assert by_port[p2.lport]["role"] == "sink" and by_port[p2.lport]["zone"] == p2.zone
    assert all(r["src"] == p1.ip6 and r["dst"] == p2.ip6 and r["dport"] == 5201 for r in rows)
    assert all(ids["ovsfoot-footprint"] == "heavy" for ids in keys)
    wait_elephants(agent, lambda rows: not rows, what="the IPv6 elephant to end")
    wait_for(lambda: iface_ids(node, "p1").get("ovsfoot-elephants") == "0",
             what="p1's keys withdrawn")


def test_appctl_answers_every_command(node, agent):
    for cmd in SHOW_COMMANDS:
        assert agent.appctl(cmd).strip()
        json.loads(agent.appctl(cmd, "json"))
    assert agent.appctl("version").startswith("ovsfoot")
    listed = agent.appctl("help")
    assert all(cmd in listed for cmd in SHOW_COMMANDS + ["threshold/set", "exit"])
    for bad in (["footprint/show", "yaml"], ["threshold/set", "bytes=lots"],
                ["threshold/set", "bytes=-5"], ["threshold/set", "speed=3"],
                ["threshold/set", "seconds"], ["zone/map", "json", "extra"]):
        p = subprocess.run(["ovs-appctl", "-t", "ovsfoot", *bad], env=node.ovs.env,
                           capture_output=True, text=True)
        assert p.returncode != 0 and p.stderr.strip() and not p.stdout.strip(), bad
    assert agent.alive()
    assert agent.json("threshold/show")["bytes"] == 5_000_000


def test_live_threshold_change(node, agent):
    out = agent.appctl("threshold/set", "bytes=1000000000000")
    assert "bytes=1000000000000" in out
    node.iperf("p1", "p2", seconds=3)
    assert agent.json("elephant/list") == []
    assert agent.json("stats")["elephants_detected"] == 0
    agent.appctl("threshold/set", "bytes=2000000", "seconds=0.5")
    shown = agent.json("threshold/show")
    assert {k: shown[k] for k in ("bytes", "seconds", "idle_seconds")} == \
        {"bytes": 2000000, "seconds": 0.5, "idle_seconds": 2.0}
    assert shown["heavy_bps"] == 200e6          # untouched
    node.flush_conntrack()
    node.iperf("p1", "p2", seconds=2, port=5202)
    assert agent.json("stats")["elephants_detected"] >= 2


def test_auto_source_falls_back_to_ctnetlink_with_a_reason(node):
    """The host cannot trace conntrack (no kprobes, lockdown, no headers): auto says why."""
    a = node.agent("--source=auto").start(timeout=120)
    try:
        assert a.json("stats")["source"]["source"] == "ctnetlink"
        reason = [line for line in a.log_text().splitlines()
                  if "bpf source unavailable" in line]
        assert len(reason) == 1 and "falling back to ctnetlink" in reason[0]
        assert "--source auto chose ctnetlink" in reason[0]
    finally:
        a.stop()


def test_elephant_ends_when_its_tcp_connection_closes(node, tmp_path):
    """With a 30 s idle timeout, only the close can turn the ports light within 2 s:
    the entry sits in TIME_WAIT for 120 s, and the ctnetlink source ends an elephant
    whose TCP state leaves ESTABLISHED."""
    node.flush_conntrack()
    a = node.agent("--idle-seconds=30", state=tmp_path / "state").start()
    try:
        node.iperf("p1", "p2", seconds=20, during=lambda: wait_for(
            lambda: all(iface_ids(node, p).get("ovsfoot-footprint") == "heavy"
                        for p in ("p1", "p2")), what="p1 and p2 heavy"))
        closed = time.monotonic()
        wait_for(lambda: all(iface_ids(node, p).get("ovsfoot-footprint") == "light"
                             for p in ("p1", "p2")), timeout=35, interval=0.05,
                 what="p1 and p2 light again")
        took = time.monotonic() - closed
        assert took <= 2, f"light {took:.2f} s after the TCP close"
        assert a.json("stats")["source"]["ended"]["tcp_state"] >= 2    # both zones' entries
        assert "TIME_WAIT" in sh("ip", "netns", "exec", node.kp.netns, "conntrack", "-L")
    finally:
        a.stop()


def test_elephant_ends_when_its_entry_is_deleted(node, tmp_path):
    """A DESTROY event (here from `conntrack -F`) ends a followed elephant with its
    final counters, without waiting for the next dump."""
    node.flush_conntrack()
    a = node.agent("--idle-seconds=30", state=tmp_path / "state").start()
    try:
        def delete():
            wait_elephants(a, lambda rows: len(rows) == 2, what="two elephants")
            before = a.json("stats")["elephants_ended"]
            node.flush_conntrack()
            wait_for(lambda: a.json("stats")["source"]["ended"]["destroyed"] == 2, timeout=5,
                     what="both entries' DESTROY events")
            return before
        before = node.iperf("p1", "p2", seconds=40, during=delete)
        stats = a.json("stats")
        assert stats["elephants_ended"] >= before + 2
        assert stats["source"]["ended"]["gone"] == 0     # not a dump that missed them
    finally:
        a.stop()
