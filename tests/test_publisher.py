"""The node publisher's write budget against a real ovsdb-server: a change that comes
while another is in flight is not held back (it goes on top of it), a flood of
changes is held to the budget, and the last change always lands."""

import time

import ovs.poller
import pytest

from integration.sandbox import Ovs, wait_for
from ovsfoot.ovsdb import LocalDb
from ovsfoot.publishers.vswitch import BURST, DEPTH, RATE, VswitchPublisher

PORTS = ("pa", "pb")


@pytest.fixture
def db(tmp_path):
    o = Ovs(tmp_path, bridge="br-pub")
    try:
        o.start_db().create_bridge()            # rows only, no ovs-vswitchd
        for p in PORTS:
            o.vsctl("add-port", "br-pub", p, "--", "set", "Interface", p,
                    f"external_ids:iface-id=lp-{p}")
        d = LocalDb(o.remote, timeout=10)
        wait_for(lambda: (d.run(), {i.name for i in d.rows("Interface")} >= set(PORTS))[1],
                 what="the IDL to sync")
        yield o, d
        d.idl.close()
    finally:
        o.stop_all()


@pytest.fixture
def pub(db):
    """A publisher on br-pub whose first keys (nothing heavy) are written."""
    pub = VswitchPublisher(db[1], "br-pub")
    pub.publish(*keys({"pa": 0, "pb": 0}))
    assert pub.flush(10)
    return pub


def keys(elephants: dict[str, int]):
    ifaces = {p: {"ovsfoot-elephants": str(n), "ovsfoot-footprint": "heavy" if n else "light"}
              for p, n in elephants.items()}
    n = sum(elephants.values())
    return ifaces, {"ovsfoot-elephants": str(n), "ovsfoot-footprint": "heavy" if n else "light"}


def step(d: LocalDb, pub: VswitchPublisher, timeout_ms: int = 1000) -> None:
    """One turn of the agent's loop: block until the server or the budget's timer
    wakes us (or `timeout_ms` passed), then read and publish."""
    p = ovs.poller.Poller()
    d.wait(p)
    pub.wait(p)
    p.timer_wait(timeout_ms)
    p.block()
    d.run()
    pub.run()


def test_a_change_while_another_is_in_flight_goes_at_once_on_top_of_it(db, pub):
    o, d = db
    base, committed = pub.transactions, pub.committed
    # zone of port pa crosses: its transaction goes at once
    pub.publish(*keys({"pa": 1, "pb": 0}))
    pub.run()
    assert pub.transactions == base + 1 and len(pub.flights) == 1
    time.sleep(0.003)
    # 3 ms later port pb's zone crosses, the first still in flight (no reply read yet):
    # the second goes now, with only what the first does not carry
    pub.publish(*keys({"pa": 1, "pb": 1}))
    pub.run()
    assert pub.transactions == base + 2 and len(pub.flights) == 2
    second = {row.name: put for row, put, _ in pub.flights[1].changes}
    assert set(second) == {"pb", "br-pub"}, second
    assert second["pb"]["ovsfoot-elephants"] == "1" and second["br-pub"]["ovsfoot-elephants"] == "2"
    # a third change waits for a slot (VswitchPublisher.DEPTH in flight at most)
    pub.publish(*keys({"pa": 2, "pb": 1}))
    pub.run()
    assert pub.transactions == base + 2 and len(pub.flights) == DEPTH == 2
    while pub.flights or pub.diff():
        step(d, pub)
    assert pub.transactions == base + 3 and pub.committed == committed + 3
    assert pub.failures == 0
    assert o.external_ids("Interface", "pa")["ovsfoot-elephants"] == "2"
    assert o.external_ids("Interface", "pb")["ovsfoot-elephants"] == "1"
    assert o.external_ids("Bridge", "br-pub")["ovsfoot-elephants"] == "3"
    for _ in range(3):                      # and nothing is sent again
        step(d, pub, 50)
    assert pub.transactions == base + 3


def test_a_flood_of_changes_is_held_to_the_budget_and_the_last_one_lands(db, pub):
    o, d = db
    pub.budget.fill()
    base = pub.transactions
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 1.5 or n < 200:      # a new footprint every turn
        n += 1
        pub.publish(*keys({"pa": n, "pb": n % 3}))
        step(d, pub, 2)
    elapsed = time.monotonic() - t0
    sent = pub.transactions - base
    assert sent <= BURST + RATE * elapsed + 1, f"{sent} transactions in {elapsed:.2f} s"
    assert pub.flush(10)                    # nothing lost: the last footprint is what is there
    assert o.external_ids("Interface", "pa")["ovsfoot-elephants"] == str(n)
    assert o.external_ids("Interface", "pb")["ovsfoot-elephants"] == str(n % 3)



def runs_until(d: LocalDb, seen) -> bool:
    """Runs the IDL until `seen()`; True if a run() said the replica changed (the
    agent then reads the topology again)."""
    changed, deadline = False, time.monotonic() + 10
    while not seen():
        assert time.monotonic() < deadline, "the IDL never saw the change"
        changed |= d.run()
        time.sleep(0.01)
    return changed | d.run()


def ids(d: LocalDb, table: str, name: str) -> dict[str, str]:
    return next((r.external_ids for r in d.rows(table) if r.name == name), {})


def test_own_writes_are_not_a_topology_change_and_the_rest_is(db, pub):
    o, d = db
    d.run()
    pub.publish(*keys({"pa": 1, "pb": 0}))
    assert pub.flush(10)
    assert not d.run()                  # the publication's update: nothing to read again
    # an output key changed by another hand: not a topology change, but repaired
    o.vsctl("set", "Interface", "pa", "external_ids:ovsfoot-elephants=7")
    assert not runs_until(d, lambda: ids(d, "Interface", "pa").get("ovsfoot-elephants") == "7")
    assert pub.flush(10) and o.external_ids("Interface", "pa")["ovsfoot-elephants"] == "1"
    # what the agent reads: a zone, an input key, a new port
    o.vsctl("br-set-external-id", "br-pub", "ct-zone-lp-pa", "5")
    assert runs_until(d, lambda: "ct-zone-lp-pa" in ids(d, "Bridge", "br-pub"))
    o.vsctl("set", "Interface", "pb", "external_ids:ovsfoot-workload=team/b")
    assert runs_until(d, lambda: "ovsfoot-workload" in ids(d, "Interface", "pb"))
    o.vsctl("add-port", "br-pub", "pc")
    assert runs_until(d, lambda: any(i.name == "pc" for i in d.rows("Interface")))
    # a restarted server: the replica follows it again
    o.stop("ovsdb-server")
    wait_for(lambda: not (o.dir / "db.sock").exists(), what="ovsdb-server to stop")
    o.start_db()
    o.vsctl("br-set-external-id", "br-pub", "ct-zone-lp-pb", "6")
    assert runs_until(d, lambda: "ct-zone-lp-pb" in ids(d, "Bridge", "br-pub"))
