"""Restarts and bad input: the agent keeps running and publishes nothing wrongly."""

import subprocess
import sys

import msgpack
from conftest import wait_elephants
from integration.sandbox import wait_for


def iface(node, pod):
    return node.ovs.external_ids("Interface", node.pods[pod].interface)


def elephant_published(node, agent):
    node.iperf("p1", "p2", seconds=20, during=lambda: wait_for(
        lambda: iface(node, "p1").get("ovsfoot-footprint") == "heavy",
        what="p1 published heavy"))


def test_ovsdb_server_restart(node, agent):
    node.ovs.stop("ovsdb-server")
    wait_for(lambda: not (node.ovs.dir / "db.sock").exists(), what="ovsdb-server to stop")
    node.ovs.provision_chassis()
    assert agent.alive()
    wait_for(lambda: agent.json("zone/map"), what="agent to resync")
    elephant_published(node, agent)
    assert "ovsfoot-elephants" in node.ovs.external_ids("Bridge", node.ovs.bridge)


def test_ovn_controller_restart_zones_follow(node, agent):
    node.ovs.stop("ovn-controller")
    node.ovs.provision_chassis()
    wait_for(lambda: all(node.ovs.zones().get(p.lport) for p in node.pods.values()),
             what="ovn-controller to write zones again")
    written = node.ovs.zones()
    zmap = wait_for(lambda: (z := agent.json("zone/map")) and
                    {e["owner"]: int(k) for k, e in z.items()} == written and z,
                    what="the agent's zone map to follow ovn-controller")
    assert agent.alive() and zmap


def test_learned_class_survives_restart_and_reaches_new_port(node):
    node.flush_conntrack()
    a = node.agent("--heavy-at=1").start()
    try:
        elephant_published(node, a)
        wait_for(lambda: iface(node, "p1").get("ovsfoot-workload-class") == "heavy",
                 what="shop/web learned heavy")
        assert a.json("workload/show")["shop/web"]["learned"] == "heavy"
    finally:
        assert a.stop() == 0
    # A clean exit withdraws what it published.
    assert not any(k.startswith("ovsfoot-") for k in iface(node, "p1"))
    node.flush_conntrack()

    b = node.agent("--heavy-at=1", state=a.state).start()
    try:
        ids = wait_for(lambda: (i := iface(node, "p1")).get("ovsfoot-workload-class") and i,
                       what="learned class back from the state file")
        assert ids["ovsfoot-workload-class"] == "heavy" and ids["ovsfoot-footprint"] == "heavy"
        assert ids["ovsfoot-elephants"] == "0"
        # A redeployed replica of shop/web is classed before it sends a byte.
        node.add_pod("p5", "shop_web-7d9f8b6c5d-q7k2m", {}, "shop/web", 5)
        ids = wait_for(lambda: (i := iface(node, "p5")).get("ovsfoot-workload-class") and i,
                       what="the new replica to be classed")
        assert ids["ovsfoot-workload-class"] == "heavy" and ids["ovsfoot-footprint"] == "heavy"
        assert b.json("footprint/show")["ports"]["shop_web-7d9f8b6c5d-q7k2m"]["elephants"] == 0
        # A port of another workload is not.
        assert iface(node, "p3")["ovsfoot-footprint"] == "light"
        assert "ovsfoot-workload-class" not in iface(node, "p3")
    finally:
        b.stop()
        node.ovs.remove_pod("p5")
        node.pods.pop("p5")
        node.central.nbctl("lsp-del", "shop_web-7d9f8b6c5d-q7k2m")


def test_malformed_zones_and_zone_without_port(node, agent):
    # ovn-controller owns ct-zone-* and would clean these up: pause it meanwhile.
    node.ovs.stop("ovn-controller")
    node.ovs.vsctl("set", "Bridge", node.ovs.bridge, 'external_ids:ct-zone-bogus="abc"',
                   'external_ids:ct-zone-ghost="4000"')
    try:
        wait_for(lambda: "4000" in agent.json("zone/map"), what="the ghost zone")
        zmap = agent.json("zone/map")
        assert zmap["4000"]["kind"] == "port" and zmap["4000"]["interface"] is None
        assert not any(e["owner"] == "bogus" for e in zmap.values())
        assert "ignoring malformed zone ct-zone-bogus='abc'" in agent.log_text()
        # Traffic in the ghost's zone: an elephant, attributed to nobody.
        node.kp.set_zone(node.pods["p3"].ns, 4000)
        rows = node.iperf("p3", "p4", seconds=20, during=lambda: wait_elephants(
            agent, lambda r: any(e["zone"] == 4000 for e in r)))
        ghost = [e for e in rows if e["zone"] == 4000]
        assert ghost[0]["port"] is None and "ghost" in ghost[0]["reason"]
        assert iface(node, "p3")["ovsfoot-footprint"] == "light"   # not blamed on p3
        assert agent.alive()
    finally:
        node.kp.set_zone(node.pods["p3"].ns, node.pods["p3"].zone)
        node.ovs.vsctl("remove", "Bridge", node.ovs.bridge, "external_ids", "ct-zone-bogus",
                       "--", "remove", "Bridge", node.ovs.bridge, "external_ids", "ct-zone-ghost")
        node.ovs.provision_chassis()


def test_missing_bridge(node):
    with node.agent(bridge="br-nowhere").start() as a:
        wait_for(lambda: "bridge br-nowhere not found" in a.log_text(), what="the warning")
        assert a.appctl("zone/map") == "no zones on bridge br-nowhere"
        assert a.alive()


def test_corrupt_state_file_is_set_aside(node, tmp_path):
    state = tmp_path / "state"
    state.write_bytes(b"\x93garbage\xff\x00not msgpack")
    with node.agent(state=state).start() as a:
        wait_for(lambda: "is unreadable" in a.log_text(), what="the warning")
        assert a.alive() and a.json("workload/show")
        aside = list(tmp_path.glob("state.corrupt-*"))
        assert aside and aside[0].read_bytes().startswith(b"\x93garbage")


def test_garbage_replay_files(node, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"this is not a recording")
    p = subprocess.run([sys.executable, "-m", "ovsfoot", "agent", f"--db={node.ovs.remote}",
                        "--source=replay", f"--replay={junk}", f"--state={tmp_path}/s"],
                       env=node.ovs.env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "not an ovsfoot event recording" in p.stderr

    # A good header and one good event, then garbage: the good part is used.
    z1 = node.pods["p1"].zone
    good = [2, 0, z1, 6, node.pods["p1"].ip, "10.77.2.2", 40000, 5201,
            10**18, 10**18 - 10**9, 50_000_000, 1000, 40000, 20000, 0]
    half = tmp_path / "half"
    half.write_bytes(msgpack.packb({"magic": "ovsfoot-events", "version": 1, "source": "t"})
                     + msgpack.packb(good) + msgpack.packb([1, "x"]) + b"\xc1\xc1")
    with node.agent(f"--replay={half}", "--speed=0", "--source=replay").start() as a:
        rows = wait_elephants(a, lambda r: len(r) == 1)
        assert rows[0]["port"] == node.pods["p1"].lport
        wait_for(lambda: "stopping replay after 1 events" in a.log_text(), what="replay error")
        assert a.alive() and a.json("stats")["source"]["errors"] == 1
