"""ctmsg's parser on a real ctnetlink dump, recorded from the kernel (Linux 6.18:
IPv4 and IPv6, TCP and UDP, zones 0, 5 and 7, several TCP states), against what
conntrack-tools printed for the same table at the same moment (`conntrack -L -o
extended`, tests/data/ctnetlink-dump.txt)."""

import re
from pathlib import Path

import pytest

from ovsfoot.sources import ctmsg

DATA = Path(__file__).resolve().parents[1] / "data"
STATES = {"SYN_SENT": 1, "ESTABLISHED": 3, "TIME_WAIT": 7}
NETNS = 4026531840


def conntrack_tools() -> dict:
    """(proto, src, dst, sport, dport, zone) -> (bytes, packets per direction, state)."""
    out = {}
    for line in (DATA / "ctnetlink-dump.txt").read_text().splitlines():
        f = line.split()
        kv = re.findall(r"(\w+)=(\S+)", line)
        first = dict(kv[:6])
        reply = dict(kv[6:12])
        zone = int(dict(kv).get("zone", 0))
        state = STATES.get(f[5]) if f[2] == "tcp" else None
        key = (int(f[3]), first["src"], first["dst"], int(first["sport"]),
               int(first["dport"]), zone)
        out[key] = (int(first["bytes"]), int(reply["bytes"]), int(first["packets"]),
                    int(reply["packets"]), state)
    return out


def parsed(min_bytes: int = 0, follow=()) -> list[ctmsg.CtEntry]:
    entries: list[ctmsg.CtEntry] = []
    n, done = ctmsg.scan((DATA / "ctnetlink-dump.bin").read_bytes(), min_bytes, follow, entries)
    assert done and n == len(conntrack_tools())
    return entries


def test_every_entry_as_conntrack_tools_shows_it():
    got = {}
    for e in parsed():
        k = e.key(NETNS)
        assert k.netns == NETNS and e.start() > 1.7e18     # ns since the epoch
        got[(k.proto, k.src, k.dst, k.sport, k.dport, k.zone)] = (
            e.bytes_orig, e.bytes_reply, e.packets_orig, e.packets_reply, e.tcp_state())
    assert got == conntrack_tools()


def test_only_entries_over_the_threshold_or_followed():
    big = parsed(min_bytes=1_000_000)
    assert big and all(e.bytes >= 1_000_000 for e in big)
    assert all(e.closing() for e in big)                    # TIME_WAIT: these flows ended
    small = [e for e in parsed() if e.bytes < 1_000_000]
    followed = parsed(min_bytes=1_000_000, follow={small[0].id})
    assert {e.id for e in followed} == {e.id for e in big} | {small[0].id}


def test_a_get_request_carries_the_tuple_and_zone():
    e = next(e for e in parsed() if e.zone == 5)
    req = ctmsg.get_request(9, 2, e.tuple_attr(), e.zone)
    assert len(req) % 4 == 0 and int.from_bytes(req[:4], "little") == len(req)
    assert req[8:12] == (9).to_bytes(4, "little") and req[16] == 2
    # its attributes parse back to the same entry
    again = ctmsg.CtEntry(e.id, e.zone, 0, 0, 0, 0, req, 20, len(req))
    assert again.key(NETNS) == e.key(NETNS)


def test_an_error_answer_raises_or_is_kept():
    """The kernel's answer (recorded) to request 7: a GET of the zone-7 entry's tuple in
    zone 6, where there is none."""
    err = (DATA / "ctnetlink-enoent.bin").read_bytes()
    with pytest.raises(ctmsg.DumpError, match="ENOENT"):
        ctmsg.scan(err, 0, (), [])
    errors = []
    ctmsg.scan(err, 0, (), [], errors=errors)
    assert errors == [(7, 2)]
