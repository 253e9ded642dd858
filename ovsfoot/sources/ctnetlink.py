"""Kernel conntrack through ctnetlink (pyroute2): the source where eBPF cannot run.

It dumps the conntrack table of the OVS datapath's network namespace every
`interval` seconds. Like the kernel program it keeps mice out of user space:
only entries that have carried at least the byte threshold become events.
Entries that vanish from the table end with an END event. Every entry's
counters also add to its zone's (rates.EntryCounter), for throughput and flow rate.
"""

from __future__ import annotations

import logging
import socket
import time

from pyroute2 import NFCTSocket

from ovsfoot import netns as ns
from ovsfoot.events import FlowEvent, FlowKey, Kind, Thresholds
from ovsfoot.rates import EntryCounter, ZoneCounters
from ovsfoot.sources import SourceUnavailable

log = logging.getLogger(__name__)

_IP_ATTRS = (("CTA_IP_V4_SRC", "CTA_IP_V4_DST"), ("CTA_IP_V6_SRC", "CTA_IP_V6_DST"))


def _counters(msg, attr: str) -> tuple[int, int]:
    c = msg.get_attr(attr)
    if c is None:
        return 0, 0
    return c.get_attr("CTA_COUNTERS_BYTES") or 0, c.get_attr("CTA_COUNTERS_PACKETS") or 0


def decode(msg, netns_inode: int, ts: int) -> FlowEvent | None:
    """Turn one ctnetlink message into an UPDATE event (None if not IP)."""
    tup = msg.get_attr("CTA_TUPLE_ORIG")
    if tup is None:
        return None
    ip = tup.get_attr("CTA_TUPLE_IP")
    proto = tup.get_attr("CTA_TUPLE_PROTO")
    for s, d in _IP_ATTRS:
        src = ip.get_attr(s)
        if src is not None:
            dst = ip.get_attr(d)
            break
    else:
        return None
    key = FlowKey(netns_inode, msg.get_attr("CTA_ZONE") or 0,
                  proto.get_attr("CTA_PROTO_NUM"), src, dst,
                  proto.get_attr("CTA_PROTO_SRC_PORT") or 0,
                  proto.get_attr("CTA_PROTO_DST_PORT") or 0)
    stamp = msg.get_attr("CTA_TIMESTAMP")
    first = stamp.get_attr("CTA_TIMESTAMP_START") if stamp is not None else None
    bo, po = _counters(msg, "CTA_COUNTERS_ORIG")
    br, pr = _counters(msg, "CTA_COUNTERS_REPLY")
    return FlowEvent(Kind.UPDATE, key, ts, first or 0, bo, br, po, pr)


class CtnetlinkSource:
    """Polls conntrack in namespace `netns` (None: our own)."""

    name = "ctnetlink"

    def __init__(self, netns: str | None = None, include_zone0: bool = False,
                 interval: float = 1.0, thresholds: Thresholds | None = None):
        self.netns = netns
        self.include_zone0 = include_zone0
        self.interval = interval
        self.min_bytes = (thresholds or Thresholds()).bytes
        try:
            self.netns_inode = ns.inode(netns)
            with ns.entered(netns):
                # pyroute2 opens the socket on first use: use it here, so that it
                # belongs to this namespace (its netns= option forks a helper instead).
                # AF_UNSPEC: IPv4 and IPv6 (pyroute2's default, AF_INET, dumps IPv4 only)
                self._sock = NFCTSocket(nfgen_family=socket.AF_UNSPEC)
                self._sock.count()
        except (OSError, FileNotFoundError) as e:
            raise SourceUnavailable(f"cannot open ctnetlink in namespace "
                                    f"{netns or '(own)'}: {e}") from None
        self.accounting = ns.sysctl(netns, "net.netfilter.nf_conntrack_acct", "1") == "1"
        self.timestamps = ns.sysctl(netns, "net.netfilter.nf_conntrack_timestamp", "1") == "1"
        if not self.accounting:
            log.warning("conntrack byte counters are off in namespace %s and could not "
                        "be turned on: set net.netfilter.nf_conntrack_acct=1 there, "
                        "no elephant can be detected until then", netns or "(own)")
        self._first_seen: dict[FlowKey, int] = {}   # candidates reported so far
        self.zones = EntryCounter()
        self._next_poll = 0.0
        self.polls = 0
        self.entries = 0

    clock = staticmethod(time.time_ns)

    def set_thresholds(self, thresholds: Thresholds) -> None:
        self.min_bytes = thresholds.bytes

    def run(self) -> list[FlowEvent]:
        if time.monotonic() < self._next_poll:
            return []
        self._next_poll = time.monotonic() + self.interval
        return self.poll()

    def poll(self) -> list[FlowEvent]:
        """One full dump: NEW/UPDATE for flows over the byte threshold, END for gone ones."""
        ts = time.time_ns()
        events, seen = [], {}
        n = 0
        for msg in self._sock.dump():
            n += 1
            ev = decode(msg, self.netns_inode, ts)
            if ev is None or (ev.key.zone == 0 and not self.include_zone0):
                continue
            self.zones.add(ev.key, ev.bytes, ev.packets_orig + ev.packets_reply)
            first = self._first_seen.get(ev.key)
            if first is None and ev.bytes < self.min_bytes:
                continue
            if not ev.first_seen:               # no timestamps: when we first saw it
                ev.first_seen = first or ts
            if first is None:
                ev.kind = Kind.NEW
            seen[ev.key] = ev.first_seen
            events.append(ev)
        for key, first in self._first_seen.items():
            if key not in seen:
                events.append(FlowEvent(Kind.END, key, ts, first))
        self._first_seen = seen
        self.zones.finish()
        self.polls += 1
        self.entries = n
        return events

    def zone_counters(self) -> dict[int, ZoneCounters]:
        return self.zones.totals

    def wait(self, poller) -> None:
        poller.timer_wait(max(0, int((self._next_poll - time.monotonic()) * 1000)))

    def stats(self) -> dict:
        return {"source": self.name, "netns": self.netns or "(own)",
                "accounting": self.accounting, "timestamps": self.timestamps,
                "interval_s": self.interval, "polls": self.polls,
                "entries_last_poll": self.entries, "flows_tracked": len(self._first_seen)}

    def close(self) -> None:
        self._sock.close()
