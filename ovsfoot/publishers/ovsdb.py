"""Publishes footprints into the local Open_vSwitch database's external_ids.

The contract (see README "OVSDB keys"):
  Interface     ovsfoot-footprint, ovsfoot-elephants, ovsfoot-workload-class, ovsfoot-ts
  Open_vSwitch  ovsfoot-footprint, ovsfoot-elephants, ovsfoot-heavy-ports, ovsfoot-ts

Only keys starting with `ovsfoot-` are written, only through setkey/delkey, so
other writers' keys are never touched. The publisher reconciles what it wants
with what the replica holds, at most once per `min_interval`, in one
transaction; after an ovsdb-server restart the IDL resyncs and the next
reconcile repairs whatever is missing.
"""

from __future__ import annotations

import logging
import time

import ovs.db.idl
import ovs.poller

from ovsfoot.ovsdb import LocalDb

log = logging.getLogger(__name__)

PREFIX = "ovsfoot-"
TS = "ovsfoot-ts"
# Keys ovsfoot writes; other ovsfoot- keys (ovsfoot-workload, ovsfoot-ip) are inputs.
OUTPUT_KEYS = frozenset({"ovsfoot-footprint", "ovsfoot-elephants", "ovsfoot-workload-class",
                         "ovsfoot-heavy-ports", TS})

Txn = ovs.db.idl.Transaction


class OvsdbPublisher:
    def __init__(self, db: LocalDb, min_interval: float = 0.1):
        self.db = db
        self.min_interval = min_interval
        self.txn: Txn | None = None
        self._last = 0.0
        self.transactions = 0
        self.failures = 0
        self.last_commit_ns = 0     # when the last transaction committed
        self._want: dict[tuple[str, str], dict[str, str]] | None = None

    def want(self, interfaces: dict[str, dict[str, str]], node: dict[str, str]) -> None:
        """What to publish: keys per Interface name, and for the node (root row)."""
        self._want = {("Interface", n): kv for n, kv in interfaces.items()}
        self._want[("Open_vSwitch", "")] = node

    def _diff(self) -> list[tuple[object, dict[str, str], list[str]]]:
        """(row, keys to set, keys to delete) for every row that differs."""
        changes = []
        rows = [("Interface", r.name, r) for r in self.db.rows("Interface")]
        root = self.db.root()
        if root is not None:
            rows.append(("Open_vSwitch", "", root))
        for table, name, row in rows:
            want = self._want.get((table, name), {})
            have = {k: v for k, v in row.external_ids.items() if k in OUTPUT_KEYS}
            if want:
                put = {k: v for k, v in want.items() if have.get(k) != v}
                drop = [k for k in have if k not in want and k != TS]
                if put or drop:
                    put[TS] = str(time.time_ns() // 1_000_000)
            else:
                put, drop = {}, list(have)
            if put or drop:
                changes.append((row, put, drop))
        return changes

    def run(self) -> None:
        if self.txn is not None:
            status = self.txn.commit()
            if status == Txn.INCOMPLETE:
                return
            if status in (Txn.SUCCESS, Txn.UNCHANGED):
                self.last_commit_ns = time.time_ns()
            elif status != Txn.TRY_AGAIN:
                self.failures += 1
                log.error("publishing to OVSDB failed: %s (%s); will retry",
                          status, self.txn.get_error())
            self.txn = None
        if self._want is None or time.monotonic() - self._last < self.min_interval:
            return
        changes = self._diff()
        if not changes:
            return
        self._last = time.monotonic()
        self.txn = Txn(self.db.idl)
        self.txn.add_comment("ovsfoot: publish footprints")
        for row, put, drop in changes:
            for k, v in put.items():
                row.setkey("external_ids", k, v)
            for k in drop:
                row.delkey("external_ids", k)
        self.transactions += 1
        self.run()

    def wait(self, poller) -> None:
        if self.txn is not None:
            self.txn.wait(poller)
        elif self._want is not None:
            left = self.min_interval - (time.monotonic() - self._last)
            if left > 0:
                poller.timer_wait(int(left * 1000) + 1)

    def withdraw(self, timeout: float = 5.0) -> None:
        """Removes every key ovsfoot wrote (used when the agent exits)."""
        self._want = {}
        self._last = 0.0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.db.run()
            self.run()
            if self.txn is None and not self._diff():
                return
            poller = ovs.poller.Poller()
            self.db.wait(poller)
            self.wait(poller)
            poller.timer_wait(100)
            poller.block()
        log.warning("could not withdraw all ovsfoot keys within %.0f s", timeout)
