"""The cluster view: this chassis' summary and learned classes in OVN Southbound.

Each agent writes, into its chassis' `Chassis_Private` row (which neither
ovn-northd nor ovn-controller writes external_ids of), with setkey/delkey:
  ovsfoot-footprint, ovsfoot-elephants, ovsfoot-heavy-ports, ovsfoot-ts
  ovsfoot-class-<workload> = heavy | light   (what it has learned)
and reads the other chassis' learned classes, so that a workload learned
heavy on one node is classed heavy the moment it is redeployed on another.
The SB remote may list several servers of a cluster; the connection is made
in the background and re-made by the IDL when a server goes away.
"""

from __future__ import annotations

import logging
import time

import ovs.poller

from ovsfoot.ovsdb import open_idl
from ovsfoot.publishers.externalids import ExternalIdsPublisher

log = logging.getLogger(__name__)

CLASS_PREFIX = "ovsfoot-class-"
TABLES = {"Chassis_Private": ["name", "external_ids"]}
RETRY_S = 5.0


class Southbound:
    def __init__(self, remote: str, chassis: str, min_interval: float = 1.0):
        self.remote, self.chassis = remote, chassis
        self.min_interval = min_interval
        self.idl = None
        self.pub: ExternalIdsPublisher | None = None
        self._next_try = 0.0
        self._warned = False
        self._seqno = None
        self._wanted: dict[str, str] | None = None
        self.classes: dict[str, str] = {}     # learned on other chassis

    def _connect(self) -> None:
        if self.idl is not None or time.monotonic() < self._next_try:
            return
        try:
            self.idl = open_idl(self.remote, "OVN_Southbound", TABLES, timeout=0)
        except OSError as e:
            self._next_try = time.monotonic() + RETRY_S
            if not self._warned:
                log.warning("OVN Southbound at %s unreachable (%s): the cluster view waits "
                            "for it", self.remote, e.strerror or e)
                self._warned = True
            return
        log.info("publishing the cluster view to OVN Southbound %s as chassis %s",
                 self.remote, self.chassis)

        def rows():
            for row in self.idl.tables["Chassis_Private"].rows.values():
                if row.name == self.chassis:
                    yield self.chassis, row
        self.pub = ExternalIdsPublisher(self.idl, rows, lambda k: k.startswith("ovsfoot-"),
                                        self.min_interval, f"OVN Southbound {self.remote}")
        if self._wanted is not None:
            self.pub.want({self.chassis: self._wanted})

    def publish(self, node: dict[str, str], learned: dict[str, str]) -> None:
        """The node summary and this chassis' learned classes."""
        self._wanted = {**node, **{CLASS_PREFIX + w: c for w, c in learned.items()}}
        if self.pub:
            self.pub.want({self.chassis: self._wanted})

    def run(self) -> bool:
        """True when other chassis' learned classes changed."""
        self._connect()
        if self.idl is None:
            return False
        self.idl.run()
        self.pub.run()
        if self.idl.change_seqno == self._seqno:
            return False
        self._seqno = self.idl.change_seqno
        classes: dict[str, str] = {}
        for row in self.idl.tables["Chassis_Private"].rows.values():
            if row.name == self.chassis:
                continue
            for k, v in row.external_ids.items():
                if k.startswith(CLASS_PREFIX) and v in ("heavy", "light"):
                    w = k[len(CLASS_PREFIX):]
                    classes[w] = "heavy" if "heavy" in (v, classes.get(w)) else v
        changed, self.classes = classes != self.classes, classes
        return changed

    def wait(self, poller: ovs.poller.Poller) -> None:
        if self.idl is None:
            poller.timer_wait(max(0, int((self._next_try - time.monotonic()) * 1000)) + 1)
        else:
            self.idl.wait(poller)
            self.pub.wait(poller)

    def close(self, keep_classes: bool = True) -> None:
        """Withdraws the node summary (the learned classes stay: they are the
        cluster's memory of workloads, also while this node is down)."""
        if self.pub is not None:
            keep = {k: v for k, v in (self._wanted or {}).items()
                    if keep_classes and k.startswith(CLASS_PREFIX)}
            self.pub.want({self.chassis: keep} if keep else {})
            self.pub.flush()
        if self.idl is not None:
            self.idl.close()
