"""The kernel event has one definition, bpf/ovsfoot_ct.c's `struct event`: bcc derives the
type BpfSource reads it with (`table.event()`), and the tracer matrix checks in the VM
that bcc's layout is the C struct's. Here, without root or bcc: the struct is one bcc
decodes the same as C lays it out, and BpfSource's decoding of it."""

import ctypes
import ipaddress
import socket

import pytest

from integration.cstruct import c_struct, layout
from ovsfoot.events import FlowEvent, FlowKey, Kind
from ovsfoot.sources.bpf import flow_event, program_file

EVENT = c_struct(program_file(), "event")
OFFSET = 1_700_000_000 * 10**9          # ktime -> epoch


def event(**fields) -> ctypes.Structure:
    """A struct event as the kernel fills it (addresses and ports in network order)."""
    e = EVENT()
    for name, value in fields.items():
        if name in ("src", "dst"):
            getattr(e, name)[:] = ipaddress.ip_address(value).packed.ljust(16, b"\0")
        elif name in ("sport", "dport"):
            setattr(e, name, socket.htons(value))
        elif isinstance(value, tuple):
            getattr(e, name)[:] = value
        else:
            setattr(e, name, value)
    return e


def test_no_holes():
    """Every byte is a field (padding is explicit): no alignment rule of bcc's ctypes type
    or of the compiler can place a field elsewhere."""
    end = 0
    for name, offset, size in layout(EVENT):
        assert offset == end, f"struct event: a hole before {name}"
        end = offset + size
    assert end == ctypes.sizeof(EVENT)


def test_a_struct_bcc_cannot_decode_is_refused(tmp_path):
    c = tmp_path / "x.c"
    c.write_text("struct event {\n\tu64 a;\n\tbool b;   /* bcc has no ctypes type for it */\n};\n")
    with pytest.raises(ValueError, match="'bool b;' is not a u8"):
        c_struct(c, "event")


@pytest.mark.parametrize("family, src, dst, proto, sport, dport, ports", [
    (socket.AF_INET, "10.0.0.1", "10.0.0.2", socket.IPPROTO_TCP, 40000, 5201, (40000, 5201)),
    (socket.AF_INET6, "fd00::1", "fd00::2", socket.IPPROTO_UDP, 53, 65535, (53, 65535)),
    # ICMP: the id and the type and code where the ports are, which are none
    (socket.AF_INET, "10.0.0.1", "10.0.0.2", socket.IPPROTO_ICMP, 0x1234, 0x0800, (0, 0)),
])
def test_decoded(family, src, dst, proto, sport, dport, ports):
    e = event(flow=0xffff888012345678, ts=5 * 10**9, first_seen=3 * 10**9,
              bytes=(10_000_000, 2**40), packets=(7000, 2**33), src=src, dst=dst,
              netns=4026531840, ifindex=7, zone=65535, family=family, sport=sport,
              dport=dport, proto=proto, kind=Kind.ELEPHANT)
    assert flow_event(e, OFFSET) == FlowEvent(
        Kind.ELEPHANT, FlowKey(4026531840, 65535, proto, src, dst, *ports), OFFSET + 5 * 10**9,
        OFFSET + 3 * 10**9, 10_000_000, 2**40, 7000, 2**33, 7)


def test_end_decoded():
    e = event(family=socket.AF_INET, src="10.0.0.2", dst="10.0.0.1", proto=socket.IPPROTO_TCP,
              sport=5201, dport=40000, kind=Kind.END)
    ev = flow_event(e, 0)
    assert ev.kind == Kind.END and (ev.key.sport, ev.key.dport) == (5201, 40000)
