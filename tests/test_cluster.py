"""The cluster view in OVN Southbound: two chassis, a 3-member clustered SB.

Chassis A learns a workload heavy from a real elephant (kernel conntrack in
OVN's zones, see conftest.py); chassis B reads it from SB and classes a new
replica of that workload heavy before it sends a byte. Losing the SB leader
loses nothing.
"""

import pytest

from conftest import destroy_node, make_central, make_node
from integration.sandbox import sh, wait_for

WEB = "shop/web"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    central = make_central(tmp, sb_members=3)
    a = make_node(tmp, "ca", central)
    b = make_node(tmp, "cb", central, pods={}, own_netns=True, encap_ip="127.0.0.2")
    agents = [a.agent("--heavy-at=1").start(), b.agent("--heavy-at=1").start()]
    yield central, a, b, agents
    for agent in agents:
        agent.stop()
    destroy_node(a)
    destroy_node(b)
    central.stop_all()


def chassis_private(central, node) -> dict[str, str]:
    name = f"hv-{node.prefix}"
    out = sh("ovn-sbctl", f"--db={central.sb}", "--bare", "--columns=external_ids", "find",
             "Chassis_Private", f"name={name}", env=central.env)
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def test_learned_class_crosses_to_another_chassis(cluster):
    central, a, b, (agent_a, agent_b) = cluster
    a.iperf("p1", "p2", seconds=2)
    ids = wait_for(lambda: (c := chassis_private(central, a)).get(f"ovsfoot-class-{WEB}") and c,
                   what="chassis A's learned class in SB")
    assert ids[f"ovsfoot-class-{WEB}"] == "heavy"
    assert ids["ovsfoot-footprint"] in ("heavy", "light") and "ovsfoot-ts" in ids
    ids_b = chassis_private(central, b)
    assert not any(k.startswith("ovsfoot-class-") for k in ids_b)   # B learned nothing itself
    assert ids_b["ovsfoot-footprint"] == "light" and ids_b["ovsfoot-elephants"] == "0"
    wait_for(lambda: agent_b.json("workload/show").get(WEB, {}).get("cluster") == "heavy",
             what="chassis B to read A's class")
    # A replica of shop/web redeployed on chassis B: classed before it sends a byte.
    b.add_pod("b1", "shop_web-7d9f8b6c5d-zz9kq", {}, WEB, 21)
    ids = wait_for(lambda: (i := b.ovs.external_ids("Interface", b.pods["b1"].interface))
                   .get("ovsfoot-workload-class") and i, what="the replica on B to be classed")
    assert ids["ovsfoot-workload-class"] == "heavy" and ids["ovsfoot-footprint"] == "heavy"
    assert ids["ovsfoot-elephants"] == "0"


def test_sb_leader_loss_loses_nothing(cluster):
    central, a, b, (agent_a, agent_b) = cluster
    leader = central.sb_leader()
    central.stop(leader)
    wait_for(lambda: central.sb_leader() not in (None, leader), timeout=60,
             what="a new SB leader")
    assert chassis_private(central, a)[f"ovsfoot-class-{WEB}"] == "heavy"
    # A new lesson still crosses: team-a/cache becomes heavy on A and reaches B.
    a.iperf("p3", "p4", seconds=2, port=5210)
    wait_for(lambda: chassis_private(central, a).get("ovsfoot-class-team-a/cache") == "heavy",
             timeout=60, what="the new class in SB after the leader change")
    wait_for(lambda: agent_b.json("workload/show").get("team-a/cache", {}).get("cluster")
             == "heavy", timeout=60, what="chassis B to read it")
    central.start_sb_member(leader)
    assert agent_a.alive() and agent_b.alive()


def test_agent_exit_withdraws_summary_but_keeps_classes(cluster):
    central, a, b, (agent_a, agent_b) = cluster
    assert agent_a.stop() == 0
    ids = chassis_private(central, a)
    assert "ovsfoot-footprint" not in ids and "ovsfoot-elephants" not in ids
    assert ids[f"ovsfoot-class-{WEB}"] == "heavy"
