"""Throughput and flow rate: per-zone counters, rates over the window, the traffic
classes, the buckets published, learning from traffic, and the extender's use of them."""

import pytest

from ovsfoot import contract as c
from ovsfoot.events import FlowKey, Thresholds
from ovsfoot.footprints import Footprints
from ovsfoot.learning import Learner, StateFile
from ovsfoot.rates import DumpCounter, Rate, ZoneCounters, ZoneRates
from ovsfoot.scheduler.scoring import NodeFacts, score

S = 10**9
T = Thresholds()


def key(zone, sport):
    return FlowKey(1, zone, 6, "10.0.0.1", "10.0.0.2", sport, 80)


def test_dump_counter_counts_what_each_zone_carried_between_dumps():
    z = DumpCounter()
    z.dump({3: [1000, 10, 1]})          # there before: a baseline, not a new flow
    assert z.totals == {}
    z.destroyed()[3] = [300, 3, 1]      # a flow born and deleted between two dumps
    z.dump({3: [1700, 16, 2], 4: [50, 1, 1]})   # 3: one more entry; 4: a new zone
    assert z.totals == {3: ZoneCounters(1000, 9, 2), 4: ZoneCounters(50, 1, 1)}
    z.destroyed()[4] = [80, 2, 1]       # 4's entry deleted after carrying 30 more bytes
    z.dump({3: [1700, 16, 2]})
    assert z.totals[3] == ZoneCounters(1000, 9, 2) and z.totals[4] == ZoneCounters(80, 2, 1)
    z.dump({3: [100, 1, 1]})            # entries gone without their DESTROY (events lost):
    assert z.totals[3] == ZoneCounters(1000, 9, 2)      # counted 0, never negative


def test_zone_rates_average_over_the_window_and_survive_a_reset():
    r = ZoneRates(window=10)
    for t in range(0, 21):              # 25 MB/s = 200 Mbit/s, 3 new flows/s
        r.update({7: ZoneCounters(t * 25_000_000, t * 20_000, t * 3)}, t * S)
    rate = r.rate(7)
    assert rate.bps == pytest.approx(200e6) and rate.flows_per_s == pytest.approx(3)
    assert rate.seconds == pytest.approx(10)        # only the window is kept
    assert r.rate(8) == Rate()
    r.update({7: ZoneCounters(100, 1, 0)}, 21 * S)  # the source restarted
    assert r.rate(7).bps < 1e3


def test_traffic_classes():
    full = T.window
    assert c.traffic_class(Rate(300e6, 20, full), T) == c.HEAVY         # many medium flows
    assert c.traffic_class(Rate(300e6, 20, full / 2), T) == c.LIGHT     # not sustained yet
    assert c.traffic_class(Rate(8e6, 400, full), T) == c.SENSITIVE      # 2.5 kB per flow
    assert c.traffic_class(Rate(150e6, 100, full), T) == c.LIGHT        # 187 kB per flow
    assert c.traffic_class(Rate(1e5, 1, full), T) == c.LIGHT            # idle
    assert c.classify(traffic=c.SENSITIVE) == c.SENSITIVE
    assert c.classify(elephants=1, traffic=c.SENSITIVE) == c.HEAVY
    assert c.classify(learned=c.SENSITIVE, traffic=c.HEAVY) == c.HEAVY
    assert c.merge_classes([c.LIGHT, c.SENSITIVE]) == c.SENSITIVE
    assert c.merge_classes([c.SENSITIVE, c.HEAVY]) == c.HEAVY


def test_buckets_hold_until_the_value_leaves_them_by_the_margin():
    assert c.bucket(0, c.BPS_STEPS) == 0 and c.bucket(999_999, c.BPS_STEPS) == 0
    assert c.bucket(250e6, c.BPS_STEPS) == 200_000_000
    assert c.bucket(4.9e6, c.BPS_STEPS) == 2_000_000
    assert c.bucket(600e6, c.BPS_STEPS, previous=200_000_000) == 200_000_000   # < 625M
    assert c.bucket(630e6, c.BPS_STEPS, previous=200_000_000) == 500_000_000
    assert c.bucket(155e6, c.BPS_STEPS, previous=200_000_000) == 200_000_000   # >= 150M
    assert c.bucket(140e6, c.BPS_STEPS, previous=200_000_000) == 100_000_000
    assert c.bucket(17, c.FLOW_STEPS, previous=20) == 20        # a noisy 20 flows/s
    assert c.bucket(23, c.FLOW_STEPS, previous=10) == 10
    assert c.bucket(12, c.FLOW_STEPS) == 10 and c.bucket(0.5, c.FLOW_STEPS) == 0


def test_a_rate_wobbling_around_a_bound_is_published_once():
    fp = Footprints(Learner())
    fp.set_rates({"p": Rate(215e6, 2, 10)}, {"p": "w"}, T)
    assert fp.traffic["p"] == c.Traffic(200_000_000, 2, c.HEAVY)
    generation = fp.generation
    for i in range(100):                # 185-215 Mbit/s: around the 200M bound and threshold
        fp.set_rates({"p": Rate(200e6 + (15e6 if i % 2 else -15e6), 2, 10)}, {"p": "w"}, T)
    assert fp.generation == generation and fp.traffic["p"].klass == c.HEAVY
    fp.set_rates({"p": Rate(140e6, 2, 10)}, {"p": "w"}, T)       # clearly below: moves
    assert fp.traffic["p"] == c.Traffic(100_000_000, 2, c.LIGHT)
    assert fp.generation == generation + 1


def test_keys_published_for_traffic():
    kv = c.PortKeys.format(0, None, c.Traffic(200_000_000, 0, c.HEAVY))
    assert kv == {c.FOOTPRINT: "heavy", c.ELEPHANTS: "0", c.BPS: "200000000",
                  c.FLOWS_PER_S: "0"}
    kv = c.PortKeys.format(0, "sensitive", c.Traffic(0, 500, c.LIGHT))
    assert kv[c.FOOTPRINT] == "sensitive" and kv[c.WORKLOAD_CLASS] == "sensitive"
    assert c.PortKeys.parse(kv, "Interface x").flows_per_s == 500
    node = c.NodeKeys.format(0, 0, 2, c.Traffic(5_000_000, 1000))
    assert node[c.FOOTPRINT] == "light" and node[c.SENSITIVE_PORTS] == "2"
    assert c.NodeKeys.parse(node, "Bridge br-int").bps == 5_000_000
    with pytest.raises(c.ContractError, match="is not one of light, heavy"):
        c.NodeKeys.parse({c.FOOTPRINT: "sensitive"}, "Bridge br-int")


def test_footprints_sum_a_workloads_ports():
    fp = Footprints(Learner())
    fp.set_rates({"a": Rate(150e6, 1, 10), "b": Rate(100e6, 1, 10), "c": Rate(4e6, 300, 10)},
                 {"a": "shuffle", "b": "shuffle", "c": "rpc"}, T)
    ports = fp.by("lport")
    assert ports["a"].klass == c.LIGHT and ports["c"].klass == c.SENSITIVE
    work = fp.workloads(lambda w: None, T)
    assert work["shuffle"].klass == c.HEAVY and work["shuffle"].rate.bps == 250e6
    assert work["rpc"].klass == c.SENSITIVE
    assert fp.node().rate.bps == pytest.approx(254e6)


def test_learning_from_traffic_with_hysteresis_and_heavy_first(tmp_path):
    learner = Learner(heavy_at=3, half_life=100)
    for _ in range(3):
        learner.traffic("rpc", c.SENSITIVE, 0)
        learner.traffic("idle", c.LIGHT, 0)
    assert learner.klass("rpc") == c.SENSITIVE and learner.klass("idle") is None
    learner.tick(90 * S)                # 1.6: still sensitive
    assert learner.klass("rpc") == c.SENSITIVE
    for _ in range(3):
        learner.traffic("rpc", c.HEAVY, 90 * S)
    assert learner.klass("rpc") == c.HEAVY and learner.records["rpc"].elephants == 0
    state = StateFile(str(tmp_path / "s"))
    state.save(learner.dump(), learner.dump_flows())
    again = Learner(heavy_at=3, half_life=100)
    again.load(state.load())
    assert again.records["rpc"] == learner.records["rpc"]
    # a version 2 record (no sensitive score) still loads
    again.load({"old": {"score": 1.0, "updated": 0, "heavy": False, "elephants": 1}})
    assert again.klass("old") == c.LIGHT


def test_sensitive_pods_avoid_throughput_and_heavy_pods_avoid_sensitive_ones():
    busy = NodeFacts("a", "node-a", "light", bps=500_000_000)      # no elephant, 500 Mbit/s
    rpc = NodeFacts("b", "node-b", "light", sensitive_ports=3, bps=20_000_000)
    hot = NodeFacts("c", "node-c", "heavy", elephants=1, heavy_ports=1)
    quiet = NodeFacts("d", "node-d", "light")
    assert [score(n, c.LIGHT) for n in (busy, rpc, hot, quiet)] == [10, 10, 5, 10]
    assert [score(n, c.SENSITIVE) for n in (busy, rpc, hot, quiet)] == [3, 9, 3, 10]
    assert [score(n, c.HEAVY) for n in (busy, rpc, hot, quiet)] == [10, 4, 6, 10]
    # weighted more strongly than a light pod on the same node
    assert score(hot, c.SENSITIVE) < score(hot, c.LIGHT)
