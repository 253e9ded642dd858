"""ctnetlink messages on the raw buffer: requests, and a parser that reads only what
the ctnetlink source uses.

A table dump is mostly mice. `scan` walks each message's top-level attributes with
`struct` (counters, zone, id) and keeps only the entries that carried at least
`min_bytes`, or whose id the caller already follows; their tuple, TCP state and start
time are decoded then (`CtEntry.key`), not for the mice. pyroute2's parser builds an
object tree for every attribute of every entry: 50x slower than `conntrack -L`.

Attribute numbers and layout: linux/netfilter/nfnetlink_conntrack.h, the same as
pyroute2.netlink.nfnetlink.nfctsocket.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from dataclasses import dataclass

from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK
from pyroute2.netlink.nfnetlink.nfctsocket import (IPCTNL_MSG_CT_DELETE, IPCTNL_MSG_CT_GET,
                                                   IPCTNL_MSG_CT_GET_STATS, IPCTNL_MSG_CT_NEW,
                                                   TCP_CONNTRACK_CLOSE,
                                                   TCP_CONNTRACK_FIN_WAIT)

from ovsfoot.events import FlowKey

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
MSG_GET = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
MSG_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW    # an entry in a dump
MSG_DELETE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
MSG_GET_STATS = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET_STATS
NEVER = 2**65                           # a byte threshold no entry reaches

# enum ctattr_type, ctattr_tuple, ctattr_ip, ctattr_l4proto, ctattr_protoinfo(_tcp),
# ctattr_counters, ctattr_tstamp
CTA_TUPLE_ORIG, CTA_PROTOINFO, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 1, 4, 9, 10
CTA_ID, CTA_ZONE, CTA_TIMESTAMP = 12, 18, 20
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V6_SRC = 1, 3
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
CTA_TIMESTAMP_START = 1
CTA_STATS_GLOBAL_ENTRIES = 1
TYPE_MASK = 0x3fff                      # without NLA_F_NESTED, NLA_F_NET_BYTEORDER
PORT_PROTOS = {6, 17, 33, 132, 136}     # TCP, UDP, DCCP, SCTP, UDP-Lite
TCP = 6

_NLMSG = struct.Struct("<IHHII")        # len, type, flags, seq, pid
_NLA = struct.Struct("<HH")             # len, type
_U8 = struct.Struct("B")
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")
# A counters nest as the kernel writes it on 64-bit machines without padding:
# len 28; PACKETS (len 12) then BYTES (len 12), read from the nest header
_COUNTERS = struct.Struct(">8xQ4xQ")
_HEAD = _NLMSG.size + 4                 # nlmsghdr + nfgenmsg


def dump_request(seq: int) -> bytes:
    """IPCTNL_MSG_CT_GET with NLM_F_DUMP: every entry of both families."""
    return _NLMSG.pack(_HEAD, MSG_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + bytes(4)


def count(sock: socket.socket, seq: int) -> int:
    """Entries in the table (IPCTNL_MSG_CT_GET_STATS), on a blocking or non-blocking
    socket; raises DumpError if the kernel refuses (no CAP_NET_ADMIN)."""
    sock.send(_NLMSG.pack(_HEAD, MSG_GET_STATS, NLM_F_REQUEST, seq, 0) + bytes(4))
    if not select.select([sock], [], [], 5)[0]:
        raise DumpError(errno.ETIMEDOUT, "ctnetlink did not answer IPCTNL_MSG_CT_GET_STATS")
    buf = sock.recv(65536)
    mlen, mtype = _NLMSG.unpack_from(buf)[:2]
    if mtype == NLMSG_ERROR:
        _raise(-struct.unpack_from("<i", buf, 16)[0])
    a = _find(buf, _HEAD, mlen, CTA_STATS_GLOBAL_ENTRIES)
    return _BE32.unpack_from(buf, a[0])[0] if a else 0


def _raise(err: int) -> None:
    raise DumpError(err, f"ctnetlink answered {errno.errorcode.get(err, err)}: "
                         f"{os.strerror(err)}")


def get_request(seq: int, family: int, tuple_orig: bytes, zone: int) -> bytes:
    """IPCTNL_MSG_CT_GET of one entry: its CTA_TUPLE_ORIG attribute as the kernel sent
    it, and its zone."""
    body = tuple_orig + _NLA.pack(6, CTA_ZONE) + _BE16.pack(zone) + bytes(2)
    return _NLMSG.pack(_HEAD + len(body), MSG_GET, NLM_F_REQUEST, seq, 0) + \
        struct.pack("BBH", family, 0, 0) + body


class DumpError(OSError):
    """The kernel answered a request with an error."""


@dataclass(slots=True)
class CtEntry:
    """One conntrack entry as the kernel sent it; the tuple, state and start are
    read from `buf` only when asked (`key`, `tcp_state`, `start`)."""

    id: int                 # CTA_ID: the kernel's id of the entry while it lives
    zone: int
    bytes_orig: int
    bytes_reply: int
    packets_orig: int
    packets_reply: int
    buf: bytes              # the buffer the message is in ...
    off: int                # ... and where its attributes start and end
    end: int

    @property
    def bytes(self) -> int:
        return self.bytes_orig + self.bytes_reply

    def _attr(self, ty: int) -> tuple[int, int] | None:
        return _find(self.buf, self.off, self.end, ty)

    def key(self, netns: int) -> FlowKey | None:
        """Its original-direction tuple as a FlowKey (None if not IPv4/IPv6)."""
        t = self._attr(CTA_TUPLE_ORIG)
        return None if t is None else _tuple_key(self.buf, *t, netns, self.zone)

    def tcp_state(self) -> int | None:
        """enum tcp_conntrack (TCP_CONNTRACK_*), None if not TCP."""
        a = _path(self.buf, self.off, self.end,
                  (CTA_PROTOINFO, CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE))
        return None if a is None else self.buf[a[0]]

    def closing(self) -> bool:
        """A TCP entry past ESTABLISHED: FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE."""
        s = self.tcp_state()
        return s is not None and TCP_CONNTRACK_FIN_WAIT <= s <= TCP_CONNTRACK_CLOSE

    def tuple_attr(self) -> bytes:
        """The CTA_TUPLE_ORIG attribute, header included (for `get_request`)."""
        a = self._attr(CTA_TUPLE_ORIG)
        return bytes(self.buf[a[0] - 4:a[1]]) if a else b""

    def start(self) -> int:
        """CTA_TIMESTAMP_START, ns since the epoch; 0 without nf_conntrack_timestamp."""
        a = _path(self.buf, self.off, self.end, (CTA_TIMESTAMP, CTA_TIMESTAMP_START))
        return _BE64.unpack_from(self.buf, a[0])[0] if a else 0


def _find(buf, off: int, end: int, ty: int) -> tuple[int, int] | None:
    """(start, end) of the payload of attribute `ty` among those in buf[off:end]."""
    while off + 4 <= end:
        ln, t = _NLA.unpack_from(buf, off)
        if ln < 4:
            return None
        if t & TYPE_MASK == ty:
            return off + 4, off + ln
        off += (ln + 3) & ~3
    return None


def _path(buf, off: int, end: int, types) -> tuple[int, int] | None:
    for ty in types:
        a = _find(buf, off, end, ty)
        if a is None:
            return None
        off, end = a
    return off, end


def _tuple_key(buf, off: int, end: int, netns: int, zone: int) -> FlowKey | None:
    ip = _find(buf, off, end, CTA_TUPLE_IP)
    proto = _find(buf, off, end, CTA_TUPLE_PROTO)
    if ip is None or proto is None:
        return None
    src = _find(buf, *ip, CTA_IP_V4_SRC)
    family, v4 = (socket.AF_INET, True) if src else (socket.AF_INET6, False)
    src = src or _find(buf, *ip, CTA_IP_V6_SRC)
    dst = _find(buf, *ip, (CTA_IP_V4_SRC if v4 else CTA_IP_V6_SRC) + 1)
    num = _find(buf, *proto, CTA_PROTO_NUM)
    if src is None or dst is None or num is None:
        return None
    pnum = buf[num[0]]
    sport = dport = 0
    if pnum in PORT_PROTOS:
        sp, dp = _find(buf, *proto, CTA_PROTO_SRC_PORT), _find(buf, *proto, CTA_PROTO_DST_PORT)
        sport = _BE16.unpack_from(buf, sp[0])[0] if sp else 0
        dport = _BE16.unpack_from(buf, dp[0])[0] if dp else 0
    return FlowKey(netns, zone, pnum, socket.inet_ntop(family, buf[src[0]:src[1]]),
                   socket.inet_ntop(family, buf[dst[0]:dst[1]]), sport, dport)


def _counters(buf, off: int, ln: int) -> tuple[int, int]:
    """(packets, bytes) of a CTA_COUNTERS_* nest at `off` (its header)."""
    if ln == 28:
        return _COUNTERS.unpack_from(buf, off)
    p = _find(buf, off + 4, off + ln, CTA_COUNTERS_PACKETS)
    b = _find(buf, off + 4, off + ln, CTA_COUNTERS_BYTES)
    return (_BE64.unpack_from(buf, p[0])[0] if p else 0,
            _BE64.unpack_from(buf, b[0])[0] if b else 0)


def scan(buf: bytes, min_bytes: int, follow, out: list, msg_type: int = MSG_NEW,
         errors: list | None = None, zones: dict | None = None) -> tuple[int, bool]:
    """Append to `out` a CtEntry for each entry message (`msg_type`) in `buf` that
    carried at least `min_bytes` or whose id is in `follow` (a set or dict); add
    every entry to `zones`, if given: [bytes, packets, entries] per zone.

    Returns (entry messages seen, whether `buf` holds the end of a dump:
    NLMSG_DONE). An NLMSG_ERROR that carries an error raises DumpError, or with
    `errors` is appended there as (its request's sequence number, errno).
    """
    unpack_nlmsg, unpack_nla, unpack_be32 = _NLMSG.unpack_from, _NLA.unpack_from, \
        _BE32.unpack_from
    unpack_zone, unpack_counters = _BE16.unpack_from, _COUNTERS.unpack_from
    size, off, n, done = len(buf), 0, 0, False
    while off + 16 <= size:
        mlen, mtype = unpack_nlmsg(buf, off)[:2]
        if mlen < 16:
            break
        end = off + mlen
        if mtype == msg_type:
            n += 1
            a = off + _HEAD
            zone = cid = po = bo = pr = br = 0
            while a < end:
                ln, ty = unpack_nla(buf, a)
                ty &= TYPE_MASK
                if ty == CTA_COUNTERS_ORIG:
                    po, bo = unpack_counters(buf, a) if ln == 28 else _counters(buf, a, ln)
                elif ty == CTA_COUNTERS_REPLY:
                    pr, br = unpack_counters(buf, a) if ln == 28 else _counters(buf, a, ln)
                elif ty == CTA_ZONE:
                    zone = unpack_zone(buf, a + 4)[0]
                elif ty == CTA_ID:
                    cid = unpack_be32(buf, a + 4)[0]
                if ln < 4:
                    break
                a += (ln + 3) & ~3
            if zones is not None:
                z = zones.get(zone)
                if z is None:
                    zones[zone] = [bo + br, po + pr, 1]
                else:
                    z[0] += bo + br
                    z[1] += po + pr
                    z[2] += 1
            if bo + br >= min_bytes or cid in follow:
                out.append(CtEntry(cid, zone, bo, br, po, pr, buf, off + _HEAD, end))
        elif mtype == NLMSG_DONE:
            done = True
        elif mtype == NLMSG_ERROR:
            err = -struct.unpack_from("<i", buf, off + 16)[0]
            if err and errors is not None:
                errors.append((unpack_nlmsg(buf, off)[3], err))
            elif err:
                _raise(err)
        off += (mlen + 3) & ~3
    return n, done
