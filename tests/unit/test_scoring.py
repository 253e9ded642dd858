"""The scheduler extender's placement logic, free of I/O: classes, scores, filters,
assumed load, stale nodes, and the view built from cluster-database rows."""

import json

import pytest

from ovsfoot.scheduler.clusterview import build_view
from ovsfoot.scheduler.scoring import (Assumptions, BadRequest, ClusterView, NodeFacts,
                                       PodInfo, filter_nodes, parse_args, pod_class,
                                       Ranker, prioritize, score)


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


# -- the extender's kept answers (scoring.Ranker) ------------------------------
def rank(ranker, p, names, v, now):
    return ranker.rank(p, pod_class(p, v)[0], names, v, now)


def scores(out) -> list[int]:
    return [h["Score"] for h in out]


def test_ranker_keeps_an_answer_per_class_and_node_list():
    v = view(facts("a", "heavy", elephants=2), facts("b"))
    ranker = Ranker(Assumptions(60), max_age=30)
    first = rank(ranker, pod("web-0"), ["node-a", "node-b"], v, 1.0)
    assert scores(first.out) == [5, 10] and (ranker.hits, ranker.misses) == (0, 1)
    assert first.answer() == json.dumps(first.out) and first.answer() is first.answer()
    assert (first.top, first.at_top) == (10, 1)
    assert rank(ranker, pod("api-0"), ["node-a", "node-b"], v, 2.0) is first
    assert rank(ranker, pod("api-0"), ["node-b", "node-a"], v, 2.0) is not first
    heavy = pod("etl-0", annotations={"ovsfoot.io/footprint": "heavy"})
    assert scores(rank(ranker, heavy, ["node-a", "node-b"], v, 2.0).out) == [7, 10]
    assert (ranker.hits, ranker.misses) == (1, 3)


def test_ranker_drops_its_answers_when_the_view_changes():
    ranker = Ranker(Assumptions(60), max_age=30)
    v1 = view(facts("a"), facts("b"))
    assert scores(rank(ranker, pod(), ["node-a", "node-b"], v1, 1.0).out) == [10, 10]
    v2 = view(facts("a", "heavy", elephants=2), facts("b"))
    assert scores(rank(ranker, pod(), ["node-a", "node-b"], v2, 1.0).out) == [5, 10]
    assert ranker.misses == 2


def test_ranker_answers_change_when_a_node_goes_stale_by_time():
    """The view does not change when an agent stops: its node turns unknown as time
    passes, and a kept answer must not outlive that (nor the other way round)."""
    v = view(facts("a", "heavy", elephants=3, seen=10.0), facts("b", seen=50.0),
             facts("c", footprint=None))
    names = ["node-a", "node-b", "node-c", "node-x"]
    ranker = Ranker(None, max_age=30)
    assert scores(rank(ranker, pod(), names, v, 20.0).out) == [4, 10, 5, 5]
    assert scores(rank(ranker, pod(), names, v, 40.0).out) == [4, 10, 5, 5]    # kept
    assert ranker.hits == 1
    assert scores(rank(ranker, pod(), names, v, 40.5).out) == [5, 10, 5, 5]    # a is stale
    assert scores(rank(ranker, pod(), names, v, 80.0).out) == [5, 10, 5, 5]    # kept
    assert scores(rank(ranker, pod(), names, v, 80.5).out) == [5, 5, 5, 5]     # b too
    # an answer made when a node was stale is not used for an earlier time
    ranker = Ranker(None, max_age=30)
    assert scores(rank(ranker, pod(), names, v, 45.0).out) == [5, 10, 5, 5]
    assert scores(rank(ranker, pod(), names, v, 35.0).out) == [4, 10, 5, 5]


def test_ranker_scores_again_while_a_heavy_pod_is_assumed_onto_its_nodes():
    nodes = [facts(c) for c in "abc"]
    v, assumed = view(*nodes), Assumptions(ttl=60)
    ranker = Ranker(assumed, max_age=0)
    names = [n.hostname for n in nodes]
    light = rank(ranker, pod("light-0"), names, v, 100.0)
    assert scores(light.out) == [10, 10, 10]
    heavy = pod("etl-0", annotations={"ovsfoot.io/footprint": "heavy"})
    assert scores(rank(ranker, heavy, names, v, 100.0).out) == [10, 10, 10]
    assert assumed.pending() == 1                       # on node-a
    assert scores(rank(ranker, pod("light-0"), names, v, 101.0).out) == [7, 10, 10]
    assert rank(ranker, pod("light-0"), ["node-b"], v, 101.0).out == [
        {"Host": "node-b", "Score": 10}]                # node-a not asked about: kept
    # a kept heavy answer still assumes the pod onto its best node
    assert scores(rank(ranker, heavy, ["node-b"], v, 101.0).out) == [10]
    assert assumed.pending() == 1 and assumed.snapshot()[0]["shop/etl-0"][0] == "b"
    assert scores(rank(ranker, pod("light-0"), names, v, 102.0).out) == [10, 7, 10]
    # once the assumption expires, the first answer is good again
    assert rank(ranker, pod("light-0"), names, v, 162.0) is light


def test_ranker_holds_a_bounded_number_of_answers_and_names():
    v = view(facts("a"))
    ranker = Ranker(None, entries=3, names=5, per_entry=4)
    for i in range(5):
        rank(ranker, pod(), ["node-a"] * (i + 1), v, 1.0)
    kept = ranker.kept()
    assert len(kept) <= 3 and ranker.held <= 5
    assert ranker.held == sum(len(names) for _, names in kept)
    assert all(len(names) <= 4 for _, names in kept)


@pytest.mark.parametrize("seed", range(20))
def test_ranker_answers_what_prioritize_answers(seed):
    """Random views, node lists, pods and times (forward, the view replaced now and
    then): the kept answers and the assumed load equal `prioritize`'s, request by
    request."""
    import random
    rnd = random.Random(seed)
    classes = {"shop/w0": "heavy", "shop/w1": "sensitive"}

    def random_view(now):       # heartbeats up to 35 s old: some go stale while it lasts
        return view(*[NodeFacts(f"hv-{c}", f"node-{c}", rnd.choice(["heavy", "light", None]),
                                rnd.randrange(4), rnd.randrange(3), 1,
                                rnd.choice([None, rnd.uniform(now - 35, now)]), rnd.randrange(2),
                                rnd.choice([0, 300_000_000]))
                      for c in "abcdef"], classes=classes)
    lists = [[f"node-{c}" for c in rnd.sample("abcdefxy", rnd.randint(0, 8))]
             for _ in range(4)]
    pods = [pod(f"w{i}-{j}") for i in range(3) for j in range(3)] + \
        [pod(f"h-{j}", annotations={"ovsfoot.io/footprint": "heavy"}) for j in range(3)]
    max_age = rnd.choice([0, 30])
    ours = Assumptions(rnd.choice([0, 20]))
    theirs = Assumptions(ours.ttl)
    ranker = Ranker(ours, max_age=max_age)
    now = 100.0
    v = random_view(now)
    for _ in range(300):
        if rnd.random() < 0.05:
            v = random_view(now)
        now += rnd.choice([0, 0, 0.5, 3])
        p, names = rnd.choice(pods), rnd.choice(lists)
        got = rank(ranker, p, names, v, now)
        assert got.out == prioritize(p, names, v, theirs, now, max_age)
        assert got.answer() == json.dumps(got.out)
        assert ours.snapshot() == theirs.snapshot()
    assert ranker.hits > 10, ranker.hits           # the kept answers were used
