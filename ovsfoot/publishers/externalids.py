"""Reconciles ovsfoot's keys in rows' external_ids with what is wanted.

Keys are written only with setkey/delkey, so other writers' keys are never
touched. Each reconcile is one transaction, started when a token of the
publisher's budget (a TokenBucket; None: unlimited) is there. Up to `depth`
transactions are in flight at once: the server applies a connection's
transactions in the order they were sent, so a change that comes while
another is in flight goes at once, on top of it, instead of waiting out its
round trip. After a server restart the IDL resyncs and the next reconcile
repairs whatever is missing.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable

import ovs.db.idl
import ovs.poller

from ovsfoot.contract import TS
from ovsfoot.publishers.bucket import TokenBucket

log = logging.getLogger(__name__)

Txn = ovs.db.idl.Transaction
Rows = Callable[[], Iterable[tuple[Hashable, object]]]
Change = tuple[object, dict[str, str], list[str]]       # row, keys to set, keys to delete


@dataclass
class Flight:
    """A transaction sent and not yet answered."""
    txn: Txn
    built: int                                  # time.time_ns() when it was built
    changes: list[Change] = field(default_factory=list)


class Committer(ABC):
    """Transactions in flight, at most `depth` at once; counts them, and logs what the
    server refused. A subclass says when it is `ready` for another, what its `diff` is
    and how to `write` it."""

    def __init__(self, what: str, depth: int = 1):
        self.what, self.depth = what, depth
        self.flights: list[Flight] = []
        self.transactions = 0
        self.failures = 0
        self.committed = 0  # transactions the server applied
        self.on_commit: Callable[[int], None] | None = None   # metrics: called with `built`

    def begin(self, idl: ovs.db.idl.Idl, comment: str, changes: Iterable[Change] = ()) -> Txn:
        """A new transaction, in flight once its caller has filled it and `settled()` runs."""
        txn = Txn(idl)
        txn.add_comment(comment)
        self.flights.append(Flight(txn, time.time_ns(), list(changes)))
        self.transactions += 1
        return txn

    @property
    def txn(self) -> Txn | None:
        """The oldest transaction in flight, or None."""
        return self.flights[0].txn if self.flights else None

    def room(self) -> bool:
        return len(self.flights) < self.depth

    def settled(self) -> bool:
        """Sends what was begun and advances what is in flight; True once none is."""
        for flight in list(self.flights):
            status = flight.txn.commit()
            if status == Txn.INCOMPLETE:
                continue
            if status not in (Txn.SUCCESS, Txn.UNCHANGED, Txn.TRY_AGAIN):
                self.failures += 1
                log.error("%s refused an update: %s (%s); will retry", self.what, status,
                          flight.txn.get_error())
            elif status == Txn.SUCCESS:
                self.committed += 1
                if self.on_commit is not None:
                    self.on_commit(flight.built)
            self.flights.remove(flight)
        return not self.flights

    def wait(self, poller: ovs.poller.Poller) -> None:
        for flight in self.flights:
            flight.txn.wait(poller)

    def reconcile(self, idl: ovs.db.idl.Idl, comment: str) -> None:
        """Once `ready()`, writes what `diff()` returns in one transaction and sends it."""
        if not self.ready() or not (changes := self.diff()):
            return
        self.write(self.begin(idl, comment, changes), changes)
        self.settled()

    @abstractmethod
    def ready(self) -> bool:
        ...

    @abstractmethod
    def diff(self) -> list:
        ...

    @abstractmethod
    def write(self, txn: Txn, changes: list) -> None:
        ...


class ExternalIdsPublisher(Committer):
    """`rows()` yields (id, row) for the rows to manage; `owned(key)` says which
    external_ids keys are ours to set and delete. Every row that has wanted
    keys also gets `ovsfoot-ts`, the time of its last change in ms."""

    def __init__(self, idl: ovs.db.idl.Idl, rows: Rows, owned: Callable[[str], bool],
                 budget: TokenBucket | None = None, what: str = "OVSDB", depth: int = 1):
        super().__init__(what, depth)
        self.idl, self.rows, self.owned = idl, rows, owned
        self.budget = budget
        self._want: dict[Hashable, dict[str, str]] | None = None
        self._read: tuple[int, list[tuple[Hashable, object, dict[str, str]]]] | None = None

    def want(self, wanted: dict[Hashable, dict[str, str]]) -> None:
        """The keys each row should have; rows not named should have none."""
        self._want = wanted

    def _ours(self) -> list[tuple[Hashable, object, dict[str, str]]]:
        """(id, row, our keys on it) as the replica has them, read again only once the
        IDL has changed (python-ovs converts a whole column at every read)."""
        seqno = self.idl.change_seqno
        if self._read is None or self._read[0] != seqno:
            self._read = (seqno, [(rid, row, {k: v for k, v in row.external_ids.items()
                                              if self.owned(k)})
                                  for rid, row in self.rows()])
        return self._read[1]

    def diff(self) -> list[Change]:
        """(row, keys to set, keys to delete) for every row that differs, counting what
        is in flight as done."""
        sent: dict[object, dict[str, str | None]] = {}
        for flight in self.flights:
            for row, put, drop in flight.changes:
                sent.setdefault(row.uuid, {}).update(put, **dict.fromkeys(drop))
        changes = []
        for rid, row, have in self._ours():
            if row.uuid in sent:
                have = {k: v for k, v in {**have, **sent[row.uuid]}.items() if v is not None}
            want = self._want.get(rid, {})
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
        self.settled()
        self.reconcile(self.idl, "ovsfoot: publish footprints")

    def ready(self) -> bool:
        return self.room() and self._want is not None \
            and not (self.budget and self.budget.wait_s() > 0)

    def write(self, txn: Txn, changes: list[Change]) -> None:
        if self.budget:
            self.budget.take()
        for row, put, drop in changes:
            for k, v in put.items():
                row.setkey("external_ids", k, v)
            for k in drop:
                row.delkey("external_ids", k)

    def wait(self, poller: ovs.poller.Poller) -> None:
        super().wait(poller)
        if self.room() and self._want is not None and self.budget \
                and (left := self.budget.wait_s()) > 0:
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
            if not self.flights and not self.diff():
                return True
            poller = ovs.poller.Poller()
            self.idl.wait(poller)
            self.wait(poller)
            poller.timer_wait(100)
            poller.block()
        log.warning("could not update the ovsfoot keys in %s within %.0f s",
                    self.what, timeout)
        return False
