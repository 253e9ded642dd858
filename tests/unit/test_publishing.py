"""What the publishers would write, without a server: the external_ids reconciler and
the CNI plugin's config checks."""

import json
import uuid

import pytest

from ovsfoot import cni
from ovsfoot.contract import OUTPUT_KEYS, TS
from ovsfoot.publishers.bucket import TokenBucket
from ovsfoot.publishers.externalids import ExternalIdsPublisher, Flight


class Row:
    """What the reconciler reads of an IDL row."""

    def __init__(self, **ids):
        self.uuid = uuid.uuid4()
        self.external_ids = ids


class Replica:
    """What the reconciler reads of an IDL: its change counter."""
    change_seqno = 0


def publisher(rows: dict) -> ExternalIdsPublisher:
    return ExternalIdsPublisher(Replica(), lambda: rows.items(), OUTPUT_KEYS.__contains__)


def test_diff_sets_what_differs_and_stamps_it():
    rows = {"p1": Row(**{"iface-id": "x", "ovsfoot-footprint": "light"}), "p2": Row()}
    pub = publisher(rows)
    pub.want({"p1": {"ovsfoot-footprint": "heavy", "ovsfoot-elephants": "1"}})
    [(row, put, drop)] = pub.diff()
    assert row is rows["p1"] and drop == []
    assert put["ovsfoot-footprint"] == "heavy" and put["ovsfoot-elephants"] == "1"
    assert int(put[TS]) > 0


def test_diff_drops_only_our_keys_and_leaves_others_alone():
    rows = {"p1": Row(**{"iface-id": "x", "ovsfoot-footprint": "heavy", TS: "1",
                         "ovsfoot-workload": "team/a", "ct-zone-x": "3"})}
    pub = publisher(rows)
    pub.want({})
    [(_, put, drop)] = pub.diff()
    assert put == {} and sorted(drop) == ["ovsfoot-footprint", TS]


def test_nothing_to_do_is_no_transaction():
    rows = {"p1": Row(**{"ovsfoot-footprint": "light", "ovsfoot-elephants": "0", TS: "1"})}
    pub = publisher(rows)
    pub.want({"p1": {"ovsfoot-footprint": "light", "ovsfoot-elephants": "0"}})
    assert pub.diff() == []


def test_what_is_in_flight_counts_as_done():
    rows = {"p1": Row(**{"ovsfoot-footprint": "light", "ovsfoot-elephants": "0", TS: "1"}),
            "p2": Row(**{"ovsfoot-footprint": "light", "ovsfoot-elephants": "0", TS: "1"})}
    pub = publisher(rows)
    pub.want({"p1": {"ovsfoot-footprint": "heavy", "ovsfoot-elephants": "1"},
              "p2": {"ovsfoot-footprint": "light", "ovsfoot-elephants": "0"}})
    [first] = pub.diff()
    pub.flights.append(Flight(None, 0, [first]))           # sent, not yet answered
    assert pub.diff() == []
    pub.want({"p1": {"ovsfoot-footprint": "heavy", "ovsfoot-elephants": "2"},
              "p2": {"ovsfoot-footprint": "light"}})
    changes = {id(row): (put, drop) for row, put, drop in pub.diff()}
    put, drop = changes[id(rows["p1"])]
    assert set(put) == {"ovsfoot-elephants", TS} and put["ovsfoot-elephants"] == "2"
    assert drop == []
    assert changes[id(rows["p2"])] == ({TS: changes[id(rows["p2"])][0][TS]},
                                       ["ovsfoot-elephants"])


def test_rows_are_read_again_once_the_replica_changed():
    rows = {"p1": Row(**{"ovsfoot-footprint": "light"})}
    pub = publisher(rows)
    pub.want({"p1": {"ovsfoot-footprint": "light"}})
    assert pub.diff() == []
    rows["p1"].external_ids = {"ovsfoot-footprint": "heavy"}    # a row python-ovs updated
    assert pub.diff() == []             # in the IDL's run(), which changes its change_seqno
    pub.idl.change_seqno += 1
    [(_, put, _)] = pub.diff()
    assert put["ovsfoot-footprint"] == "light"


GOOD = {"cniVersion": "1.0.0", "name": "podnet", "type": "ovsfoot-cni"}


@pytest.mark.parametrize("change,code", [
    ({"cniVersion": "9.9.9"}, cni.E_INCOMPATIBLE),
    ({"name": ""}, cni.E_CONFIG),
    ({"timeout": float("nan")}, cni.E_CONFIG),
    ({"timeout": 0}, cni.E_CONFIG),
    ({"timeout": 61}, cni.E_CONFIG),
    ({"waitForClass": -1}, cni.E_CONFIG),
    ({"ovsdb": 5}, cni.E_CONFIG),
    ({"sslCaCert": ["x"]}, cni.E_CONFIG),
    ({"runtimeConfig": {"ovsfoot": {"workload": 3}}}, cni.E_CONFIG),
])
def test_cni_config_errors(change, code):
    with pytest.raises(cni.CniError) as e:
        cni.parse_config(json.dumps({**GOOD, **change}))
    assert e.value.code == code


def test_cni_config_good_and_undecodable():
    assert cni.parse_config(json.dumps({**GOOD, "timeout": 2.5}))["timeout"] == 2.5
    with pytest.raises(cni.CniError) as e:
        cni.parse_config("[" * 100000)
    assert e.value.code == cni.E_DECODE


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_bucket_lets_a_burst_through_then_the_rate():
    clock = Clock()
    b = TokenBucket(10, 4, clock)
    assert [b.take() for _ in range(5)] == [True] * 4 + [False]
    assert b.wait_s() == pytest.approx(0.1)
    clock.t += 0.05
    assert not b.take() and b.wait_s() == pytest.approx(0.05)
    clock.t += 0.05
    assert b.take() and not b.take()


def test_bucket_holds_a_flood_to_burst_plus_rate_times_window():
    clock = Clock()
    b = TokenBucket(10, 4, clock)
    taken = 0
    for _ in range(10_240):          # 10 s of someone asking every ms
        clock.t += 1 / 1024
        taken += b.take()
    assert 4 + 10 * 10 - 1 <= taken <= 4 + 10 * 10


def test_bucket_refills_only_to_its_burst_and_fill_restores_it():
    clock = Clock()
    b = TokenBucket(10, 4, clock)
    clock.t += 3600
    assert sum(b.take() for _ in range(10)) == 4
    b.fill()
    assert sum(b.take() for _ in range(10)) == 4


@pytest.mark.parametrize("rate,burst", [(0, 4), (-1, 4), (float("nan"), 4), (10, 0)])
def test_bucket_refuses_a_budget_that_allows_nothing(rate, burst):
    with pytest.raises(ValueError, match="rate > 0 and burst >= 1"):
        TokenBucket(rate, burst)
