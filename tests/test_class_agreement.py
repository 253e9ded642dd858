"""The agent and the scheduler extender agree on a workload's class (issue 12, item 7).

Chassis A is a real OVN node with its real agent (kernel conntrack in OVN's zones, see
conftest.py) publishing into a real ovsfoot cluster database; it learns shop/web
light from one real elephant (`--heavy-at=3`: one elephant is a score of 1, a light
lesson). Chassis B, which has no node here, learned shop/web heavy: its rows are
written as its agent would publish them (as in test_extender.py). Every reader
applies the one rule, heavy wins (`contract.merge_classes`): A's published
`ovsfoot-workload-class` (read with ovsfoot.api), A's `workload/show`, and the
extender's class for a new shop/web replica.

Without B's lesson all of them say light, so heavy can only come from merging both
lessons; and an agent whose merge is bypassed (its own lesson first, the behaviour the
issue found) publishes light while the extender says heavy: the checks here fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import PODS, destroy_node, make_central, make_node
from integration.agentproc import AgentProcess
from integration.sandbox import wait_for
from ovsfoot import api
from test_extender import ClusterDb, Extender, pod

REPO = Path(__file__).resolve().parents[1]
WEB = "shop/web"
OTHER = "hv-b"      # chassis B: the node it runs is node-b
NODES = ["node-b"]
REPLICA = dict(owner=("ReplicaSet", "web-7d9f8b6c5d"), labels={"pod-template-hash":
                                                               "7d9f8b6c5d"})
BYPASS = '''\
import ovsfoot.contract as contract
contract.merge_classes = lambda classes: next((c for c in classes if c), None)
'''


class BypassedMergeAgent(AgentProcess):
    """`ovsfoot agent` with `contract.merge_classes` replaced by "this chassis' own
    lesson first, others only where it has none" (a sitecustomize on PYTHONPATH): a
    reader that does not apply the rule, to show that the checks below catch it."""

    def spawn(self) -> None:
        site = self.ovs.dir / "bypass-merge"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(BYPASS)
        saved = self.ovs.env.get("PYTHONPATH")
        self.ovs.env["PYTHONPATH"] = f"{site}:{REPO}"
        try:
            super().spawn()
        finally:
            if saved is None:
                del self.ovs.env["PYTHONPATH"]
            else:
                self.ovs.env["PYTHONPATH"] = saved


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agree")
    db = ClusterDb(tmp / "clusterdb")
    central = node = ext = None
    try:
        db.start_db()
        # chassis B's summary: a node where a heavy pod scores 5 and a light one 4
        db.set_chassis(OTHER, "node-b", footprint="heavy", elephants=2, heavy_ports=1)
        central = make_central(tmp)
        node = make_node(tmp, "agr", central, pods={p: PODS[p] for p in ("p1", "p2")})
        ext = Extender(db, "--assume-seconds=0")        # scores alone, no assumed load
        yield db, node, ext
    finally:
        if ext is not None:
            ext.stop()
        if node is not None:
            destroy_node(node)
        if central is not None:
            central.stop_all()
        db.stop_all()


def published(node, want: str, timeout: float = 30) -> str | None:
    """A's `ovsfoot-workload-class` on shop/web's Interface, once it is `want` (or
    what it is after `timeout` s)."""
    with api.Node(node.ovs.remote) as n:
        return n.wait_port(node.pods["p1"].interface, lambda p: p.workload_class == want,
                           timeout, raise_timeout=False).workload_class


def extender_class(ext: Extender) -> str:
    """The class the extender gives a new shop/web replica, from its scores: a
    heavy pod's or a light pod's."""
    heavy = ext.scores(pod("probe-0", labels={"ovsfoot.io/footprint": "heavy"}), NODES)
    light = ext.scores(pod("probe-0", labels={"ovsfoot.io/footprint": "light"}), NODES)
    assert heavy != light, (heavy, light)
    replica = ext.scores(pod("web-7d9f8b6c5d-q2w4x", **REPLICA), NODES)
    assert replica in (heavy, light), replica
    return "heavy" if replica == heavy else "light"


def a_lessons(db: ClusterDb, node) -> dict[str, str]:
    rows = db.transact({"op": "select", "table": "Workload_Class",
                        "where": [["chassis", "==", f"hv-{node.prefix}"]]})[0]["rows"]
    return {r["workload"]: r["learned"] for r in rows}


def test_heavy_learned_elsewhere_wins_over_light_here_for_every_reader(setup):
    db, node, ext = setup
    agent = node.agent("--heavy-at=3", f"--cluster-db={db.remote}").start()
    try:
        # A learns shop/web light from one elephant, and says so in the cluster DB
        node.iperf("p1", "p2", seconds=2)
        wait_for(lambda: a_lessons(db, node).get(WEB) == "light", timeout=30,
                 what="chassis A's light lesson in the cluster database")
        # without B's lesson every reader says light (so heavy below is the merge)
        assert published(node, "light") == "light"
        assert agent.json("workload/show")[WEB]["learned"] == "light"
        assert extender_class(ext) == "light"

        # B learned it heavy: heavy wins, for A's agent and for the extender alike
        db.set_class(OTHER, WEB, "heavy")
        assert published(node, "heavy") == "heavy"
        show = agent.json("workload/show")[WEB]
        assert show["learned"] == "heavy" and show["cluster"] == "heavy", show
        assert a_lessons(db, node)[WEB] == "light"  # A's own lesson is still light
        wait_for(lambda: extender_class(ext) == "heavy", timeout=10,
                 what="the extender to read B's lesson")
    finally:
        agent.stop()

    # the same with the merge bypassed in the agent: it publishes its own light, the
    # extender says heavy; the agreement asserted above would fail
    bypassed = BypassedMergeAgent(node.ovs, *agent.args).start()
    try:
        assert published(node, "light") == "light"
        assert bypassed.json("workload/show")[WEB]["learned"] == "light"
        assert extender_class(ext) == "heavy"
    finally:
        bypassed.stop()
        db.set_class(OTHER, WEB, None)
