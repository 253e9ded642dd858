"""The pipeline's logic on its own: detection, zone history, learning, replay."""

import msgpack
import pytest

from ovsfoot.attribution import Attributor, Port, ZoneMap
from ovsfoot.detection import Detector
from ovsfoot.events import FlowEvent, FlowKey, Kind, Thresholds
from ovsfoot.learning import Learner, StateFile
from ovsfoot.sources.replay import Recorder, ReplaySource

S = 10**9
KEY = FlowKey(1, 5, 6, "10.0.0.1", "10.0.0.2", 40000, 5201)


def ev(kind=Kind.UPDATE, ts=10 * S, first=8 * S, bo=0, br=0, key=KEY):
    return FlowEvent(kind, key, ts, first, bo, br)


def test_detector_needs_both_bytes_and_age():
    d = Detector(Thresholds(bytes=1000, seconds=1, idle_seconds=5))
    assert d.feed(ev(bo=999)) is None                       # too small
    assert d.feed(ev(bo=5000, first=ev().ts - S // 2)) is None   # too young
    out = d.feed(ev(bo=5000))
    assert out.kind == Kind.ELEPHANT and out.bytes == 5000
    assert d.feed(ev(ts=11 * S, bo=9000)).kind == Kind.UPDATE   # once only
    end = d.feed(ev(Kind.END, ts=12 * S))
    assert end.kind == Kind.END and end.bytes == 9000 and not d.elephants


def test_detector_idle_end_and_no_rebirth_without_bytes():
    d = Detector(Thresholds(bytes=1000, seconds=0, idle_seconds=2))
    d.feed(ev(bo=5000))
    assert d.next_expiry() == 12 * S
    assert d.expire(11 * S) == []
    [end] = d.expire(13 * S)
    assert end.kind == Kind.END
    assert d.feed(ev(ts=14 * S, bo=5000)) is None           # lingering entry, no bytes
    assert d.feed(ev(ts=15 * S, bo=7000)).kind == Kind.ELEPHANT   # it carries again


def test_detector_takes_kernel_decisions_as_they_are():
    d = Detector(Thresholds(bytes=10**12, seconds=100, idle_seconds=1))
    assert d.feed(ev(Kind.ELEPHANT, bo=10)).kind == Kind.ELEPHANT
    assert d.feed(ev(ts=10 * S + S // 2, bo=20)).kind == Kind.UPDATE    # counters read back
    assert d.expire(11 * S) == []
    [end] = d.expire(12 * S)                                           # then idle
    assert end.kind == Kind.END and end.bytes == 20


def test_live_threshold_change_applies_to_next_decision():
    t = Thresholds(bytes=10**9, seconds=0)
    d = Detector(t)
    assert d.feed(ev(bo=10**6)) is None
    t.bytes = 10**5
    assert d.feed(ev(bo=10**6)).kind == Kind.ELEPHANT


def test_zone_map_parses_and_rejects():
    z = ZoneMap()
    z.update({"ct-zone-a": "1", "ct-zone-dp_dnat": "2", "ct-zone-bad": "x",
              "ct-zone-big": "70000", "ct-zone-": "3", "other": "9"}, 0, started=True)
    assert {k: (o.owner, o.router) for k, o in z.current.items()} == {
        1: ("a", False), 2: ("dp_dnat", True)}


def test_zone_reuse_never_blames_the_new_owner():
    a = Attributor()
    a.ports = {n: Port(n, f"{n}-if", n, frozenset({ip}))
               for n, ip in (("old", "10.0.0.1"), ("new", "10.0.0.9"))}
    a.zones.update({"ct-zone-old": "5"}, 0, started=True)
    a.zones.update({}, 100 * S)                      # old goes away, zone 5 is free
    a.zones.update({"ct-zone-new": "5"}, 200 * S)    # and is given to new
    flow_of_old = ev(first=50 * S)
    at = a.attribute(flow_of_old)
    assert at.lport is None and "old" in at.reason
    assert a.attribute(ev(first=150 * S, key=FlowKey(1, 5, 6, "10.0.0.9", "10.0.0.2", 1, 2),
                          bo=10)).lport == "new"    # began while free: only new can own it
    at = a.attribute(ev(first=250 * S, key=FlowKey(1, 5, 6, "10.0.0.9", "10.0.0.2", 1, 2),
                        bo=10))
    assert at.lport == "new" and at.role == "source"
    # Swapped in one step (ovn-controller restart): flows older than the swap are old's.
    a.zones.update({"ct-zone-old": "5"}, 300 * S)
    assert a.attribute(ev(first=290 * S)).lport is None
    assert a.attribute(ev(first=310 * S, bo=10)).lport == "old"


def test_roles_follow_the_bytes():
    a = Attributor()
    a.ports = {"srv": Port("srv", "srv-if", "srv", frozenset({"10.0.0.2"}))}
    a.zones.update({"ct-zone-srv": "5"}, 0, started=True)
    assert a.attribute(ev(bo=10, br=10**7)).role == "source"   # server sends (download)
    assert a.attribute(ev(bo=10**7, br=10)).role == "sink"     # server receives (upload)
    a.ports["srv"] = Port("srv", "srv-if", "srv", frozenset())
    assert a.attribute(ev(bo=10**7)).role == "unknown"


def test_learning_heavy_then_slowly_light():
    learner = Learner(heavy_at=3, half_life=100)
    learner.elephant("w", 0)
    learner.elephant("w", 0)
    assert learner.klass("w") == "light"
    learner.elephant("w", 0)
    assert learner.klass("w") == "heavy"
    learner.tick(90 * S)                  # score 1.6: still heavy (hysteresis)
    assert learner.klass("w") == "heavy"
    learner.tick(200 * S)                 # ~0.75 < 1.5
    assert learner.klass("w") == "light"
    learner.tick(2000 * S)
    assert learner.klass("w") is None     # forgotten


def test_state_file_round_trip_and_corruption(tmp_path):
    learner = Learner()
    learner.elephant("w", S)
    f = StateFile(str(tmp_path / "s"))
    f.save(learner.dump())
    again = Learner()
    again.load(f.load())
    assert again.records == learner.records and f.version == 3
    (tmp_path / "s").write_bytes(msgpack.packb({"version": 99}))
    assert f.load() == {} and list(tmp_path.glob("s.corrupt-*")) and f.version is None
    assert not (tmp_path / "s").exists()
    (tmp_path / "s").write_bytes(msgpack.packb({"version": 1, "workloads": {
        "ok": {"score": 1.0, "updated": 1, "heavy": True, "elephants": 3},
        "bad": {"score": "x"}}}))
    learner = Learner()
    learner.load(f.load())
    assert list(learner.records) == ["ok"]
    assert f.version == 1           # written by a version that published into Southbound


def test_record_and_replay(tmp_path):
    path = str(tmp_path / "rec")
    r = Recorder(path, "test")
    events = [ev(bo=i, ts=(10 + i) * S) for i in range(5)] + [ev(Kind.END, ts=20 * S)]
    r.write(events)
    r.close()
    src = ReplaySource(path, speed=0)
    got = src.run()
    assert got == events and src.run() == [] and src.done
    assert src.stats()["recorded_by"] == "test"


def test_event_records_reject_garbage():
    for bad in ([], [1] * 14, "abc", [9] + [0] * 14, [0, "x"] + [0] * 13):
        with pytest.raises(ValueError):
            FlowEvent.from_list(bad)
