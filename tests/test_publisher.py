"""The node publisher's write budget against a real ovsdb-server: changes a few ms
apart are not held back (they commit together or back to back), a flood of
changes is held to the budget, and the last change always lands."""

import time

import ovs.poller
import pytest

from integration.sandbox import Ovs, wait_for
from ovsfoot.ovsdb import LocalDb
from ovsfoot.publishers.vswitch import BURST, RATE, VswitchPublisher

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


def test_two_changes_ms_apart_commit_back_to_back(db, pub):
    o, d = db
    base = pub.committed
    # zone of port pa crosses: its transaction goes at once
    pub.publish(*keys({"pa": 1, "pb": 0}))
    pub.run()
    assert pub.transactions == base + 1 and pub.txn is not None
    time.sleep(0.003)
    # 3 ms later port pb's zone crosses, while the first is still in flight
    pub.publish(*keys({"pa": 1, "pb": 1}))
    while pub.committed < base + 2:
        was_in_flight = pub.committed == base
        step(d, pub)
        if was_in_flight and pub.committed == base + 1 and pub.transactions == base + 1:
            pytest.fail("the first transaction settled and the second did not start with it")
    assert pub.transactions == base + 2 and pub.failures == 0
    for p in PORTS:
        assert o.external_ids("Interface", p)["ovsfoot-elephants"] == "1"
    assert o.external_ids("Bridge", "br-pub")["ovsfoot-elephants"] == "2"


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
