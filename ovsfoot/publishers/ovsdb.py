"""Publishes footprints into the local Open_vSwitch database.

The contract (see README "OVSDB keys"):
  Interface     ovsfoot-footprint, ovsfoot-elephants, ovsfoot-workload-class, ovsfoot-ts
  Open_vSwitch  ovsfoot-footprint, ovsfoot-elephants, ovsfoot-heavy-ports, ovsfoot-ts
Other ovsfoot- keys (ovsfoot-workload, ovsfoot-ip) are inputs, never touched.
"""

from __future__ import annotations

from ovsfoot.ovsdb import LocalDb
from ovsfoot.publishers.externalids import TS, ExternalIdsPublisher

OUTPUT_KEYS = frozenset({"ovsfoot-footprint", "ovsfoot-elephants", "ovsfoot-workload-class",
                         "ovsfoot-heavy-ports", TS})
NODE = ("Open_vSwitch", "")


class OvsdbPublisher(ExternalIdsPublisher):
    def __init__(self, db: LocalDb, min_interval: float = 0.1):
        def rows():
            for iface in db.rows("Interface"):
                yield ("Interface", iface.name), iface
            root = db.root()
            if root is not None:
                yield NODE, root
        super().__init__(db.idl, rows, OUTPUT_KEYS.__contains__, min_interval, db.remote)

    def publish(self, interfaces: dict[str, dict[str, str]], node: dict[str, str]) -> None:
        """What to publish: keys per Interface name, and for the node (root row)."""
        self.want({**{("Interface", n): kv for n, kv in interfaces.items()}, NODE: node})
