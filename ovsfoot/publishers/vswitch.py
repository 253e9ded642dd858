"""Publishes footprints into the local Open_vSwitch database.

The contract (contract.py, README "OVSDB keys"):
  Interface                ovsfoot-footprint, ovsfoot-elephants, ovsfoot-workload-class, ovsfoot-ts
  Bridge (the integration  ovsfoot-footprint, ovsfoot-elephants, ovsfoot-heavy-ports, ovsfoot-ts
  bridge): the node
Not the Open_vSwitch row: any change of it makes ovn-controller recompute all
of its flows (tests/test_ovn_cost.py measures it). Keys that earlier versions
wrote there are deleted once. Inputs (ovsfoot-workload, ovsfoot-ip, ovsfoot-cni)
are never touched. The write budget: BURST transactions at once, then RATE per
second; up to DEPTH in flight, so that the second zone of a flow crossing a
few ms after the first is sent while the first's transaction is in flight.
"""

from __future__ import annotations

from ovsfoot.contract import OUTPUT_KEYS
from ovsfoot.ovsdb import LocalDb
from ovsfoot.publishers.bucket import TokenBucket
from ovsfoot.publishers.externalids import ExternalIdsPublisher

RATE = 10.0     # transactions per second, sustained
BURST = 4       # transactions at once
DEPTH = 2       # transactions in flight at once


class VswitchPublisher(ExternalIdsPublisher):
    def __init__(self, db: LocalDb, bridge: str, rate: float = RATE, burst: int = BURST):
        self.bridge = bridge

        def rows():
            for iface in db.rows("Interface"):
                yield ("Interface", iface.name), iface
            br = db.bridge(self.bridge)
            if br is not None:
                yield ("Bridge", self.bridge), br
            root = db.root()
            if root is not None:
                yield ("Open_vSwitch", ""), root        # wants nothing: legacy keys go
        super().__init__(db.idl, rows, OUTPUT_KEYS.__contains__, TokenBucket(rate, burst),
                         db.remote, DEPTH)

    def publish(self, interfaces: dict[str, dict[str, str]], node: dict[str, str]) -> None:
        """What to publish: keys per Interface name, and for the node (the bridge)."""
        self.want({**{("Interface", n): kv for n, kv in interfaces.items()},
                   ("Bridge", self.bridge): node})
