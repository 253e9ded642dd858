"""The cluster view in ovsfoot's own clustered database: two chassis, three raft members.

Chassis A learns a workload heavy from a real elephant (kernel conntrack in
OVN's zones, see conftest.py); chassis B reads it from the cluster database and
classes a new replica of that workload heavy before it sends a byte. Agents
connect over SSL with certificates whose CN is their chassis name (RBAC: see
test_clusterdb.py). Losing the raft leader loses nothing; nothing is written
to OVN Southbound.
"""

import json
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import destroy_node, make_central, make_node, wait_elephants
from integration.clusterdb import ClusterDbSandbox
from integration.sandbox import wait_for
from ovsfoot import api

WEB = "shop/web"


def chassis_name(node) -> str:
    return f"hv-{node.prefix}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    db = ClusterDbSandbox(tmp / "db", members=3, ssl=True)
    central = make_central(tmp)
    nodes, agents = [], []
    try:
        db.start()
        a = make_node(tmp, "ca", central)
        nodes.append(a)
        b = make_node(tmp, "cb", central, pods={}, encap_ip="127.0.0.2")
        nodes.append(b)
        for n in (a, b):
            key, cert, ca = db.client_creds(chassis_name(n))
            agents.append(n.agent("--heavy-at=1", f"--cluster-db={db.remote}",
                                  f"--private-key={key}", f"--certificate={cert}",
                                  f"--ca-cert={ca}").start())
        yield db, central, a, b, agents
    finally:
        for agent in agents:
            agent.stop()
        for n in nodes:
            destroy_node(n)
        central.stop_all()
        db.destroy()


def chassis_row(db, node):
    rows = db.rows("Chassis", [["name", "==", chassis_name(node)]])
    return rows[0] if rows else None


def classes(db, node) -> dict[str, str]:
    return {r["workload"]: r["learned"]
            for r in db.rows("Workload_Class", [["chassis", "==", chassis_name(node)]])}


def test_learned_class_crosses_to_another_chassis(cluster):
    db, central, a, b, (agent_a, agent_b) = cluster
    a.iperf("p1", "p2", seconds=2)
    wait_for(lambda: classes(db, a).get(WEB) == "heavy", what="chassis A's lesson in the DB")
    row = wait_for(lambda: chassis_row(db, a), what="chassis A's row")
    assert row["footprint"] in ("heavy", "light") and row["updated"] > 0
    row_b = chassis_row(db, b)
    assert row_b["footprint"] == "light" and row_b["elephants"] == 0
    assert classes(db, b) == {}                            # B learned nothing itself
    wait_for(lambda: agent_b.json("workload/show").get(WEB, {}).get("cluster") == "heavy",
             what="chassis B to read A's class")
    assert agent_b.json("workload/show")[WEB]["class"] == "heavy"    # one rule everywhere
    # A replica of shop/web redeployed on chassis B: classed before it sends a byte.
    b.add_pod("b1", "shop_web-7d9f8b6c5d-zz9kq", {}, WEB, 21)
    ids = wait_for(lambda: (i := b.ovs.external_ids("Interface", b.pods["b1"].interface))
                   .get("ovsfoot-workload-class") and i, what="the replica on B to be classed")
    assert ids["ovsfoot-workload-class"] == "heavy" and ids["ovsfoot-footprint"] == "heavy"
    assert ids["ovsfoot-elephants"] == "0"
    wait_for(lambda: chassis_row(db, b)["heavy_ports"] == 1, what="B's summary: 1 heavy port")


def test_at_most_one_transaction_a_second_and_only_on_change(cluster):
    db, central, a, b, (agent_a, agent_b) = cluster

    def txns():
        return agent_a.json("stats")["cluster_transactions"]
    wait_elephants(agent_a, lambda rows: not rows, what="the earlier elephants to end")
    wait_for(lambda: (r := chassis_row(db, a))["bps"] == 0 and r["flows_per_s"] == 0,
             timeout=60, what="A's throughput and flow rate back to 0 (the rate window)")
    # right after a transaction (a heartbeat at the latest, every 10 s), for 4.5 s
    last = txns()
    wait_for(lambda: txns() > last, timeout=15, what="A's next cluster transaction")
    time.sleep(1.5)
    quiet = txns()
    time.sleep(3)
    assert txns() == quiet                                 # nothing changed: nothing sent
    start, t0 = txns(), time.monotonic()
    a.iperf("p3", "p1", seconds=3, port=5211)              # detect, publish, end, withdraw
    wait_for(lambda: chassis_row(db, a)["elephants"] == 0 and txns() > start,
             what="A's summary back to 0 elephants")
    spent = time.monotonic() - t0
    sent = txns() - start
    assert 0 < sent <= spent + 1, (sent, spent)


def test_raft_leader_loss_loses_nothing(cluster):
    db, central, a, b, (agent_a, agent_b) = cluster
    leader = db.leader()
    db.stop_member(leader)
    try:
        wait_for(lambda: db.leader() not in (None, leader), timeout=60,
                 what="a new raft leader")
        assert classes(db, a)[WEB] == "heavy"
        # A new lesson still crosses: team-a/cache becomes heavy on A and reaches B.
        a.iperf("p3", "p4", seconds=2, port=5210)
        wait_for(lambda: classes(db, a).get("team-a/cache") == "heavy", timeout=60,
                 what="the new class after the leader change")
        wait_for(lambda: agent_b.json("workload/show").get("team-a/cache", {}).get("cluster")
                 == "heavy", timeout=60, what="chassis B to read it")
    finally:
        db.start_member(leader)
    assert agent_a.alive() and agent_b.alive()
    assert agent_a.json("stats")["cluster_failures"] == 0


def test_nothing_in_ovn_southbound(cluster):
    db, central, a, b, agents = cluster
    out = central.sbctl("--bare", "--columns=external_ids", "list", "Chassis_Private")
    assert "ovsfoot-" not in out


def test_agent_exit_withdraws_summary_but_keeps_classes(cluster):
    db, central, a, b, (agent_a, agent_b) = cluster
    assert agent_a.stop() == 0
    assert chassis_row(db, a) is None
    assert classes(db, a)[WEB] == "heavy"
    assert chassis_row(db, b) is not None


def test_a_dead_agent_reads_as_unknown_and_its_restart_replaces_its_keys(cluster, tmp_path):
    """kill -9 during an elephant leaves stale keys; the heartbeat stops, so the
    extender scores the node unknown (not quiet, not heavy), and the library says the
    agent is dead; a restarted agent replaces the keys at once."""
    db, central, a, b, agents = cluster
    key, cert, ca = db.client_creds(chassis_name(a))
    creds = [f"--private-key={key}", f"--certificate={cert}", f"--ca-cert={ca}"]
    # a state of its own, learning nothing heavy here: the node is quiet unless it
    # carries an elephant (its earlier lessons go from the database with its state)
    args = ["--heavy-at=100", f"--cluster-db={db.remote}", "--heartbeat=1", *creds]
    agent = a.agent(*args, state=tmp_path / "a.state").start()
    ext_key, ext_cert, _ = db.client_creds("extender")
    ext = subprocess.Popen(
        [sys.executable, "-m", "ovsfoot", "scheduler-extender", "--listen=127.0.0.1:0",
         f"--cluster-db={db.remote}", f"--private-key={ext_key}", f"--certificate={ext_cert}",
         f"--ca-cert={ca}", "--node-key=name", "--stale-seconds=3",
         f"--log-file={tmp_path}/extender.log"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = ext.stdout.readline().split()[-1]
    node = chassis_name(a)

    def score() -> int:
        body = json.dumps({"Pod": {"metadata": {"name": "mouse-0", "namespace": "shop"}},
                           "NodeNames": [node]}).encode()
        req = urllib.request.Request(url + "/prioritize", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())[0]["Score"]
    iperf = threading.Thread(target=a.iperf, args=("p1", "p2"),
                             kwargs={"seconds": 8, "port": 5220})
    try:
        wait_for(lambda: score() == 10, what="the extender to see A quiet")
        iperf.start()
        wait_for(lambda: chassis_row(db, a)["elephants"] > 0, what="A's elephant published")
        assert score() < 10
        agent.kill()                                            # no withdrawal, no heartbeat
        assert chassis_row(db, a)["elephants"] > 0              # stale, as the issue found
        with api.Node(a.ovs.remote) as n:
            assert not n.agent_alive()
            assert n.node_footprint(a.ovs.bridge).elephants > 0
        wait_for(lambda: score() == 5, timeout=15, what="the dead agent's node as unknown")
        iperf.join()
        a.flush_conntrack()
        agent = a.agent(*args, state=tmp_path / "a.state").start()
        t0 = time.monotonic()          # ready: its control socket answers
        wait_for(lambda: chassis_row(db, a)["elephants"] == 0 and
                 a.ovs.external_ids("Bridge", a.ovs.bridge)["ovsfoot-elephants"] == "0",
                 what="the restarted agent's keys")
        assert time.monotonic() - t0 < 5
        with api.Node(a.ovs.remote) as n:
            assert n.agent_alive() and n.node_footprint(a.ovs.bridge).elephants == 0
        wait_for(lambda: score() == 10, what="the node known and quiet again")
    finally:
        if iperf.is_alive():
            iperf.join()
        ext.terminate()
        ext.wait(10)
        agent.stop()
