"""Isolation of active elephants on the node's Geneve underlay (`--isolate`).

A tc classifier (bpf/ovsfoot_isolate.c, loaded with bcc) on the egress of the
underlay interface sends the packets whose inner 5-tuple is an active
elephant's to the second band of a `prio` qdisc ovsfoot installs, and every
other packet to the first band, which is always served first. The agent
fills the classifier's map as elephants are detected and empties it as they
end. Optionally the elephants' outer DSCP is rewritten for the fabric.

Where the qdisc goes: under a `tbf` root (its one class, in place of the tbf's
own bfifo, which is put back as f5a1: on removal) or in place of the kernel's
default root (handle 0:, e.g. noqueue, pfifo_fast, mq); any other root, or a
tbf class holding someone else's qdisc, was configured by someone else, and
isolation stays off and says why. What ovsfoot installs carries its handle
(f5a0:), so that a restarted agent finds and removes what a killed one left.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ovsfoot import netns as ns
from ovsfoot.events import FlowKey

log = logging.getLogger(__name__)

PROGRAM = "ovsfoot_isolate.c"
HANDLE = 0xF5A0                 # ovsfoot's qdisc: f5a0:
RESTORED = 0xF5A1               # a tbf's own bfifo, put back by ovsfoot: f5a1:
FILTER_NAME = "ovsfoot_isolate"
TC_H_ROOT = 0xFFFFFFFF
GENEVE_PORT = 6081
NO_DSCP = 0xFF
# enum counter in the C file, in order
COUNTERS = ("normal_packets", "normal_bytes", "elephant_packets", "elephant_bytes",
            "geneve", "not_geneve", "fragments", "unparsed", "dscp_rewritten")
PORT_PROTOS = {6, 17, 33, 132, 136}


class IsolationUnavailable(Exception):
    """Isolation cannot be switched on here; the message says why and what to do."""


def _tc_handle(h: int) -> str:
    return f"{h >> 16:x}:{h & 0xFFFF:x}" if h & 0xFFFF else f"{h >> 16:x}:"


def _header_flags() -> tuple[dict[str, str], list[str]]:
    """Environment and compiler flags for bcc. The classifier includes only the
    kernel's stable user-space API headers, so where the running kernel's own
    headers are not installed, any installed kernel's (Debian's linux-headers-*)
    serve as well."""
    release = os.uname().release
    if Path(f"/lib/modules/{release}/build").exists():
        return {}, []
    arch = {"x86_64": "x86", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    for build in sorted(Path("/usr/src").glob("linux-headers-*"), reverse=True):
        version = build / "include/generated/uapi/linux/version.h"
        common = Path(str(build).rsplit("-", 1)[0] + "-common")
        if version.exists() and (common / "include/linux/kconfig.h").exists():
            return {"BCC_KERNEL_SOURCE": str(common)}, [
                f"-I{build}/include", f"-I{build}/arch/{arch}/include/generated",
                f"-I{build}/arch/{arch}/include/generated/uapi",
                f"-I{build}/include/generated/uapi"]
    raise IsolationUnavailable(f"no kernel headers to compile the classifier with "
                               f"(install linux-headers-{release}, or any linux-headers)")


@contextmanager
def _environment(extra: dict[str, str]):
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_tc_program(cflags: Iterable[str] = (), **source):
    """Compiles a tc program (bcc.BPF's `src_file=` or `text=`) with the kernel
    headers found here; returns the BPF object and its function `classify`."""
    try:
        import bcc
    except ImportError:
        raise IsolationUnavailable("bcc is not installed (Debian: python3-bpfcc)") from None
    env, flags = _header_flags()
    with _environment(env):
        b = bcc.BPF(**source, cflags=[*flags, *cflags])
        return b, b.load_func("classify", bcc.BPF.SCHED_CLS)


def check_dscp(dscp: int | None) -> None:
    if dscp is not None and not (isinstance(dscp, int) and 0 <= dscp <= 63):
        raise ValueError(f"DSCP must be a whole number from 0 to 63, not {dscp!r}")


def _directions(key: FlowKey) -> list[tuple[int, int, bytes, bytes, int, int]]:
    """The classifier's keys for an elephant: its tuple both ways, as
    (family, proto, src, dst, sport, dport); [] if its addresses are not IP."""
    try:
        src, dst = ipaddress.ip_address(key.src), ipaddress.ip_address(key.dst)
    except ValueError:
        return []
    if src.version != dst.version:
        return []
    family = socket.AF_INET if src.version == 4 else socket.AF_INET6
    sport, dport = (key.sport, key.dport) if key.proto in PORT_PROTOS else (0, 0)
    return [(family, key.proto, src.packed, dst.packed, sport, dport),
            (family, key.proto, dst.packed, src.packed, dport, sport)]


class Classifier:
    """The compiled classifier and its maps."""

    def __init__(self, max_flows: int = 16384):
        from ovsfoot.sources import SourceUnavailable
        from ovsfoot.sources.bpf import program_file
        try:
            program = program_file(PROGRAM)
        except SourceUnavailable as e:
            raise IsolationUnavailable(str(e)) from None
        t0 = time.monotonic()
        try:
            self._bpf, self.fn = load_tc_program([f"-DMAX_FLOWS={max_flows}"],
                                                 src_file=str(program))
        except IsolationUnavailable:
            raise
        except Exception as e:      # bcc raises bare Exceptions
            raise IsolationUnavailable(f"cannot load the classifier: {e}") from None
        log.info("isolate: classifier loaded in %.1f s", time.monotonic() - t0)
        self.elephants = self._bpf["elephants"]
        self.set_dscp(None)

    @property
    def fd(self) -> int:
        return self.fn.fd

    def set_dscp(self, dscp: int | None) -> None:
        check_dscp(dscp)
        cfg = self._bpf["config"]
        v = cfg.Leaf()
        v.geneve_port = GENEVE_PORT
        v.dscp = NO_DSCP if dscp is None else dscp
        cfg[cfg.Key(0)] = v

    def _key(self, family, proto, src, dst, sport, dport):
        k = self.elephants.Key()
        k.family, k.proto = family, proto
        k.sport, k.dport = socket.htons(sport), socket.htons(dport)
        ctypes.memmove(k.src, src, len(src))
        ctypes.memmove(k.dst, dst, len(dst))
        return k

    def add(self, key: FlowKey) -> bool:
        """Isolates `key` (both directions); False if it is not an IP tuple."""
        dirs = _directions(key)
        for d in dirs:
            self.elephants[self._key(*d)] = self.elephants.Leaf()
        return bool(dirs)

    def remove(self, key: FlowKey) -> None:
        for d in _directions(key):
            try:
                del self.elephants[self._key(*d)]
            except KeyError:
                pass

    def flow(self, key: FlowKey) -> dict:
        """Packets and bytes isolated for `key` (both directions) and the kernel
        time (ns, CLOCK_MONOTONIC) of its first isolated packet, 0 if none yet."""
        out = {"packets": 0, "bytes": 0, "first_ns": 0}
        for d in _directions(key):
            try:
                v = self.elephants[self._key(*d)]
            except KeyError:
                continue
            out["packets"] += v.packets
            out["bytes"] += v.bytes
            if v.first_ns and (not out["first_ns"] or v.first_ns < out["first_ns"]):
                out["first_ns"] = v.first_ns
        return out

    def counters(self) -> dict[str, int]:
        c = self._bpf["counters"]
        return {name: c.sum(c.Key(i)).value for i, name in enumerate(COUNTERS)}

    def close(self) -> None:
        self._bpf.cleanup()


@dataclass
class Placement:
    """Where ovsfoot's qdisc sits, and what to put back when it goes."""

    parent: int                     # TC_H_ROOT, or the tbf's class
    restore_limit: int | None       # the tbf's bfifo limit (bytes); None: the kernel's default

    def describe(self) -> str:
        return "root" if self.parent == TC_H_ROOT else f"under tbf class {_tc_handle(self.parent)}"


class Uplink:
    """The qdisc and filter on one interface, through pyroute2 (in `netns`)."""

    def __init__(self, ifname: str, netns: str | None = None):
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl.tcmsg import plugins, sched_pfifo
        plugins.setdefault("bfifo", sched_pfifo)  # the same options as pfifo (a limit)
        self.ifname, self.netns = ifname, netns
        with ns.entered(netns):
            self.ipr = IPRoute()
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            self.ipr.close()
            raise IsolationUnavailable(f"no interface {ifname!r} in network namespace "
                                       f"{netns or '(own)'}")
        self.index = found[0]

    def _qdiscs(self) -> list:
        return list(self.ipr.get_qdiscs(index=self.index))

    def ours(self):
        return next((q for q in self._qdiscs() if q["handle"] == HANDLE << 16), None)

    def _root(self):
        return next((q for q in self._qdiscs() if q["parent"] == TC_H_ROOT), None)

    def plan(self) -> Placement:
        """Where ovsfoot's qdisc can go; IsolationUnavailable if nowhere."""
        root = self._root()
        if root is None or root["handle"] == 0:
            return Placement(TC_H_ROOT, None)
        kind = root.get_attr("TCA_KIND")
        if kind == "tbf":
            parent = root["handle"] | 1
            child = next((q for q in self._qdiscs() if q["parent"] == parent), None)
            if child is None or child["handle"] in (0, RESTORED << 16):
                parms = root.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")
                return Placement(parent, parms["limit"])
            raise IsolationUnavailable(
                f"{self.ifname}: the tbf root's class {_tc_handle(parent)} already holds "
                f"a {child.get_attr('TCA_KIND')} {_tc_handle(child['handle'])} that ovsfoot "
                f"did not install; isolation stays off (remove it, or do not use --isolate)")
        raise IsolationUnavailable(
            f"{self.ifname}: its root qdisc is {kind} {_tc_handle(root['handle'])}, which "
            f"ovsfoot did not install and cannot sit under (it sits under tbf, or replaces "
            f"the kernel's default root); isolation stays off")

    def install(self, fd: int) -> Placement:
        from pyroute2 import NetlinkError
        where = self.plan()
        try:    # under a tbf: in place of its bfifo (its own, or the one ovsfoot put back)
            self.ipr.tc("add" if where.parent == TC_H_ROOT else "replace", "prio", self.index,
                        HANDLE << 16, parent=where.parent, bands=2, priomap=[0] * 16)
        except NetlinkError as e:
            if e.code == errno.ENOENT:
                raise IsolationUnavailable("this kernel has no prio qdisc (load sch_prio: "
                                           "modprobe sch_prio; or CONFIG_NET_SCH_PRIO)") from None
            raise
        try:
            self.ipr.tc("add-filter", "bpf", self.index, ":1", parent=HANDLE << 16, fd=fd,
                        name=FILTER_NAME, direct_action=True, prio=1)
        except Exception:
            self.remove(where)
            raise
        return where

    def placement(self) -> Placement | None:
        """Where ovsfoot's qdisc is now (None: not installed)."""
        q = self.ours()
        if q is None:
            return None
        if q["parent"] == TC_H_ROOT:
            return Placement(TC_H_ROOT, None)
        root = self._root()
        limit = None
        if root is not None and root.get_attr("TCA_KIND") == "tbf":
            limit = root.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")["limit"]
        return Placement(q["parent"], limit)

    def remove(self, where: Placement | None = None) -> bool:
        """Removes ovsfoot's qdisc (its filter goes with it) and puts back what was
        there: the kernel's default root, or the tbf's own bfifo. False if none."""
        where = where or self.placement()
        if where is None or self.ours() is None:
            return False
        if where.parent == TC_H_ROOT:
            self.ipr.tc("del", "prio", self.index, HANDLE << 16, parent=TC_H_ROOT)
        elif where.restore_limit is not None:
            # deleting a tbf's child would leave it the noop qdisc (dropping all); the
            # bfifo it had, with the tbf's limit, goes back with a handle that says so
            self.ipr.tc("replace", "bfifo", self.index, RESTORED << 16, parent=where.parent,
                        limit=where.restore_limit)
        else:
            self.ipr.tc("del", "prio", self.index, HANDLE << 16, parent=where.parent)
        return True

    def bands(self) -> dict[str, dict[str, int]]:
        """Packets, bytes, drops and backlog of the two bands, as the kernel counts them."""
        out = {}
        for cls in self.ipr.get_classes(index=self.index):
            if cls["parent"] != HANDLE << 16 and cls["handle"] >> 16 != HANDLE:
                continue
            name = {1: "normal", 2: "elephant"}.get(cls["handle"] & 0xFFFF)
            stats = cls.get_attr("TCA_STATS2")
            if name is None or stats is None:
                continue
            basic = stats.get_attr("TCA_STATS_BASIC") or {}
            queue = stats.get_attr("TCA_STATS_QUEUE") or {}
            out[name] = {"packets": basic.get("packets", 0), "bytes": basic.get("bytes", 0),
                         "drops": queue.get("drops", 0), "backlog": queue.get("backlog", 0)}
        return out

    def close(self) -> None:
        self.ipr.close()


def interface_of(address: str, netns: str | None) -> str | None:
    """The interface holding `address` in `netns` (the tunnel's underlay), or None."""
    from pyroute2 import IPRoute
    with ns.entered(netns):
        ipr = IPRoute()
    try:
        for a in ipr.get_addr():
            if a.get_attr("IFA_ADDRESS") == address or a.get_attr("IFA_LOCAL") == address:
                link = ipr.get_links(a["index"])
                return link[0].get_attr("IFLA_IFNAME") if link else None
    finally:
        ipr.close()
    return None


class Isolator:
    """What the agent drives: isolation on or off, on which interface, for which flows.

    `interface` is a name, or "auto": the interface holding the chassis'
    `ovn-encap-ip` (given to `topology`). Problems never stop the agent: they
    leave isolation off with the reason in `reason` (and the log).
    """

    def __init__(self, interface: str | None = None, netns: str | None = None,
                 dscp: int | None = None, on: bool = False):
        check_dscp(dscp)
        self.interface_arg = interface or "auto"
        self.netns, self.dscp, self.want = netns, dscp, on
        self.interface: str | None = None
        self.reason = "" if on else "not asked for (--isolate, or isolate/set on)"
        self.classifier: Classifier | None = None
        self.uplink: Uplink | None = None
        self.where: Placement | None = None
        self.since_ns = 0
        self.isolated: dict[FlowKey, int] = {}      # key -> its detection time (ns)
        self._active_seen = None
        self._encap_ip: str | None = None

    @property
    def on(self) -> bool:
        return self.where is not None

    def prepare(self) -> None:
        """Compiles the classifier now (seconds; more under emulation), not at first use,
        unless the named interface's qdiscs already say that isolation must stay off."""
        if self.interface_arg != "auto":
            try:
                uplink = Uplink(self.interface_arg, self.netns)
                try:
                    if uplink.ours() is None:       # a leftover is removed at the start
                        uplink.plan()
                finally:
                    uplink.close()
            except IsolationUnavailable as e:
                self._off_because(str(e))
                return
        try:
            self.classifier = self.classifier or Classifier()
        except IsolationUnavailable as e:
            self._off_because(str(e))

    def topology(self, encap_ip: str | None) -> None:
        """Follows the interface (named, or holding `encap_ip`); when it changes, removes
        what a killed agent left on it and, if asked, switches on there."""
        name = self.interface_arg
        if name == "auto":
            ip = (encap_ip or "").split(",")[0].strip()
            if ip == self._encap_ip:
                return                  # the OVSDB changed, not the address
            self._encap_ip = ip
            name = interface_of(ip, self.netns) if ip else None
            if name is None:
                if self.want and not self.on:
                    self.reason = (f"no interface holds ovn-encap-ip {ip}" if ip else
                                   "the chassis has no ovn-encap-ip yet: give --isolate IFACE")
                return
        if name == self.interface:
            return
        self._off()
        self._close_uplink()
        self.interface = name
        if self._open_uplink() and self.want:
            self._on()

    def _off_because(self, why: str) -> None:
        """Isolation is off for `why`: said in isolate/show and in the log."""
        self.reason = why
        log.warning("isolate: %s", why)

    def _open_uplink(self) -> bool:
        try:
            self.uplink = Uplink(self.interface, self.netns)
        except IsolationUnavailable as e:
            self._off_because(str(e))
            return False
        if self.uplink.remove():
            log.warning("isolate: removed the qdisc and filter a killed agent left on %s",
                        self.interface)
        return True

    def set(self, on: bool) -> None:
        """Switches isolation live; IsolationUnavailable says why it cannot go on."""
        self.want = on
        if not on:
            self._off()
            self.reason = "switched off (isolate/set off)"
            return
        if self.uplink is None and not (self.interface and self._open_uplink()):
            raise IsolationUnavailable(self.reason or
                                       f"interface {self.interface_arg} not known yet")
        if not self.on:
            self._on()
        if not self.on:
            raise IsolationUnavailable(self.reason)

    def _on(self) -> None:
        try:
            self.uplink.plan()              # before compiling: where would it go?
            if self.classifier is None:
                self.classifier = Classifier()
            self.classifier.set_dscp(self.dscp)
            self.where = self.uplink.install(self.classifier.fd)
        except IsolationUnavailable as e:
            self._off_because(str(e))
            return
        except Exception as e:            # netlink: the kernel refused
            self._off_because(f"{self.interface}: cannot install the qdisc or filter: {e}")
            return
        self.reason, self.since_ns = "", time.time_ns()
        self._active_seen = None            # refill the map
        log.info("isolate: on, %s, prio %s %s%s", self.interface, _tc_handle(HANDLE << 16),
                 self.where.describe(), f", DSCP {self.dscp}" if self.dscp is not None else "")

    def _off(self) -> None:
        if self.where is not None:
            try:
                self.uplink.remove(self.where)
            except Exception as e:
                log.warning("isolate: removing the qdisc from %s failed: %s", self.interface, e)
            log.info("isolate: off, %s restored", self.interface)
        self.where = None
        if self.classifier is not None:
            for key in self.isolated:
                self.classifier.remove(key)
        self.isolated.clear()

    def sync(self, active: dict) -> None:
        """Makes the classifier's map hold exactly the active elephants
        ({FlowKey: footprints.ActiveElephant})."""
        if not self.on or active.keys() == self._active_seen:
            return
        for key in self.isolated.keys() - active.keys():
            self.classifier.remove(key)
            del self.isolated[key]
        for key in active.keys() - self.isolated.keys():
            if self.classifier.add(key):
                self.isolated[key] = active[key].detected_at
        self._active_seen = set(active)

    def flows(self) -> list[dict]:
        from ovsfoot.sources.bpf import clock_offset
        offset, rows = clock_offset(), []
        for key, detected in self.isolated.items():
            f = self.classifier.flow(key)
            first = f["first_ns"] + offset if f["first_ns"] else None
            rows.append({"zone": key.zone, "proto": key.proto, "src": key.src, "dst": key.dst,
                         "sport": key.sport, "dport": key.dport, "packets": f["packets"],
                         "bytes": f["bytes"], "detected_ns": detected,
                         "first_isolated_ns": first,
                         "detection_to_isolation_ms":
                             round((first - detected) / 1e6, 3) if first else None})
        return rows

    def show(self) -> tuple[dict, str]:
        if self.on and self.uplink.ours() is None:
            self.where = None
            self._off_because(f"ovsfoot's qdisc on {self.interface} was removed by someone "
                              "else (isolate/set on installs it again)")
        data = {"state": "on" if self.on else "off", "reason": self.reason,
                "interface": self.interface or self.interface_arg, "netns": self.netns,
                "dscp": self.dscp, "qdisc": None, "flows": [], "bands": {}, "classifier": {}}
        lines = [f"isolation: {data['state']} on {data['interface']}"
                 + (f" ({self.reason})" if self.reason else "")]
        if self.on:
            data["qdisc"] = {"kind": "prio", "handle": _tc_handle(HANDLE << 16),
                             "parent": "root" if self.where.parent == TC_H_ROOT
                             else _tc_handle(self.where.parent), "filter": FILTER_NAME}
            data["flows"] = self.flows()
            data["bands"] = self.uplink.bands()
            data["classifier"] = self.classifier.counters()
            data["since_ns"] = self.since_ns
            lines.append(f"qdisc prio {data['qdisc']['handle']} {self.where.describe()}, "
                         f"filter {FILTER_NAME}"
                         + (f", elephants' outer DSCP {self.dscp}" if self.dscp is not None
                            else ""))
            for name, b in data["bands"].items():
                lines.append(f"  band {name}: {b['packets']} packets, {b['bytes']} bytes, "
                             f"{b['drops']} dropped, {b['backlog']} bytes queued")
            for f in data["flows"]:
                lines.append(f"  zone={f['zone']} proto={f['proto']} {f['src']}:{f['sport']}->"
                             f"{f['dst']}:{f['dport']}: {f['packets']} packets isolated"
                             + (f", first {f['detection_to_isolation_ms']} ms after detection"
                                if f["first_isolated_ns"] else ""))
            if not data["flows"]:
                lines.append("  no elephants isolated")
        return data, "\n".join(lines)

    def _close_uplink(self) -> None:
        if self.uplink is not None:
            self.uplink.close()
            self.uplink = None

    def close(self) -> None:
        """Removes what ovsfoot installed (on exit and on `exit`)."""
        self._off()
        self._close_uplink()
        if self.classifier is not None:
            self.classifier.close()
            self.classifier = None
