"""The node, as the library gives it: its Interfaces looked up, the workload
identity written, and the footprints the agent published read and waited for."""

from __future__ import annotations

import glob
import os
import re
import socket
import time
from typing import Iterable

import ovs.dirs

from ovsfoot import contract
from ovsfoot.api.connection import Connection
from ovsfoot.api.errors import AmbiguousInterface, Error, MalformedValue, Timeout, UnknownInterface
from ovsfoot.api.keys import WORKLOAD_KEY, WRITABLE, parse, validate_workload
from ovsfoot.api.records import InterfaceInfo, NodeFootprint, PortFootprint, WorkloadFootprint


class Node(Connection):
    """The local node's Open_vSwitch database; a context manager.

    `remote` defaults to unix:$OVS_RUNDIR/db.sock; `timeout` bounds connecting
    and every transaction (DatabaseUnavailable / Timeout when exceeded).
    """

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
        bad = [k for k in [*put, *drop] if k not in WRITABLE]
        if bad:
            raise MalformedValue(f"the library writes only {sorted(WRITABLE)}, not {bad}")
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
        keys = parse(contract.PortKeys, info.external_ids, f"Interface {interface}")
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
        return parse(NodeFootprint, dict(bridge.external_ids), f"Bridge {name}")


def _norm_mac(mac: str) -> str:
    return mac.strip().lower()
