"""The isolation classifier's parsing, on crafted packets, through BPF_PROG_TEST_RUN.

tc programs load on this host's kernel too (it cannot trace conntrack, but it
runs classifiers), so bpf/ovsfoot_isolate.c runs here for real on packets
built byte by byte: outer IPv4 and IPv6, Geneve options of several lengths,
inner IPv4 and IPv6, other UDP, outer and inner fragments. What the program
decided is read back from its own maps (the band counters, the elephant's
packet count) and, for DSCP, from the packet it returns.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct

import pytest

from ovsfoot.events import FlowKey
from ovsfoot.isolation import Classifier

BPF_PROG_TEST_RUN = 10
SYS_BPF = 321                   # x86_64
TC_ACT_OK = 0
ELEPHANT = FlowKey(0, 5, 6, "10.0.0.11", "10.0.0.13", 40000, 5201)
ELEPHANT6 = FlowKey(0, 5, 17, "fd00::11", "fd00::13", 40001, 5202)


class ProgTestRunAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


def run(fd: int, packet: bytes) -> tuple[int, bytes]:
    """Runs the program once on `packet`; its return value and the packet after it."""
    libc = ctypes.CDLL(None, use_errno=True)
    data_in = ctypes.create_string_buffer(packet, len(packet))
    data_out = ctypes.create_string_buffer(len(packet) + 256)
    attr = ProgTestRunAttr(prog_fd=fd, data_size_in=len(packet), data_size_out=len(data_out),
                    data_in=ctypes.addressof(data_in), data_out=ctypes.addressof(data_out),
                    repeat=1)
    if libc.syscall(SYS_BPF, BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr)) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return attr.retval, data_out.raw[:attr.data_size_out]


def checksum(header: bytes) -> int:
    s = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def eth(ethertype: int, payload: bytes, vlan: int | None = None) -> bytes:
    macs = bytes.fromhex("0a0000000002") + bytes.fromhex("0a0000000001")
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return macs + tag + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, tos: int = 0, frag: int = 0,
         options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, 4 * ihl + len(payload), 1, frag, 64,
                    proto, 0, socket.inet_aton(src), socket.inet_aton(dst)) + options
    return h[:10] + struct.pack("!H", checksum(h)) + h[12:] + payload


def ipv6(src: str, dst: str, nexthdr: int, payload: bytes) -> bytes:
    return (struct.pack("!IHBB", 6 << 28, len(payload), nexthdr, 64)
            + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload)


def l4(sport: int, dport: int, body: bytes = b"x" * 64) -> bytes:
    """A TCP or UDP header's first bytes (the ports are what the classifier reads)."""
    return struct.pack("!HHII", sport, dport, 0, 0) + body


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def geneve(inner: bytes, options_words: int = 0, protocol: int = 0x6558) -> bytes:
    opts = b""
    for i in range(options_words // 2 if options_words else 0):     # 8-byte TLVs (OVN's)
        opts += struct.pack("!HBB", 0x0102, 0x80, 1) + struct.pack("!I", i)
    opts += b"\0" * (4 * options_words - len(opts))
    return struct.pack("!BBH", options_words, 0, protocol) + struct.pack("!I", 0x000100) \
        + opts + inner


def inner_frame(key: FlowKey, reply: bool = False, frag: int = 0) -> bytes:
    src, dst, sport, dport = (key.dst, key.src, key.dport, key.sport) if reply else \
        (key.src, key.dst, key.sport, key.dport)
    if ":" in src:
        return eth(0x86DD, ipv6(src, dst, key.proto, l4(sport, dport)))
    return eth(0x0800, ipv4(src, dst, key.proto, l4(sport, dport), frag=frag))


def outer4(inner: bytes, dport: int = 6081, **kw) -> bytes:
    return eth(0x0800, ipv4("192.168.50.1", "192.168.50.2", 17,
                            udp(49152, dport, inner), **kw))


def outer6(inner: bytes) -> bytes:
    return eth(0x86DD, ipv6("fd50::1", "fd50::2", 17, udp(49152, 6081, inner)))


@pytest.fixture(scope="module")
def classifier():
    if os.geteuid() != 0:
        pytest.fail("loading a tc program needs root: run the system tests as root")
    c = Classifier()
    c.add(ELEPHANT)
    c.add(ELEPHANT6)
    yield c
    c.close()


def decided(c: Classifier, packet: bytes) -> str:
    """Which band the classifier put `packet` in ("normal" or "elephant")."""
    before = c.counters()
    ret, _ = run(c.fd, packet)
    assert ret == TC_ACT_OK
    after = c.counters()
    moved = [b for b in ("normal", "elephant")
             if after[f"{b}_packets"] == before[f"{b}_packets"] + 1]
    assert len(moved) == 1, (before, after)
    return moved[0]


@pytest.mark.parametrize("words", [0, 2, 4, 7, 16, 63])
def test_geneve_options_of_any_length(classifier, words):
    """OVN sends one 8-byte option; any length up to the 252-byte maximum parses."""
    before = classifier.flow(ELEPHANT)["packets"]
    assert decided(classifier, outer4(geneve(inner_frame(ELEPHANT), words))) == "elephant"
    assert classifier.flow(ELEPHANT)["packets"] == before + 1
    mouse = FlowKey(0, 5, 6, "10.0.0.12", "10.0.0.14", 40000, 11111)
    assert decided(classifier, outer4(geneve(inner_frame(mouse), words))) == "normal"


def test_both_directions_and_ipv6(classifier):
    assert decided(classifier, outer4(geneve(inner_frame(ELEPHANT, reply=True), 2))) \
        == "elephant"
    assert decided(classifier, outer4(geneve(inner_frame(ELEPHANT6), 2))) == "elephant"
    assert decided(classifier, outer6(geneve(inner_frame(ELEPHANT6), 2))) == "elephant"
    assert decided(classifier, outer6(geneve(inner_frame(ELEPHANT), 4))) == "elephant"
    assert classifier.flow(ELEPHANT6)["first_ns"] > 0
    # another port of the same hosts is not the elephant
    other = FlowKey(0, 5, 6, "10.0.0.11", "10.0.0.13", 40000, 5203)
    assert decided(classifier, outer4(geneve(inner_frame(other)))) == "normal"


def test_vlan_tags_outer_and_inner(classifier):
    inner = eth(0x0800, ipv4(ELEPHANT.src, ELEPHANT.dst, 6, l4(ELEPHANT.sport,
                                                                ELEPHANT.dport)), vlan=7)
    packet = eth(0x0800, ipv4("192.168.50.1", "192.168.50.2", 17,
                              udp(1, 6081, geneve(inner, 2))), vlan=100)
    assert decided(classifier, packet) == "elephant"


def test_what_is_not_an_elephant_stays_normal(classifier):
    c = classifier
    before = c.counters()
    # the same inner frame in other UDP (VXLAN's port) and in plain TCP
    assert decided(c, outer4(geneve(inner_frame(ELEPHANT)), dport=4789)) == "normal"
    assert decided(c, eth(0x0800, ipv4("192.168.50.1", "192.168.50.2", 6,
                                       l4(1, 6081)))) == "normal"
    # an outer fragment (first, and not first) and inner fragments
    assert decided(c, outer4(geneve(inner_frame(ELEPHANT)), frag=0x2000)) == "normal"
    assert decided(c, outer4(geneve(inner_frame(ELEPHANT)), frag=0x0010)) == "normal"
    assert decided(c, outer4(geneve(inner_frame(ELEPHANT, frag=0x2000)))) == "normal"
    frag6 = eth(0x86DD, ipv6(ELEPHANT6.src, ELEPHANT6.dst, 44, b"\x11\0\0\x01" + b"\0" * 4
                             + l4(ELEPHANT6.sport, ELEPHANT6.dport)))
    assert decided(c, outer4(geneve(frag6))) == "normal"
    # a Geneve version other than 0, truncated packets, ARP
    bad = bytearray(outer4(geneve(inner_frame(ELEPHANT))))
    bad[14 + 20 + 8] |= 0x40
    assert decided(c, bytes(bad)) == "normal"
    assert decided(c, outer4(geneve(inner_frame(ELEPHANT)))[:14 + 20 + 8 + 6]) == "normal"
    assert decided(c, outer4(geneve(inner_frame(ELEPHANT), 4))[:14 + 20 + 8 + 8 + 16 + 20]) \
        == "normal"
    assert decided(c, eth(0x0806, b"\0" * 28)) == "normal"
    after = c.counters()
    assert after["not_geneve"] - before["not_geneve"] == 3
    assert after["fragments"] - before["fragments"] == 4
    assert after["unparsed"] - before["unparsed"] == 3


def test_removed_elephant_is_normal_again(classifier):
    gone = FlowKey(0, 5, 6, "10.0.0.21", "10.0.0.23", 40000, 5201)
    classifier.add(gone)
    assert decided(classifier, outer4(geneve(inner_frame(gone)))) == "elephant"
    classifier.remove(gone)
    assert decided(classifier, outer4(geneve(inner_frame(gone)))) == "normal"


def test_dscp_rewrite_keeps_checksums_right(classifier):
    c = classifier
    try:
        c.set_dscp(10)                  # AF11
        before = c.counters()["dscp_rewritten"]
        packet = outer4(geneve(inner_frame(ELEPHANT), 2), tos=0x03)     # ECN bits set
        _, out = run(c.fd, packet)
        ip = out[14:34]
        assert ip[1] == (10 << 2) | 0x03, "DSCP rewritten, ECN kept"
        assert checksum(ip) == 0, "the outer IPv4 header checksum is still right"
        assert out[34:] == packet[34:], "nothing beyond the outer IP header changed"
        _, out6 = run(c.fd, outer6(geneve(inner_frame(ELEPHANT), 2)))
        tclass = (struct.unpack("!I", out6[14:18])[0] >> 20) & 0xFF
        assert tclass >> 2 == 10
        mouse = outer4(geneve(inner_frame(FlowKey(0, 5, 6, "10.0.0.12", "10.0.0.14", 1, 2))))
        assert run(c.fd, mouse)[1] == mouse, "a mouse's packet is untouched"
        assert c.counters()["dscp_rewritten"] - before == 2
    finally:
        c.set_dscp(None)
    packet = outer4(geneve(inner_frame(ELEPHANT), 2))
    assert run(c.fd, packet)[1] == packet, "without a DSCP, elephants are not rewritten"
