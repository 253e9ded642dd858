"""Kernel conntrack through ctnetlink: the source where eBPF cannot run.

Every `interval` seconds it dumps the conntrack table of the OVS datapath's
network namespace, a slice at a time (`SLICE_S`), so that the agent's loop
(unixctl, publishing) keeps turning during the dump of a large table. Like the
kernel program it keeps mice out of user space: `ctmsg.scan` reads only the
counters, zone and id of each entry, and only the entries that carried at least
the byte threshold become events (NEW, then UPDATE).

Each interval, every followed entry is also asked for on its own (one
IPCTNL_MSG_CT_GET each), so its counters and state are fresh even while the
dump of a large table takes longer than the interval. A followed entry ends
(END) as soon as its flow ends: when a TCP entry leaves ESTABLISHED (FIN_WAIT,
CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE), when the kernel deletes it (a DESTROY
event, with its final counters; entries created while a listener was there),
or when a GET or a dump no longer finds it.

Every entry also adds to its zone's sums, and every DESTROY event to its
zone's deleted counters (rates.DumpCounter), for throughput and flow rate.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import time
from dataclasses import dataclass

from pyroute2.netlink import NETLINK_NETFILTER
from pyroute2.netlink.nfnetlink import NFNLGRP_CONNTRACK_DESTROY

from ovsfoot import netns as ns
from ovsfoot.events import FlowEvent, FlowKey, Kind, Thresholds
from ovsfoot.rates import DumpCounter, ZoneCounters
from ovsfoot.sources import SourceUnavailable
from ovsfoot.sources import ctmsg

log = logging.getLogger(__name__)

SLICE_S = 0.02          # longest stretch of work per run(): the loop turns in between
RCVBUF = 8 << 20        # socket receive buffers (SO_RCVBUFFORCE as root)
RECV = 1 << 20          # one recv() of a dump: the kernel fills up to its skb size


@dataclass(slots=True)
class Followed:
    """An entry over the byte threshold, reported to the pipeline."""

    key: FlowKey
    first_seen: int     # ns since the epoch
    request: bytes      # IPCTNL_MSG_CT_GET of it, but for the sequence number
    closed: bool = False    # ended by its TCP state; the entry is still in the table


def _open(netns: str | None, groups: int = 0) -> socket.socket:
    with ns.entered(netns):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                          NETLINK_NETFILTER)
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)     # SO_RCVBUFFORCE
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    s.bind((0, groups))
    return s


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
            self._sock = _open(netns)
            self._check_sock = _open(netns)
            self._events = _open(netns, 1 << (NFNLGRP_CONNTRACK_DESTROY - 1))
        except (OSError, FileNotFoundError) as e:
            raise SourceUnavailable(f"cannot open ctnetlink in namespace "
                                    f"{netns or '(own)'}: {e}") from None
        self.accounting = ns.sysctl(netns, "net.netfilter.nf_conntrack_acct", "1") == "1"
        self.timestamps = ns.sysctl(netns, "net.netfilter.nf_conntrack_timestamp", "1") == "1"
        self.destroy_events = ns.sysctl(netns, "net.netfilter.nf_conntrack_events") != "0"
        if not self.accounting:
            log.warning("conntrack byte counters are off in namespace %s and could not "
                        "be turned on: set net.netfilter.nf_conntrack_acct=1 there, "
                        "no elephant can be detected until then", netns or "(own)")
        if not self.destroy_events:
            log.warning("conntrack events are off in namespace %s "
                        "(net.netfilter.nf_conntrack_events=0): an elephant whose entry is "
                        "deleted ends only when a dump misses it; set it to 2",
                        netns or "(own)")
        self._follow: dict[int, Followed] = {}   # by the entry's CTA_ID
        self.zones = DumpCounter()
        self._sums: dict[int, list[int]] = {}    # the dump's, per zone
        self._seq = 0
        self._dumping = False
        self._seen: set[int] = set()
        self._started = self._slice_started = self._busy = 0.0
        self._n = 0
        self._next_poll = self._next_check = 0.0
        self._checking: dict[int, int] = {}    # sequence number -> id, GETs unanswered
        self._warned = False
        self.on_poll = None     # called with (seconds, busy seconds) after each dump
        self.polls = 0
        self.entries = 0
        self.last_poll_s = self.last_poll_busy_s = 0.0
        self.longest_slice_s = self.longest_slice_cpu_s = 0.0    # wall and CPU, of a run()
        self.ended = {"tcp_state": 0, "destroyed": 0, "gone": 0}
        self.dropped = 0
        try:            # a cheap request that ctnetlink refuses as it would the dumps
            self.entries_at_start = ctmsg.count(self._sock, 0)
        except OSError as e:
            self.close()
            raise SourceUnavailable(f"cannot read conntrack in namespace "
                                    f"{netns or '(own)'}: {e}") from None

    clock = staticmethod(time.time_ns)

    def set_thresholds(self, thresholds: Thresholds) -> None:
        self.min_bytes = thresholds.bytes

    def run(self) -> list[FlowEvent]:
        """Whatever is ready, for at most about SLICE_S of work."""
        deadline = time.monotonic() + SLICE_S
        out: list[FlowEvent] = []
        self._drain_events(out, deadline)
        self._check(out)
        if not self._dumping and time.monotonic() >= self._next_poll:
            self._start()
        if self._dumping:
            try:
                self._continue(out, deadline)
            except ctmsg.DumpError as e:
                log.warning("conntrack dump failed, retrying at the next interval: %s", e)
                self._dumping = False
        return out

    def poll(self) -> list[FlowEvent]:
        """One whole dump, blocking: NEW/UPDATE for flows over the byte threshold,
        END for those that ended."""
        out: list[FlowEvent] = []
        self._drain_events(out, None)
        if not self._dumping:
            self._start()
        while self._dumping:
            self._continue(out, None)
        return out

    def _start(self) -> None:
        self._seq += 1
        self._sock.send(ctmsg.dump_request(self._seq))
        self._dumping, self._seen, self._n, self._busy = True, set(), 0, 0.0
        self._sums = {}
        self._started = time.monotonic()
        self._next_poll = self._started + self.interval

    def _continue(self, out: list[FlowEvent], deadline: float | None) -> None:
        """Read and handle the dump until it ends or `deadline` (None: until it ends)."""
        self._slice_started, cpu = time.monotonic(), time.thread_time()
        try:
            while True:
                try:
                    buf = self._sock.recv(RECV)
                except BlockingIOError:
                    if deadline is not None:
                        return
                    select.select([self._sock], [], [], 10)
                    continue
                entries: list[ctmsg.CtEntry] = []
                n, done = ctmsg.scan(buf, self.min_bytes, self._follow, entries,
                                     zones=self._sums)
                self._n += n
                ts = time.time_ns()
                for e in entries:
                    self._entry(e, ts, out)
                if done:
                    self._finish(ts, out)
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    return
        finally:
            now = time.monotonic()
            self.longest_slice_s = max(self.longest_slice_s, now - self._slice_started)
            self.longest_slice_cpu_s = max(self.longest_slice_cpu_s, time.thread_time() - cpu)
            if self._dumping:
                self._busy += now - self._slice_started

    def _entry(self, e: ctmsg.CtEntry, ts: int, out: list[FlowEvent]) -> None:
        if e.zone == 0 and not self.include_zone0:
            return
        key = e.key(self.netns_inode)
        if key is None:
            return
        f = self._follow.get(e.id)
        if f is not None and f.key != key:
            f = None                    # another entry with the same 32-bit id
        if f is None:
            if e.bytes < self.min_bytes:
                return
            family = socket.AF_INET6 if ":" in key.src else socket.AF_INET
            f = self._follow[e.id] = Followed(key, e.start() or ts, ctmsg.get_request(
                0, family, e.tuple_attr(), e.zone))
            kind = Kind.NEW
        else:
            kind = Kind.UPDATE
        self._seen.add(e.id)
        if f.closed:
            return
        if e.closing():
            f.closed = True
            self.ended["tcp_state"] += 1
            kind = Kind.END
        out.append(FlowEvent(kind, key, ts, f.first_seen, e.bytes_orig, e.bytes_reply,
                             e.packets_orig, e.packets_reply))

    def _finish(self, ts: int, out: list[FlowEvent]) -> None:
        for cid in [c for c in self._follow if c not in self._seen]:
            f = self._follow.pop(cid)
            if not f.closed:
                self.ended["gone"] += 1
                out.append(FlowEvent(Kind.END, f.key, ts, f.first_seen))
        self._dumping = False
        if not self.include_zone0:
            self._sums.pop(0, None)
        self.zones.dump(self._sums)
        now = time.monotonic()
        self._busy += now - self._slice_started
        self.polls += 1
        self.entries = self._n
        self.last_poll_s = now - self._started
        self.last_poll_busy_s = self._busy
        if self.on_poll is not None:
            self.on_poll(self.last_poll_s, self._busy)
        if self.last_poll_s > self.interval and not self._warned:
            self._warned = True
            log.warning("one poll of the conntrack table (%d entries) takes %.2f s "
                        "(%.2f s of work), longer than --interval %g s: a new elephant is "
                        "seen up to %.1f s late (those already seen are still checked every "
                        "interval); the bpf source has no such limit", self._n,
                        self.last_poll_s, self._busy, self.interval,
                        self.last_poll_s + self.interval)

    def _check(self, out: list[FlowEvent]) -> None:
        """Each interval, one IPCTNL_MSG_CT_GET per followed entry: its counters and TCP
        state do not wait for a dump of the whole table to come round to it."""
        self._drain_checks(out)
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.interval
        self._checking.clear()          # the last round's answers came long ago
        for cid, f in self._follow.items():
            if f.closed:
                continue
            self._seq += 1
            self._checking[self._seq] = cid
            req = bytearray(f.request)
            req[8:12] = self._seq.to_bytes(4, "little")
            try:
                self._check_sock.send(req)
            except BlockingIOError:
                break                   # the rest wait for the next interval

    def _recv(self, sock: socket.socket) -> bytes | None:
        """What `sock` has (b"" if its buffer overflowed), None if nothing."""
        try:
            return sock.recv(RECV)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            self.dropped += 1   # the kernel dropped messages: the next dump catches up
            return b""

    def _drain_checks(self, out: list[FlowEvent]) -> None:
        while (buf := self._recv(self._check_sock)) is not None:
            entries: list[ctmsg.CtEntry] = []
            errors: list[tuple[int, int]] = []
            ctmsg.scan(buf, ctmsg.NEVER, self._follow, entries, errors=errors)
            ts = time.time_ns()
            for e in entries:
                self._entry(e, ts, out)
            for seq, err in errors:
                cid = self._checking.pop(seq, None)
                f = self._follow.get(cid) if err == errno.ENOENT else None
                if f is not None:
                    del self._follow[cid]
                    if not f.closed:
                        self.ended["gone"] += 1
                        out.append(FlowEvent(Kind.END, f.key, ts, f.first_seen))

    def _drain_events(self, out: list[FlowEvent], deadline: float | None) -> None:
        """DESTROY events: a followed entry was deleted, END with its final counters;
        every deleted entry's counters add to its zone's."""
        while (buf := self._recv(self._events)) is not None:
            entries: list[ctmsg.CtEntry] = []
            ctmsg.scan(buf, ctmsg.NEVER, self._follow, entries, ctmsg.MSG_DELETE,
                       zones=self.zones.destroyed())
            ts = time.time_ns()
            for e in entries:
                f = self._follow.get(e.id)
                if f is None or f.key != e.key(self.netns_inode):
                    continue
                del self._follow[e.id]
                if not f.closed:
                    self.ended["destroyed"] += 1
                    out.append(FlowEvent(Kind.END, f.key, ts, f.first_seen, e.bytes_orig,
                                         e.bytes_reply, e.packets_orig, e.packets_reply))
            if deadline is not None and time.monotonic() >= deadline:
                return

    def zone_counters(self) -> dict[int, ZoneCounters]:
        return self.zones.totals

    def wait(self, poller) -> None:
        import ovs.poller
        poller.fd_wait(self._events.fileno(), ovs.poller.POLLIN)
        poller.fd_wait(self._check_sock.fileno(), ovs.poller.POLLIN)
        if self._dumping:
            poller.fd_wait(self._sock.fileno(), ovs.poller.POLLIN)
        else:
            poller.timer_wait(max(0, int((self._next_poll - time.monotonic()) * 1000)))
        if self._follow:
            poller.timer_wait(max(0, int((self._next_check - time.monotonic()) * 1000)))

    def stats(self) -> dict:
        return {"source": self.name, "netns": self.netns or "(own)",
                "accounting": self.accounting, "timestamps": self.timestamps,
                "destroy_events": self.destroy_events, "interval_s": self.interval,
                "polls": self.polls, "entries_last_poll": self.entries,
                "last_poll_s": round(self.last_poll_s, 4),
                "last_poll_busy_s": round(self.last_poll_busy_s, 4),
                "longest_slice_s": round(self.longest_slice_s, 4),
                "longest_slice_cpu_s": round(self.longest_slice_cpu_s, 4),
                "flows_tracked": len(self._follow), "ended": dict(self.ended),
                "dropped": self.dropped}

    def close(self) -> None:
        for s in (self._sock, self._check_sock, self._events):
            s.close()
