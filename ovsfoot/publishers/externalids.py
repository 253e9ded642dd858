"""Reconciles ovsfoot's keys in rows' external_ids with what is wanted.

Keys are written only with setkey/delkey, so other writers' keys are never
touched. Each reconcile is one transaction, started when a token of the
publisher's budget (a TokenBucket; None: unlimited) is there; after a server
restart the IDL resyncs and the next reconcile repairs whatever is missing.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Hashable, Iterable

import ovs.db.idl
import ovs.poller

from ovsfoot.contract import TS
from ovsfoot.publishers.bucket import TokenBucket

log = logging.getLogger(__name__)

Txn = ovs.db.idl.Transaction
Rows = Callable[[], Iterable[tuple[Hashable, object]]]


class Committer:
    """One transaction in flight at a time; counts them, and logs what the server refused."""

    def __init__(self, what: str):
        self.what = what
        self.txn: Txn | None = None
        self.transactions = 0
        self.failures = 0
        self.committed = 0  # transactions the server applied
        self.built = 0      # time.time_ns() when the transaction in flight was built
        self.on_commit: Callable[[int], None] | None = None   # metrics: called with `built`

    def settled(self) -> bool:
        """Advances the transaction in flight; True once there is none."""
        if self.txn is None:
            return True
        status = self.txn.commit()
        if status == Txn.INCOMPLETE:
            return False
        if status not in (Txn.SUCCESS, Txn.UNCHANGED, Txn.TRY_AGAIN):
            self.failures += 1
            log.error("%s refused an update: %s (%s); will retry", self.what, status,
                      self.txn.get_error())
        elif status == Txn.SUCCESS:
            self.committed += 1
            if self.on_commit is not None:
                self.on_commit(self.built)
        self.txn = None
        return True


class ExternalIdsPublisher(Committer):
    """`rows()` yields (id, row) for the rows to manage; `owned(key)` says which
    external_ids keys are ours to set and delete. Every row that has wanted
    keys also gets `ovsfoot-ts`, the time of its last change in ms."""

    def __init__(self, idl: ovs.db.idl.Idl, rows: Rows, owned: Callable[[str], bool],
                 budget: TokenBucket | None = None, what: str = "OVSDB"):
        super().__init__(what)
        self.idl, self.rows, self.owned = idl, rows, owned
        self.budget = budget
        self._want: dict[Hashable, dict[str, str]] | None = None

    def want(self, wanted: dict[Hashable, dict[str, str]]) -> None:
        """The keys each row should have; rows not named should have none."""
        self._want = wanted

    def diff(self) -> list[tuple[object, dict[str, str], list[str]]]:
        """(row, keys to set, keys to delete) for every row that differs."""
        changes = []
        for rid, row in self.rows():
            want = self._want.get(rid, {})
            have = {k: v for k, v in row.external_ids.items() if self.owned(k)}
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
        if not self.settled():
            return
        if self._want is None or (self.budget and self.budget.wait_s() > 0):
            return
        changes = self.diff()
        if not changes:
            return
        if self.budget:
            self.budget.take()
        self.txn = Txn(self.idl)
        self.built = time.time_ns()
        self.txn.add_comment("ovsfoot: publish footprints")
        for row, put, drop in changes:
            for k, v in put.items():
                row.setkey("external_ids", k, v)
            for k in drop:
                row.delkey("external_ids", k)
        self.transactions += 1
        self.run()

    def wait(self, poller: ovs.poller.Poller) -> None:
        if self.txn is not None:
            self.txn.wait(poller)
        elif self._want is not None and self.budget and (left := self.budget.wait_s()) > 0:
            poller.timer_wait(int(left * 1000) + 1)

    def withdraw(self, timeout: float = 5.0) -> bool:
        """Removes every key ovsfoot wrote; True once done."""
        self.want({})
        return self.flush(timeout)

    def flush(self, timeout: float = 5.0) -> bool:
        """Commits what is wanted now, waiting up to `timeout`; True once done."""
        if self.budget:
            self.budget.fill()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.idl.run()
            self.run()
            if self.txn is None and not self.diff():
                return True
            poller = ovs.poller.Poller()
            self.idl.wait(poller)
            self.wait(poller)
            poller.timer_wait(100)
            poller.block()
        log.warning("could not update the ovsfoot keys in %s within %.0f s",
                    self.what, timeout)
        return False
