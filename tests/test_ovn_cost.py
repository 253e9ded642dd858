"""What ovsfoot costs OVN's control plane: nothing.

Measured with the daemons' own counters: `inc-engine/show-stats` of
ovn-controller and ovn-northd (recomputes per engine node) and `coverage/show`
of ovs-vswitchd (`bridge_reconfigure`). Writes are made as the agent makes them
(python-ovs IDL, setkey), which do not bump next_cfg.

A change of the Open_vSwitch row's external_ids makes ovn-controller recompute
everything; one of the integration bridge's or an Interface's does not. That is
why the node summary lives on the integration bridge.
"""

import contextlib
import socket
import threading
import time
from pathlib import Path

import ovs.db.idl
import pytest

from conftest import destroy_node, make_node, wait_elephants
from integration.ovncost import Cost, measure
from integration.sandbox import kill, wait_for
from ovsfoot.ovsdb import LocalDb

WRITES = 5


def write_keys(db: LocalDb, table: str, name: str, n: int) -> None:
    """`n` changes of external_ids:ovsfoot-probe on one row, each committed alone."""
    for i in range(n):
        db.run()
        row = next(r for r in db.rows(table) if table == "Open_vSwitch" or r.name == name)
        txn = ovs.db.idl.Transaction(db.idl)
        if i == n - 1:
            row.delkey("external_ids", "ovsfoot-probe")
        else:
            row.setkey("external_ids", "ovsfoot-probe", str(i))
        assert txn.commit_block() in (txn.SUCCESS, txn.UNCHANGED)
        time.sleep(0.3)             # ovn-controller handles each change on its own


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A chassis whose ovs-vswitchd has a network namespace of its own: links that
    come and go elsewhere on this machine do not make it reconfigure."""
    n = make_node(tmp_path_factory.mktemp("cost"), "cst")
    yield n
    destroy_node(n)
    n.central.stop_all()


@pytest.fixture(scope="module")
def db(node):
    d = LocalDb(node.ovs.remote, timeout=10)
    wait_for(lambda: (d.run(), d.idl.has_ever_connected())[1], what="the IDL to sync")
    yield d
    d.idl.close()


@pytest.mark.parametrize("table", ["Open_vSwitch", "Bridge", "Interface"])
def test_what_a_write_costs(node, db, table):
    name = {"Open_vSwitch": ".", "Bridge": node.ovs.bridge,
            "Interface": node.pods["p1"].interface}[table]
    cost = measure(node.ovs, node.central, lambda: write_keys(db, table, name, WRITES))
    print(f"{WRITES} writes of {table} external_ids: {cost}")
    if table == "Open_vSwitch":
        # the measurement sees a recompute when there is one
        assert cost.controller >= WRITES - 1, cost
    else:
        assert cost == Cost(), cost
        assert cost.vswitchd_reconfigures == 0


def test_agent_adds_no_recompute(node):
    """A quiet control phase (the same elephant, no agent), then the agent detecting,
    publishing and withdrawing it: no more recomputes than without it."""
    def elephant():
        node.flush_conntrack()
        node.iperf("p1", "p2", seconds=3)
        time.sleep(4)               # past the idle time: the agent withdraws it

    control = measure(node.ovs, node.central, elephant)
    seen = []

    def with_agent():
        agent = node.agent().start()
        try:
            node.flush_conntrack()
            seen.append(node.iperf("p1", "p2", seconds=3, during=lambda: wait_elephants(
                agent, lambda rows: rows, what="the elephant")))
            wait_for(lambda: node.ovs.external_ids("Bridge", node.ovs.bridge)
                     .get("ovsfoot-elephants") == "0", what="the elephant withdrawn")
        finally:
            assert agent.stop() == 0
    with_agent_cost = measure(node.ovs, node.central, with_agent)
    print(f"without the agent: {control}; with it: {with_agent_cost}")
    assert seen and seen[0], "the agent detected nothing: the phase measured nothing"
    assert with_agent_cost.at_most(control), (with_agent_cost, control)


def test_traffic_keys_add_no_recompute(node):
    """The throughput and flow-rate keys: a shuffle (heavy without an elephant) and an
    RPC loop (sensitive), without the agent, then with it publishing their buckets and
    classes: no more recomputes, and few transactions for 12 s of rates."""
    agent, seen = None, []

    def traffic():
        procs = [*node.workload("p1", "p2", 7101, "shuffle", "25", "1600000", "12"),
                 *node.workload("p3", "p4", 7102, "rpc", "100", "12")]
        time.sleep(10)
        if agent is not None:       # what it publishes while the traffic runs
            seen.append(node.ovs.external_ids("Interface", node.pods["p1"].interface))
        time.sleep(3)
        kill(*procs)
        node.flush_conntrack()
    with node.short_time_wait():
        control = measure(node.ovs, node.central, traffic)
        agent = node.agent("--rate-window=4").start()
        try:
            with_agent = measure(node.ovs, node.central, traffic)
            transactions = agent.json("stats")["transactions"]
        finally:
            assert agent.stop() == 0
    print(f"without the agent: {control}; with it: {with_agent}, "
          f"{transactions} transactions, p1 at 10 s: {seen}")
    assert int(seen[0].get("ovsfoot-bps", 0)) >= 50_000_000, \
        "the agent published no throughput: the phase measured nothing"
    assert transactions <= 20      # measured: 2-10 (the ramp-up crosses buckets)
    assert with_agent.at_most(control), (with_agent, control)


def test_upgrade_deletes_legacy_keys_once(node):
    """Keys an earlier version wrote on the Open_vSwitch row and in this chassis'
    Chassis_Private row go, once; nobody else's keys are touched."""
    chassis = node.ovs.external_ids("Open_vSwitch", ".")["system-id"]
    node.ovs.vsctl("set", "Open_vSwitch", ".", "external_ids:ovsfoot-footprint=heavy",
                   "external_ids:ovsfoot-elephants=3", "external_ids:ovsfoot-ts=1")
    wait_for(lambda: node.central.sbctl("--bare", "--columns=_uuid", "find", "Chassis_Private",
                                        f"name={chassis}"), what="the Chassis_Private row")
    node.central.sbctl("set", "Chassis_Private", chassis,
                       "external_ids:ovsfoot-class-shop/web=heavy",
                       "external_ids:ovsfoot-footprint=light", "external_ids:keep-me=1")

    def sb_ids():
        out = node.central.sbctl("--bare", "--columns=external_ids", "find", "Chassis_Private",
                                 f"name={chassis}")
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    agent = node.agent().start()
    try:
        wait_for(lambda: not any(k.startswith("ovsfoot-") for k in sb_ids()),
                 what="the legacy keys gone from Chassis_Private")
        root = wait_for(lambda: (r := node.ovs.external_ids("Open_vSwitch", "."))
                        and not any(k.startswith("ovsfoot-") for k in r) and r,
                        what="the legacy keys gone from the Open_vSwitch row")
        assert root["system-id"] == chassis and sb_ids()["keep-me"] == "1"
        # once: a key set now by someone else stays
        node.central.sbctl("set", "Chassis_Private", chassis, "external_ids:ovsfoot-x=1")
        time.sleep(1.5)
        assert sb_ids().get("ovsfoot-x") == "1"
        assert "deleted the ovsfoot keys an earlier version wrote" in agent.log_text()
    finally:
        assert agent.stop() == 0
        node.central.sbctl("remove", "Chassis_Private", chassis, "external_ids", "ovsfoot-x",
                           "keep-me")


class CountingProxy:
    """A unix socket in front of another that counts the connections it accepts: an
    `ovn-remote` through which every client of OVN Southbound on this chassis is seen."""

    def __init__(self, path: Path, target: str):
        self.path, self.target, self.accepted = path, target, 0
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return              # closed
            self.accepted += 1
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.target)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


def test_a_new_agent_never_connects_to_southbound(node, tmp_path):
    """Where no earlier version ran, the agent does not even connect to OVN
    Southbound: in OVN 23.03 a client that comes or goes makes ovsdb-server update its
    Connection row's status, and ovn-northd recompute everything. Where one ran (its
    keys on the Open_vSwitch row), it connects once, to delete what that left there."""
    ids = node.ovs.external_ids("Open_vSwitch", ".")
    proxy = CountingProxy(tmp_path / "sb-proxy.sock", node.central.sb.removeprefix("unix:"))
    node.ovs.vsctl("set", "Open_vSwitch", ".", f"external_ids:ovn-remote=unix:{proxy.path}")
    try:
        # ovn-controller reconnects through the proxy
        wait_for(lambda: proxy.accepted and "connected" == node.ovs.appctl(
            "ovn-controller", "connection-status").strip(), what="ovn-controller via the proxy")
        before = proxy.accepted
        agent = node.agent().start()
        try:
            wait_for(lambda: "not connecting to OVN Southbound" in agent.log_text(),
                     what="the agent's first sync")
            time.sleep(1)
            assert proxy.accepted == before, "a new agent connected to OVN Southbound"
        finally:
            assert agent.stop() == 0
        # the proxy sees the connection of an agent that has something to delete
        node.ovs.vsctl("set", "Open_vSwitch", ".", "external_ids:ovsfoot-footprint=heavy")
        agent = node.agent().start()
        try:
            wait_for(lambda: proxy.accepted > before,
                     what="the upgraded agent's connection to OVN Southbound")
        finally:
            assert agent.stop() == 0
    finally:
        node.ovs.vsctl("set", "Open_vSwitch", ".", f"external_ids:ovn-remote={ids['ovn-remote']}")
        proxy.close()
