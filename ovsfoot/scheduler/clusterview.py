"""The cluster view: what every chassis' agent published in ovsfoot's cluster database.

A python-ovs IDL in its own thread replicates `Chassis` and the heavy and sensitive rows of
`Workload_Class` from `--cluster-db` (several comma-separated remotes of the
raft cluster, any member will do, or a relay) and rebuilds an immutable
`ClusterView` whenever they change; request handlers only read the latest view.
The schema ships with the package, so nothing blocks on a server that is down.
"""

from __future__ import annotations

import logging
import time

import ovs.poller

from ovsfoot import contract
from ovsfoot.background import Background
from ovsfoot.ovsdb import ClusterIdl, make_idl, ssl_problem
from ovsfoot.scheduler.scoring import ClusterView, NodeFacts

log = logging.getLogger(__name__)

NODE_KEYS = ("hostname", "name")


def _facts(row, seen: float | None) -> NodeFacts:
    """Facts of a Chassis row (the schema has already checked its types and ranges)."""
    return NodeFacts(row["name"], row["hostname"], row["footprint"], row["elephants"],
                     row["heavy_ports"], row["updated"], seen, row["sensitive_ports"],
                     row["bps"], row["flows_per_s"])


def build_view(chassis: list[dict], classes: list[dict], node_key: str,
               seen: dict[str, float] | None = None) -> ClusterView:
    """A view from Chassis rows and Workload_Class rows (dicts of their columns);
    `seen`: per chassis, when this reader last saw its `updated` move."""
    by_key: dict[str, NodeFacts] = {}
    for row in chassis:
        facts = _facts(row, (seen or {}).get(row["name"]))
        key = facts.hostname if node_key == "hostname" else facts.chassis
        if not key:
            continue
        if key in by_key:
            log.warning("two chassis map to node %s (%s, %s): using the first",
                        key, by_key[key].chassis, facts.chassis)
        else:
            by_key[key] = facts
    merged: dict[str, list[str]] = {}
    for row in classes:
        if contract.usable_workload(row["workload"], "cluster database"):
            merged.setdefault(row["workload"], []).append(row["learned"])
    return ClusterView(by_key, {w: contract.merge_classes(c) for w, c in merged.items()},
                       synced=True)


class ClusterDbView(Background):
    """Keeps a `ClusterView` of the cluster database up to date in a thread."""

    CHASSIS = ("name", "hostname", "footprint", "elephants", "heavy_ports", "updated",
               "sensitive_ports", "bps", "flows_per_s")
    CLASSES = ("workload", "chassis", "learned")

    def __init__(self, remote: str, node_key: str = "hostname"):
        if node_key not in NODE_KEYS:
            raise ValueError(f"node key must be one of {NODE_KEYS}")
        self.remote, self.node_key = remote, node_key
        self.view = ClusterView()
        self.connected = False
        self.updates = 0
        super().__init__("cluster-view")

    def stop(self, timeout: float | None = 5) -> None:
        super().stop(timeout)

    def status(self) -> dict:
        """What /healthz shows; `synced` is the readiness: a view of the database
        was received (until then every node scores as unknown). `problem`: why the
        connection fails, e.g. a missing or refused SSL credential."""
        status = {"cluster_db": self.remote, "synced": self.view.synced,
                  "connected": self.connected, "chassis": len(self.view.by_key),
                  "updates": self.updates, "node_key": self.node_key,
                  "workload_classes": len(self.view.classes)}
        problem = None if self.connected else ssl_problem(self.remote)
        if problem:
            status["problem"] = problem
        return status

    def loop(self) -> None:
        idl = make_idl(self.remote, contract.cluster_schema_path(), {
            "Chassis": list(self.CHASSIS), "Workload_Class": list(self.CLASSES)}, ClusterIdl)
        idl.cond_change("Workload_Class", [["learned", "==", c]
                                           for c in (contract.HEAVY, contract.SENSITIVE)])
        seqno, warned = None, False
        seen: dict[str, tuple[int, float]] = {}     # chassis: (updated, when it moved)
        try:
            while not self.stopping.is_set():
                idl.run()
                self.connected = idl.is_connected()
                if not self.connected and not warned and not idl.has_ever_connected():
                    log.warning("waiting for the cluster database %s; nodes score as "
                                "unknown meanwhile", self.remote)
                    warned = True
                if idl.has_ever_connected() and idl.change_seqno != seqno:
                    seqno = idl.change_seqno
                    rows = [{c: getattr(r, c) for c in self.CHASSIS}
                            for r in idl.tables["Chassis"].rows.values()]
                    now = time.monotonic()
                    seen = {r["name"]: seen[r["name"]] if r["name"] in seen
                            and seen[r["name"]][0] == r["updated"] else (r["updated"], now)
                            for r in rows}     # each chassis: when its heartbeat last moved
                    self.view = build_view(
                        rows,
                        [{c: getattr(r, c) for c in self.CLASSES}
                         for r in idl.tables["Workload_Class"].rows.values()],
                        self.node_key, {c: t for c, (_, t) in seen.items()})
                    self.updates += 1
                poller = ovs.poller.Poller()
                idl.wait(poller)
                poller.timer_wait(500)
                poller.block()
        finally:
            idl.close()
