"""The scheduler extender's placement logic, free of I/O: classes, scores, filters,
assumed load, stale nodes, and the view built from cluster-database rows."""

import json

import pytest

from ovsfoot.scheduler.clusterview import build_view
from ovsfoot.scheduler.scoring import (Assumptions, BadRequest, ClusterView, NodeFacts,
                                       PodInfo, filter_nodes, parse_args, pod_class,
                                       prioritize, score)


def pod(name="p-0", ns="shop", labels=None, annotations=None, owners=None) -> PodInfo:
    return PodInfo(name, ns, labels or {}, annotations or {}, owners or [])


def facts(chassis, footprint="light", elephants=0, heavy_ports=0, seen=None) -> NodeFacts:
    return NodeFacts(chassis, f"node-{chassis}", footprint, elephants, heavy_ports, 1, seen)


def view(*nodes: NodeFacts, classes=None) -> ClusterView:
    return ClusterView({f.hostname: f for f in nodes}, classes or {}, synced=True)


def test_pod_class_order():
    v = view(classes={"shop/web": "heavy"})
    assert pod_class(pod(annotations={"ovsfoot.io/footprint": "light"},
                         labels={"ovsfoot.io/footprint": "heavy"}), v)[0] == "light"
    assert pod_class(pod("web-7d9f8b6c5d-x2x4z"), v) == ("heavy", "workload shop/web "
                                                         "learned heavy")
    owner = [{"kind": "ReplicaSet", "name": "web-7d9f8b6c5d", "controller": True}]
    assert pod_class(pod("anything", owners=owner), v)[0] == "heavy"
    assert pod_class(pod("api-0"), v) == ("light", "default")


def test_scores():
    assert score(None, "light") == 5 and score(facts("a", footprint=None), "heavy") == 5
    assert score(facts("a"), "light") == 10
    assert score(facts("a", "heavy", elephants=2), "light") == 5      # load 2
    assert score(facts("a", "heavy", elephants=2), "heavy") == 7      # load 1: half
    assert score(facts("a", "heavy", heavy_ports=8), "light") == 2


def test_a_burst_of_heavy_pods_spreads_and_reports_settle_it():
    nodes = [facts(c) for c in "abc"]
    v, assumed = view(*nodes), Assumptions(ttl=60)
    heavy = {"ovsfoot.io/footprint": "heavy"}
    picks = []
    for i in range(5):
        out = prioritize(pod(f"etl-{i}", annotations=heavy), [n.hostname for n in nodes],
                         v, assumed, now=100.0)
        picks.append(max(out, key=lambda h: h["Score"])["Host"])
    assert picks == ["node-a", "node-b", "node-c", "node-a", "node-b"]
    assert assumed.pending() == 5
    # asked again, a pod moves: it does not count twice
    prioritize(pod("etl-4", annotations=heavy), ["node-a"], v, assumed, now=100.0)
    assert assumed.pending() == 5
    # node-a's agent reports two heavy ports: its two assumptions settle
    v2 = view(facts("a", "heavy", heavy_ports=2), *nodes[1:])
    prioritize(pod("light-0"), ["node-a"], v2, assumed, now=101.0)
    assert assumed.pending() == 3
    # and after the TTL nothing is assumed
    prioritize(pod("light-0"), ["node-b"], v2, assumed, now=200.0)
    assert assumed.pending() == 0


def test_a_stale_node_is_unknown_and_never_filtered():
    v = view(facts("a", "heavy", elephants=3, seen=10.0), facts("b", seen=50.0))
    assert v.current("node-a", now=20.0, max_age=30).known
    assert not v.current("node-a", now=41.0, max_age=30).known
    out = prioritize(pod(), ["node-a", "node-b"], v, now=41.0, max_age=30)
    assert [h["Score"] for h in out] == [5, 10]
    kept, failed = filter_nodes(pod(), ["node-a", "node-b"], v, True, now=41.0, max_age=30)
    assert kept == ["node-a", "node-b"] and failed == {}
    kept, failed = filter_nodes(pod(), ["node-a", "node-b"], v, True, now=20.0, max_age=30)
    assert kept == ["node-b"] and "heavy" in failed["node-a"]


def test_filter_never_drops_every_node():
    v = view(facts("a", "heavy", elephants=1))
    assert filter_nodes(pod(), ["node-a"], v, True) == (["node-a"], {})


def test_short_names_match_when_unique():
    v = ClusterView({"a.example.com": facts("a"), "b.x": facts("b"), "b.y": facts("c")})
    assert v.node("a").chassis == "a"
    assert v.node("b") is None                   # two candidates: not a guess


@pytest.mark.parametrize("body", [b"{", b"[]", json.dumps({"NodeNames": []}).encode(),
                                  json.dumps({"Pod": {"metadata": {"name": "a"}},
                                              "NodeNames": [1]}).encode()])
def test_malformed_args(body):
    with pytest.raises(BadRequest):
        parse_args(body)


def test_build_view_merges_classes_and_skips_invalid_names():
    traffic = {"sensitive_ports": 2, "bps": 500_000_000, "flows_per_s": 100}
    chassis = [{"name": "hv-a", "hostname": "node-a", "footprint": "heavy", "elephants": 1,
                "heavy_ports": 1, "updated": 5, **traffic},
               {"name": "hv-b", "hostname": "node-a", "footprint": "light", "elephants": 0,
                "heavy_ports": 0, "updated": 5, **traffic}]
    classes = [{"workload": "shop/web", "chassis": "hv-a", "learned": "light"},
               {"workload": "shop/web", "chassis": "hv-b", "learned": "heavy"},
               {"workload": "shop/api", "chassis": "hv-a", "learned": "sensitive"},
               {"workload": "shop/api", "chassis": "hv-b", "learned": "light"},
               {"workload": "bad\nname", "chassis": "hv-b", "learned": "heavy"}]
    v = build_view(chassis, classes, "hostname", {"hv-a": 3.0})
    assert v.classes == {"shop/web": "heavy", "shop/api": "sensitive"}
    assert v.node("node-a").chassis == "hv-a" and v.node("node-a").seen == 3.0
    assert v.node("node-a").bps == 500_000_000 and v.node("node-a").sensitive_ports == 2
    assert set(build_view(chassis, classes, "name").by_key) == {"hv-a", "hv-b"}
