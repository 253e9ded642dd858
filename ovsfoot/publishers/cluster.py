"""The cluster view: this chassis' summary and learned classes in ovsfoot's own database.

The database is `OVSFoot_Cluster` (ovsfoot/cluster.ovsschema), a clustered
OVSDB (raft) of its own: nothing is written to OVN's databases, so neither
ovn-northd nor ovn-controller ever recomputes because of ovsfoot. With SSL and
RBAC (`ovsfoot cluster-db`), a chassis may write only the rows that carry its
name: its `Chassis` row and its `Workload_Class` rows.

Each agent keeps, with at most one transaction per `min_interval`, when
something changed and, as a heartbeat, every `heartbeat` seconds (readers tell a
dead agent from a quiet node by `updated`):
  Chassis         name, hostname, footprint, elephants, heavy_ports,
                  sensitive_ports, bps, flows_per_s (buckets, as on the Bridge), updated
  Workload_Class  (workload, chassis): learned (heavy|sensitive|light), score, updated
and reads the heavy and sensitive classes other chassis learned, so that a
workload learned on one node is classed the moment it is redeployed on another.
The IDL monitors only this chassis' rows and those classes (conditional
monitoring), so a chassis' traffic does not grow with the size of the cluster.
The schema ships with the package: connecting never waits for the server.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import ovs.poller

from ovsfoot import contract
from ovsfoot.ovsdb import ClusterIdl, make_idl
from ovsfoot.publishers.externalids import Committer

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("hostname", "footprint", "elephants", "heavy_ports", "sensitive_ports",
                   "bps", "flows_per_s")
# summary column: its key in NodeKeys.format
COUNT_KEYS = {"elephants": contract.ELEPHANTS, "heavy_ports": contract.HEAVY_PORTS,
              "sensitive_ports": contract.SENSITIVE_PORTS, "bps": contract.BPS,
              "flows_per_s": contract.FLOWS_PER_S}
SHARED_CLASSES = (contract.HEAVY, contract.SENSITIVE)     # what other chassis' lessons say
HEARTBEAT_S = 10.0
SCORE_STEP = 0.5        # a lesson's score is rewritten when it moved this much (or its class)
CLASS_COLUMNS = ("learned", "score")


@dataclass(frozen=True, slots=True)
class Lesson:
    """What this chassis learned about a workload."""

    klass: str
    score: float


def _changed(row, want: dict) -> dict:
    """The columns of `want` that `row` does not have yet (RBAC lets a chassis
    update only these, never the columns that name the row)."""
    return {c: v for c, v in want.items() if getattr(row, c) != v}


class ClusterPublisher(Committer):
    def __init__(self, remote: str, chassis: str, hostname: str, min_interval: float = 1.0,
                 heartbeat: float = HEARTBEAT_S):
        super().__init__(f"cluster database {remote}")
        self.remote, self.chassis, self.hostname = remote, chassis, hostname
        self.min_interval, self.heartbeat = min_interval, heartbeat
        self.idl = make_idl(remote, contract.cluster_schema_path(), {
            "Chassis": ["name", *SUMMARY_COLUMNS, "updated"],
            "Workload_Class": ["workload", "chassis", *CLASS_COLUMNS, "updated"]}, ClusterIdl)
        self.idl.cond_change("Chassis", [["name", "==", chassis]])
        self.idl.cond_change("Workload_Class", [["chassis", "==", chassis]] +
                             [["learned", "==", c] for c in SHARED_CLASSES])
        self.classes: dict[str, str] = {}           # as learned on other chassis
        self._summary: dict | None = None           # None: withdrawn
        self._lessons: dict[str, Lesson] = {}
        self._last = 0.0
        self._seqno = None
        self._connected = False
        log.info("cluster view: %s as chassis %s", remote, chassis)

    def publish(self, node: dict[str, str], learned: dict[str, Lesson]) -> None:
        """The node summary (NodeKeys.format) and this chassis' lessons."""
        self._summary = {"hostname": self.hostname, "footprint": node[contract.FOOTPRINT],
                         **{c: int(node[k]) for c, k in COUNT_KEYS.items()}}
        self._lessons = dict(learned)

    # -- reconciling ------------------------------------------------------------
    def _rows(self, table: str):
        return self.idl.tables[table].rows.values()

    def _own_chassis(self):
        return next((r for r in self._rows("Chassis") if r.name == self.chassis), None)

    def diff(self) -> list[tuple[str, object, dict | None]]:
        """(table, row or None to insert, columns to set or None to delete)."""
        out = []
        chassis = self._own_chassis()
        if self._summary is None:
            if chassis is not None:
                out.append(("Chassis", chassis, None))
        elif chassis is None:
            out.append(("Chassis", None, {"name": self.chassis, **self._summary}))
        elif (put := _changed(chassis, self._summary)) or self._beat_due(chassis):
            out.append(("Chassis", chassis, put))      # `updated` is set on every write
        have = {r.workload: r for r in self._rows("Workload_Class") if r.chassis == self.chassis}
        for workload, lesson in self._lessons.items():
            row = have.get(workload)
            want = {"learned": lesson.klass, "score": round(lesson.score, 2)}
            if row is None:
                out.append(("Workload_Class", None,
                            {"workload": workload, "chassis": self.chassis, **want}))
            elif (put := _changed(row, want)) and ("learned" in put or
                                                   abs(row.score - want["score"]) >= SCORE_STEP):
                out.append(("Workload_Class", row, put))
        for workload, row in have.items():
            if workload not in self._lessons:
                out.append(("Workload_Class", row, None))
        return out

    def _beat_due(self, chassis) -> bool:
        return time.time_ns() // 1_000_000 - chassis.updated >= self.heartbeat * 1000

    def ready(self) -> bool:
        return self.settled() and self.idl.has_ever_connected() \
            and time.monotonic() - self._last >= self.min_interval

    def write(self, txn, changes: list[tuple[str, object, dict | None]]) -> None:
        self._last = time.monotonic()
        now = time.time_ns() // 1_000_000
        for table, row, cols in changes:
            if cols is None:
                row.delete()
                continue
            if row is None:
                row = txn.insert(self.idl.tables[table])
            for c, v in {**cols, "updated": now}.items():
                setattr(row, c, v)

    # -- the loop ----------------------------------------------------------------
    def run(self) -> bool:
        """True when the classes other chassis learned changed."""
        self.idl.run()
        connected = self.idl.is_connected()
        if connected != self._connected:
            self._connected = connected
            log.log(logging.INFO if connected else logging.WARNING, "cluster database %s: %s",
                    self.remote, "connected" if connected else
                    "not connected; the cluster view waits for it (check --cluster-db)")
        self.reconcile(self.idl, f"ovsfoot: chassis {self.chassis}")
        if self.idl.change_seqno == self._seqno:
            return False
        self._seqno = self.idl.change_seqno
        classes: dict[str, str] = {}
        for r in self._rows("Workload_Class"):
            if r.chassis != self.chassis and r.learned in SHARED_CLASSES \
                    and contract.usable_workload(r.workload, "cluster database"):
                classes[r.workload] = contract.strongest([classes.get(r.workload), r.learned])
        changed, self.classes = classes != self.classes, classes
        return changed

    def wait(self, poller: ovs.poller.Poller) -> None:
        self.idl.wait(poller)
        if self.flights:
            super().wait(poller)
        elif self.diff():
            left = self.min_interval - (time.monotonic() - self._last)
            poller.timer_wait(max(0, int(left * 1000)) + 1)
        elif self._summary is not None and (row := self._own_chassis()) is not None:
            due = row.updated + self.heartbeat * 1000 - time.time_ns() // 1_000_000
            poller.timer_wait(max(0, int(due)) + 1)

    def close(self, timeout: float = 3.0) -> bool:
        """Withdraws the node summary; the learned classes stay: they are the
        cluster's memory of workloads, also while this node is down."""
        self._summary = None
        self._last = 0.0
        deadline = time.monotonic() + timeout
        done = False
        while time.monotonic() < deadline:
            self.run()
            if self.txn is None and self.idl.has_ever_connected() and not self.diff():
                done = True
                break
            poller = ovs.poller.Poller()
            self.wait(poller)
            poller.timer_wait(100)
            poller.block()
        if not done:
            log.warning("could not withdraw chassis %s's summary from %s within %.0f s",
                        self.chassis, self.remote, timeout)
        self.idl.close()
        return done
