"""After an upgrade: deletes, once, what ovsfoot 0.1 wrote into OVN Southbound.

Versions before the cluster database kept the cluster view in this chassis'
`Chassis_Private` external_ids, where every write made ovn-northd recompute.
This removes those `ovsfoot-*` keys in one transaction (one last recompute)
and closes the connection. It monitors only this chassis' row, with a schema
of just that table and those columns, so it never waits for the server. The
agent starts it only where an earlier version left traces: even a client that
only reads makes ovn-northd recompute as it comes and goes (see the README).
"""

from __future__ import annotations

import logging

import ovs.poller

from ovsfoot import contract
from ovsfoot.ovsdb import make_idl
from ovsfoot.publishers.externalids import ExternalIdsPublisher

log = logging.getLogger(__name__)

_MAP = {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}}
SB_PART = {"name": "OVN_Southbound", "version": "20.0.0", "tables": {
    "Chassis_Private": {"columns": {"name": {"type": "string"}, "external_ids": _MAP}}}}


class SouthboundCleanup:
    def __init__(self, remote: str, chassis: str):
        self.remote, self.chassis = remote, chassis
        self.idl = make_idl(remote, SB_PART, None)
        self.idl.cond_change("Chassis_Private", [["name", "==", chassis]])
        self.pub = ExternalIdsPublisher(
            self.idl, self._rows, lambda k: k.startswith(contract.PREFIX), None,
            f"OVN Southbound {remote}")
        self.pub.want({})
        self.done = False

    def _rows(self):
        for row in self.idl.tables["Chassis_Private"].rows.values():
            if row.name == self.chassis:
                yield self.chassis, row

    def run(self) -> None:
        if self.done:
            return
        self.idl.run()
        if not self.idl.has_ever_connected() or not self.pub.settled():
            return
        if self.pub.committed:      # once: a key someone sets afterwards is not ours
            log.info("deleted the ovsfoot keys an earlier version wrote to chassis %s's "
                     "Chassis_Private row in %s", self.chassis, self.remote)
            self.close()
        elif not self.pub.diff():   # nothing was left
            self.close()
        else:
            self.pub.run()

    def wait(self, poller: ovs.poller.Poller) -> None:
        if not self.done:
            self.idl.wait(poller)
            self.pub.wait(poller)

    def close(self) -> None:
        if not self.done:
            self.done = True
            self.idl.close()
