"""The cluster view: what each chassis' agent published in the OVN Southbound database.

A python-ovs IDL in its own thread replicates `Chassis` (name, hostname,
external_ids) and `Chassis_Private` (name, external_ids) from `--sb` (several
comma-separated remotes for a clustered SB; any member will do, leader or not),
and rebuilds an immutable `ClusterView` whenever they change; request handlers
only read the latest view. Keys read (Chassis_Private wins over Chassis):
`ovsfoot-footprint` (heavy|light), `ovsfoot-elephants`, `ovsfoot-heavy-ports`,
`ovsfoot-ts`, and `ovsfoot-class-<workload>` = heavy|light.
"""

from __future__ import annotations

import logging
import threading

import ovs.db.idl
import ovs.poller

from ovsfoot.ovsdb import fetch_schema
from ovsfoot.scheduler.scoring import CLASS_PREFIX, CLASSES, ClusterView, NodeFacts

log = logging.getLogger(__name__)

DB = "OVN_Southbound"
NODE_KEYS = ("hostname", "name")


def _remotes(remote: str) -> list[str]:
    # the IDL's own splitting: "unix:a,tcp:1.2.3.4:6642" -> two remotes
    out: list[str] = []
    for r in remote.split(","):
        if out and ":" not in r:
            out[-1] += "," + r
        elif r:
            out.append(r)
    return out


def _facts(chassis: str, hostname: str, ids: dict[str, str]) -> NodeFacts:
    footprint = ids.get("ovsfoot-footprint")
    if footprint is None:
        return NodeFacts(chassis, hostname, None)
    try:
        if footprint not in CLASSES:
            raise ValueError(f"ovsfoot-footprint={footprint!r}")
        ints = []
        for key in ("ovsfoot-elephants", "ovsfoot-heavy-ports"):
            n = int(ids.get(key, "0"))
            if n < 0:
                raise ValueError(f"{key}={n}")
            ints.append(n)
        ts = int(ids["ovsfoot-ts"]) if "ovsfoot-ts" in ids else None
    except ValueError as e:
        log.warning("chassis %s: ignoring malformed ovsfoot keys (%s)", chassis, e)
        return NodeFacts(chassis, hostname, None)
    return NodeFacts(chassis, hostname, footprint, ints[0], ints[1], ts)


def build_view(chassis_rows: list[tuple[str, str, dict]], private_rows: list[tuple[str, dict]],
               node_key: str) -> ClusterView:
    """A view from (name, hostname, external_ids) of Chassis and (name, external_ids)
    of Chassis_Private rows."""
    merged: dict[str, tuple[str, dict]] = {}
    for name, hostname, ids in chassis_rows:
        merged[name] = (hostname, {k: v for k, v in ids.items() if k.startswith("ovsfoot-")})
    for name, ids in private_rows:
        hostname, have = merged.get(name, ("", {}))
        merged[name] = (hostname, {**have, **{k: v for k, v in ids.items()
                                              if k.startswith("ovsfoot-")}})
    by_key, classes = {}, {}
    for name, (hostname, ids) in merged.items():
        facts = _facts(name, hostname, ids)
        key = hostname if node_key == "hostname" else name
        if key:
            if key in by_key:
                log.warning("two chassis map to node %s (%s, %s): using the first",
                            key, by_key[key].chassis, name)
            else:
                by_key[key] = facts
        for k, v in ids.items():
            if k.startswith(CLASS_PREFIX) and v in CLASSES and len(k) > len(CLASS_PREFIX):
                workload = k[len(CLASS_PREFIX):]
                if classes.get(workload) != "heavy":
                    classes[workload] = v
    return ClusterView(by_key, classes, synced=True)


class SbView:
    """Keeps a `ClusterView` of the Southbound database up to date in a thread."""

    def __init__(self, remote: str, node_key: str = "hostname"):
        if node_key not in NODE_KEYS:
            raise ValueError(f"node key must be one of {NODE_KEYS}")
        self.remote, self.node_key = remote, node_key
        self.view = ClusterView()
        self.connected = False
        self.chassis = 0
        self.updates = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sb-view", daemon=True)

    def start(self) -> "SbView":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def status(self) -> dict:
        return {"sb": self.remote, "synced": self.view.synced, "connected": self.connected,
                "chassis": self.chassis, "updates": self.updates, "node_key": self.node_key,
                "workload_classes": len(self.view.classes)}

    def _schema(self) -> dict | None:
        warned = False
        while not self._stop.is_set():
            errors = []
            for r in _remotes(self.remote):
                try:
                    return fetch_schema(r, DB)
                except OSError as e:
                    errors.append(f"{r}: {e.strerror or e}")
            if not warned:
                log.warning("waiting for the Southbound database (%s); nodes score as "
                            "unknown meanwhile", "; ".join(errors))
                warned = True
            self._stop.wait(1.0)
        return None

    def _run(self) -> None:
        schema = self._schema()
        if schema is None:
            return
        helper = ovs.db.idl.SchemaHelper(schema_json=schema)
        helper.register_columns("Chassis", ["name", "hostname", "external_ids"])
        private = "Chassis_Private" in schema.get("tables", {})
        if private:
            helper.register_columns("Chassis_Private", ["name", "external_ids"])
        idl = ovs.db.idl.Idl(self.remote, helper, leader_only=False)
        seqno = None
        try:
            while not self._stop.is_set():
                idl.run()
                self.connected = idl._session.is_connected()
                if idl.has_ever_connected() and idl.change_seqno != seqno:
                    seqno = idl.change_seqno
                    chassis = [(r.name, r.hostname, dict(r.external_ids))
                               for r in idl.tables["Chassis"].rows.values()]
                    privs = [(r.name, dict(r.external_ids))
                             for r in idl.tables["Chassis_Private"].rows.values()] \
                        if private else []
                    self.view = build_view(chassis, privs, self.node_key)
                    self.chassis = len(chassis)
                    self.updates += 1
                    log.debug("cluster view: %d chassis, %d learned classes", len(chassis),
                              len(self.view.classes))
                poller = ovs.poller.Poller()
                idl.wait(poller)
                poller.timer_wait(500)
                poller.block()
        finally:
            idl.close()

