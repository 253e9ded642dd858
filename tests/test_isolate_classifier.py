"""The isolation classifier's parsing, on crafted packets, through BPF_PROG_TEST_RUN.

tc programs load on this host's kernel too (it cannot trace conntrack, but it
runs classifiers), so bpf/ovsfoot_isolate.c runs here for real on packets
built byte by byte: outer IPv4 and IPv6, Geneve options of several lengths,
inner IPv4 and IPv6, other UDP, outer and inner fragments. What the program
decided is read back from its own maps (the band counters, the elephant's
packet count) and, for DSCP, from the packet it returns.
"""

from __future__ import annotations

import os
import struct

import pytest

from integration.bpf_packets import (TC_ACT_OK, checksum, eth, geneve, inner_frame, ipv4,
                                     ipv6, l4, outer4, outer6, run, udp)
from ovsfoot.events import FlowKey
from ovsfoot.isolation import Classifier

ELEPHANT = FlowKey(0, 5, 6, "10.0.0.11", "10.0.0.13", 40000, 5201)
ELEPHANT6 = FlowKey(0, 5, 17, "fd00::11", "fd00::13", 40001, 5202)


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
    ret, _, _ = run(c.fd, packet)
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
        _, out, _ = run(c.fd, packet)
        ip = out[14:34]
        assert ip[1] == (10 << 2) | 0x03, "DSCP rewritten, ECN kept"
        assert checksum(ip) == 0, "the outer IPv4 header checksum is still right"
        assert out[34:] == packet[34:], "nothing beyond the outer IP header changed"
        _, out6, _ = run(c.fd, outer6(geneve(inner_frame(ELEPHANT), 2)))
        tclass = (struct.unpack("!I", out6[14:18])[0] >> 20) & 0xFF
        assert tclass >> 2 == 10
        mouse = outer4(geneve(inner_frame(FlowKey(0, 5, 6, "10.0.0.12", "10.0.0.14", 1, 2))))
        assert run(c.fd, mouse)[1] == mouse, "a mouse's packet is untouched"
        assert c.counters()["dscp_rewritten"] - before == 2
    finally:
        c.set_dscp(None)
    packet = outer4(geneve(inner_frame(ELEPHANT), 2))
    assert run(c.fd, packet)[1] == packet, "without a DSCP, elephants are not rewritten"
