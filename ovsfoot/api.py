"""A small library for CNI plugins, operators and tools: `from ovsfoot import api`.

It talks to the local Open_vSwitch database (python-ovs IDL, short timeouts) and
works whether or not the ovsfoot agent runs; it never talks to the agent itself.

    from ovsfoot import api

    with api.Node() as node:                       # unix:$OVS_RUNDIR/db.sock
        iface = node.find_interface(iface_id="shop_web-7d9f8b6c5d-x2x4z")
        node.register_port(iface, "shop/web")      # before the pod sends a byte
        print(node.port_footprint(iface))          # what the agent published
        print(node.workload_footprint("shop/web"), node.node_footprint())

Writing: only `ovsfoot-workload` (the workload identity, an input of the agent) and,
through the CNI plugin, its marker `ovsfoot-cni`; always with setkey/delkey, so
other writers' keys are never touched, and never a `ct-zone-*` key.

Reading: the keys the agent publishes (contract.py, README "OVSDB keys"): on
each Interface `ovsfoot-footprint`, `ovsfoot-elephants`, `ovsfoot-workload-class`,
`ovsfoot-ts`; on the integration bridge's Bridge row (`ovn-bridge`, default
br-int) `ovsfoot-footprint`, `ovsfoot-elephants`, `ovsfoot-heavy-ports`, `ovsfoot-ts`.

Errors are `api.Error` subclasses: `DatabaseUnavailable`, `UnknownInterface`,
`AmbiguousInterface`, `MalformedValue`, `Timeout`.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Iterable

import ovs.db.idl
import ovs.dirs
import ovs.poller

from ovsfoot import contract
from ovsfoot.ovsdb import default_remote, open_idl

log = logging.getLogger(__name__)

__all__ = ["Node", "PortFootprint", "WorkloadFootprint", "NodeFootprint", "InterfaceInfo",
           "Error", "DatabaseUnavailable", "UnknownInterface", "AmbiguousInterface",
           "MalformedValue", "Timeout", "WORKLOAD_KEY", "CNI_MARKER_KEY", "validate_workload"]

WORKLOAD_KEY = contract.WORKLOAD       # input: the workload identity of a port
CNI_MARKER_KEY = contract.CNI_MARKER   # input: the container whose CNI ADD set the identity
_WRITABLE = frozenset({WORKLOAD_KEY, CNI_MARKER_KEY})

TABLES = {
    "Open_vSwitch": ["external_ids"],
    "Bridge": ["name", "external_ids"],
    "Interface": ["name", "external_ids", "mac_in_use"],
}


class Error(Exception):
    """Anything this library refuses or cannot do."""


class DatabaseUnavailable(Error):
    """The Open_vSwitch database cannot be reached (or did not answer in time)."""


class UnknownInterface(Error):
    """No OVS Interface matches."""


class AmbiguousInterface(Error):
    """More than one OVS Interface matches."""


class MalformedValue(Error):
    """A value to write is invalid, or a published key does not follow the contract."""


class Timeout(Error):
    """A transaction did not complete in time."""


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    """An OVS Interface as the library sees it."""

    name: str
    iface_id: str | None        # external_ids:iface-id, the OVN logical port (None: unbound)
    mac_in_use: str | None
    external_ids: dict[str, str]

    @property
    def workload(self) -> str | None:
        """The workload identity the agent gives this port (None while it is unbound)."""
        return contract.workload_of(self.iface_id, self.external_ids) if self.iface_id else None


@dataclass(frozen=True, slots=True)
class PortFootprint:
    """What the agent published on one Interface (None: not published)."""

    interface: str
    iface_id: str | None
    workload: str | None        # the identity the agent uses for it
    footprint: str | None       # "heavy" | "sensitive" | "light"
    elephants: int | None
    workload_class: str | None  # the workload's learned class, None if nothing learned
    updated_ms: int | None      # ovsfoot-ts
    bps: int | None = None      # throughput bucket, bit/s (contract.BPS_STEPS)
    flows_per_s: int | None = None  # flow rate bucket (contract.FLOW_STEPS)

    @property
    def published(self) -> bool:
        return self.footprint is not None

    @property
    def heavy(self) -> bool:
        return self.footprint == "heavy"

    @property
    def sensitive(self) -> bool:
        return self.footprint == "sensitive"


@dataclass(frozen=True, slots=True)
class WorkloadFootprint:
    """A workload's ports on this node, summed up."""

    workload: str
    ports: tuple[PortFootprint, ...]
    footprint: str | None       # its ports' strongest class; None if no port is published
    elephants: int
    workload_class: str | None  # learned class, from any of its ports
    bps: int = 0                # its ports' throughput buckets summed
    flows_per_s: int = 0

    @property
    def heavy(self) -> bool:
        return self.footprint == "heavy"


@dataclass(frozen=True, slots=True)
class NodeFootprint:
    """What the agent published on the integration bridge (None: not published)."""

    footprint: str | None       # "heavy" | "light"
    elephants: int | None
    heavy_ports: int | None
    updated_ms: int | None
    sensitive_ports: int | None = None
    bps: int | None = None      # throughput bucket of all its ports, bit/s
    flows_per_s: int | None = None

    @property
    def published(self) -> bool:
        return self.footprint is not None

    @property
    def heavy(self) -> bool:
        return self.footprint == "heavy"


def validate_workload(workload: str) -> str:
    """The workload identity stripped; MalformedValue if empty, too long or with spaces."""
    try:
        return contract.validate_workload(workload)
    except contract.ContractError as e:
        raise MalformedValue(str(e)) from None


def _parse(keys, ids: dict[str, str], where: str):
    try:
        return keys.parse(ids, where)
    except contract.ContractError as e:
        raise MalformedValue(str(e)) from None


def _norm_mac(mac: str) -> str:
    return mac.strip().lower()


class Node:
    """The local node's Open_vSwitch database; a context manager.

    `remote` defaults to unix:$OVS_RUNDIR/db.sock; `timeout` bounds connecting
    and every transaction (DatabaseUnavailable / Timeout when exceeded).
    """

    def __init__(self, remote: str | None = None, timeout: float = 2.0):
        self.remote = remote or default_remote()
        self.timeout = timeout
        start = time.monotonic()        # one `timeout` for connecting and the first copy
        try:
            self.idl = open_idl(self.remote, "Open_vSwitch", TABLES, retry=0.1,
                                timeout=timeout)
        except OSError as e:
            raise DatabaseUnavailable(f"cannot reach the Open_vSwitch database at "
                                      f"{self.remote}: {e.strerror or e}") from None
        self._sync(max(0.0, timeout - (time.monotonic() - start)))

    # -- plumbing -----------------------------------------------------------
    def __enter__(self) -> "Node":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.idl.close()

    def _block(self, deadline: float, txn=None) -> None:
        poller = ovs.poller.Poller()
        self.idl.wait(poller)
        if txn is not None:
            txn.wait(poller)
        poller.timer_wait(max(1, int((deadline - time.monotonic()) * 1000)))
        poller.block()

    def _sync(self, timeout: float) -> None:
        """Waits for the first copy of the database."""
        deadline = time.monotonic() + timeout
        while True:
            self.idl.run()
            if self.idl.has_ever_connected():
                return
            if time.monotonic() >= deadline:
                self.close()
                raise DatabaseUnavailable(f"{self.remote} did not send the Open_vSwitch "
                                          f"database within {timeout:g} s")
            self._block(deadline)

    def agent_alive(self, rundir: str | None = None) -> bool:
        """Whether an ovsfoot agent runs on this node: its process exists and its control
        socket (`ovsfoot.<pid>.ctl` in the OVS run directory: `rundir`, else OVS_RUNDIR,
        else the directory of a unix: remote) accepts. Keys a dead agent published are
        stale: a quiet node has a live agent and light keys."""
        if rundir is None:
            rundir = os.environ.get("OVS_RUNDIR") or (
                os.path.dirname(self.remote[len("unix:"):]) if self.remote.startswith("unix:")
                else ovs.dirs.RUNDIR)
        for path in glob.glob(os.path.join(rundir, "ovsfoot.*.ctl")):
            m = re.fullmatch(r"ovsfoot\.(\d+)\.ctl", os.path.basename(path))
            if not m:
                continue
            try:
                os.kill(int(m.group(1)), 0)
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(self.timeout)
                    s.connect(path)
                return True
            except OSError:         # no such process, or a socket left by a killed one
                continue
        return False

    def refresh(self) -> None:
        """Takes in what the server sent since (reads do it on their own)."""
        self.idl.run()

    def _rows(self, table: str):
        return list(self.idl.tables[table].rows.values())

    @staticmethod
    def _info(row) -> InterfaceInfo:
        mac = row.mac_in_use[0] if row.mac_in_use else None
        ids = dict(row.external_ids)
        return InterfaceInfo(row.name, ids.get("iface-id") or None, mac, ids)

    def row(self, interface: str):
        for row in self._rows("Interface"):
            if row.name == interface:
                return row
        raise UnknownInterface(f"no OVS Interface named {interface!r} in {self.remote}")

    def transact(self, what: str, edit) -> None:
        """Runs `edit(txn)` in a transaction, retrying on TRY_AGAIN, within the timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            self.idl.run()
            txn = ovs.db.idl.Transaction(self.idl)
            txn.add_comment(f"ovsfoot api: {what}")
            try:
                edit(txn)
            except BaseException:
                txn.abort()
                raise
            while True:
                status = txn.commit()
                if status != txn.INCOMPLETE:
                    break
                if time.monotonic() >= deadline:
                    txn.abort()
                    raise Timeout(f"{what}: no answer from {self.remote} within "
                                  f"{self.timeout:g} s")
                self._block(deadline, txn)
                self.idl.run()
            if status in (txn.SUCCESS, txn.UNCHANGED):
                return
            if status == txn.TRY_AGAIN and time.monotonic() < deadline:
                self._block(min(deadline, time.monotonic() + 0.1))
                continue
            raise Error(f"{what}: transaction {status}: {txn.get_error()}")

    # -- interfaces ---------------------------------------------------------
    def interfaces(self) -> list[InterfaceInfo]:
        """Every Interface in the database."""
        self.refresh()
        return [self._info(r) for r in self._rows("Interface")]

    def interface(self, name: str) -> InterfaceInfo:
        self.refresh()
        return self._info(self.row(name))

    def find_interface(self, iface_id: str | None = None, name: str | None = None,
                       mac: str | None = None) -> str:
        """The name of the one Interface matching all the given criteria.

        `mac` matches `mac_in_use` (the host side) or `external_ids:attached-mac` /
        `attached_mac` (the guest's MAC, as OpenStack and ovn-kubernetes record it).
        """
        if iface_id is None and name is None and mac is None:
            raise Error("find_interface needs iface_id, name or mac")
        found = []
        for info in self.interfaces():
            if name is not None and info.name != name:
                continue
            if iface_id is not None and info.iface_id != iface_id:
                continue
            if mac is not None:
                macs = {info.mac_in_use, info.external_ids.get("attached-mac"),
                        info.external_ids.get("attached_mac")}
                if _norm_mac(mac) not in {_norm_mac(m) for m in macs if m}:
                    continue
            found.append(info.name)
        what = ", ".join(f"{k}={v!r}" for k, v in
                         (("iface_id", iface_id), ("name", name), ("mac", mac)) if v is not None)
        if not found:
            raise UnknownInterface(f"no OVS Interface with {what}")
        if len(found) > 1:
            raise AmbiguousInterface(f"{len(found)} OVS Interfaces with {what}: "
                                     f"{', '.join(sorted(found))}")
        return found[0]

    # -- writing ------------------------------------------------------------
    def set_keys(self, interface: str, put: dict[str, str] | None = None,
                 drop: Iterable[str] = ()) -> None:
        """Sets and deletes ovsfoot input keys of an Interface (setkey/delkey only)."""
        put, drop = dict(put or {}), list(drop)
        bad = [k for k in [*put, *drop] if k not in _WRITABLE]
        if bad:
            raise MalformedValue(f"the library writes only {sorted(_WRITABLE)}, not {bad}")
        self.refresh()
        self.row(interface)

        def edit(txn):
            row = self.row(interface)      # looked up again on retries
            for k, v in put.items():
                row.setkey("external_ids", k, v)
            for k in drop:
                if k in row.external_ids:
                    row.delkey("external_ids", k)
        self.transact(f"keys of {interface}", edit)

    def tag_port(self, interface: str, workload: str) -> None:
        """Sets `external_ids:ovsfoot-workload` of the Interface to `workload`."""
        self.set_keys(interface, {WORKLOAD_KEY: validate_workload(workload)})

    def untag_port(self, interface: str) -> None:
        """Removes `ovsfoot-workload` (no error if it is not there)."""
        self.set_keys(interface, drop=[WORKLOAD_KEY])

    def register_port(self, interface: str | None, workload: str,
                      iface_id: str | None = None, *, wait: float = 0.0) -> PortFootprint:
        """Tags a port with its workload before it carries traffic.

        The port is the Interface named `interface`, or the one whose iface-id is
        `iface_id` (both given: they must agree). The running agent re-reads the
        Interface and publishes the workload's learned class (`workload_class`,
        `footprint` heavy for a workload learned heavy) at once: with `wait` > 0
        this waits up to `wait` s for that class to appear and returns what is
        published then (a workload nothing was learned about gets no class, so
        then the whole `wait` passes). The agent classes only bound ports: an
        Interface without iface-id is tagged, and classed once it is bound.
        """
        w = validate_workload(workload)
        if interface is None:
            if iface_id is None:
                raise Error("register_port needs interface or iface_id")
            interface = self.find_interface(iface_id=iface_id)
        else:
            info = self.interface(interface)
            if iface_id is not None and info.iface_id != iface_id:
                raise Error(f"Interface {interface} has iface-id {info.iface_id!r}, "
                            f"not {iface_id!r}")
        before = self.interface(interface).workload
        since = time.time_ns() // 1_000_000
        self.tag_port(interface, w)
        if wait > 0:
            # a class published before the tag is the old workload's, unless it is the same
            return self.wait_class(interface, None if before == w else since, wait)
        return self.port_footprint(interface)

    def wait_class(self, interface: str, since_ms: int | None, timeout: float) -> PortFootprint:
        """Waits up to `timeout` s for a workload class published at or after `since_ms`
        (None: any); returns the port's footprint then, class or not."""
        return self.wait_port(interface, lambda p: p.workload_class is not None and (
            since_ms is None or (p.updated_ms or 0) >= since_ms), timeout, raise_timeout=False)

    # -- reading ------------------------------------------------------------
    def port_footprint(self, interface: str) -> PortFootprint:
        """The footprint the agent published on the Interface."""
        info = self.interface(interface)
        keys = _parse(contract.PortKeys, info.external_ids, f"Interface {interface}")
        return PortFootprint(
            interface=info.name, iface_id=info.iface_id, workload=info.workload,
            footprint=keys.footprint, elephants=keys.elephants,
            workload_class=keys.workload_class, updated_ms=keys.updated_ms,
            bps=keys.bps, flows_per_s=keys.flows_per_s)

    def wait_port(self, interface: str, pred, timeout: float,
                  raise_timeout: bool = True) -> PortFootprint:
        """Waits until `pred(port_footprint(interface))` holds; returns that footprint."""
        deadline = time.monotonic() + timeout
        while True:
            fp = self.port_footprint(interface)
            if pred(fp):
                return fp
            if time.monotonic() >= deadline:
                if raise_timeout:
                    raise Timeout(f"Interface {interface}: condition not met within "
                                  f"{timeout:g} s (now {fp})")
                return fp
            self._block(deadline)

    def workload_footprint(self, workload: str) -> WorkloadFootprint:
        """The workload's bound ports on this node, and their sum."""
        ports = tuple(self.port_footprint(i.name) for i in self.interfaces()
                      if i.workload == workload)
        published = [p for p in ports if p.published]
        classes = {p.workload_class for p in ports if p.workload_class}
        return WorkloadFootprint(
            workload=workload, ports=ports,
            footprint=contract.strongest(p.footprint for p in published) if published else None,
            elephants=sum(p.elephants or 0 for p in ports),
            workload_class=contract.merge_classes(classes),
            bps=sum(p.bps or 0 for p in ports),
            flows_per_s=sum(p.flows_per_s or 0 for p in ports))

    def node_footprint(self, bridge: str | None = None) -> NodeFootprint:
        """The node's footprint, on the integration bridge: `bridge`, else the one
        ovn-controller uses (`external_ids:ovn-bridge`, default br-int)."""
        self.refresh()
        root = next(iter(self._rows("Open_vSwitch")), None)
        if root is None:
            raise Error(f"{self.remote} has no Open_vSwitch row (ovs-vsctl init?)")
        name = bridge or contract.integration_bridge(dict(root.external_ids))
        bridge = next((b for b in self._rows("Bridge") if b.name == name), None)
        if bridge is None:
            raise Error(f"{self.remote} has no bridge {name} (is ovn-controller running?)")
        keys = _parse(contract.NodeKeys, dict(bridge.external_ids), f"Bridge {name}")
        return NodeFootprint(footprint=keys.footprint, elephants=keys.elephants,
                             heavy_ports=keys.heavy_ports, updated_ms=keys.updated_ms,
                             sensitive_ports=keys.sensitive_ports, bps=keys.bps,
                             flows_per_s=keys.flows_per_s)
