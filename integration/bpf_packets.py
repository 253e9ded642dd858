"""Packets for tc programs, built byte by byte, and BPF_PROG_TEST_RUN to run a loaded
program on them (the isolation classifier's tests and benchmark)."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct

from ovsfoot.events import FlowKey

BPF_PROG_TEST_RUN = 10
SYS_BPF = 321                   # x86_64
TC_ACT_OK = 0


class ProgTestRunAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


def run(fd: int, packet: bytes, repeat: int = 1) -> tuple[int, bytes, int]:
    """Runs the program `repeat` times on `packet`: its return value, the packet after
    it and the kernel's mean time per run (ns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    data_in = ctypes.create_string_buffer(packet, len(packet))
    data_out = ctypes.create_string_buffer(len(packet) + 256)
    attr = ProgTestRunAttr(prog_fd=fd, data_size_in=len(packet), data_size_out=len(data_out),
                    data_in=ctypes.addressof(data_in), data_out=ctypes.addressof(data_out),
                    repeat=repeat)
    if libc.syscall(SYS_BPF, BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr)) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return attr.retval, data_out.raw[:attr.data_size_out], attr.duration


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
