"""Per-zone throughput and flow rate, from the cumulative counters a source keeps.

Both sources count per conntrack zone, since they started: bytes and packets
of every flow (mice included) and the flows that began. The bpf source keeps
them in the kernel (per CPU, `zones` in bpf/ovsfoot_ct.c); the ctnetlink source
derives them from its dumps and DESTROY events (`DumpCounter`). Each second the agent hands a
snapshot to `ZoneRates`, which keeps `window` seconds of them and answers each
zone's rate over that window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field



@dataclass(frozen=True, slots=True)
class ZoneCounters:
    """A zone's counters since the source started."""

    bytes: int = 0
    packets: int = 0
    flows: int = 0          # flows that began (conntrack entries confirmed)


@dataclass(frozen=True, slots=True)
class Rate:
    """A zone's or port's traffic, averaged over `seconds`."""

    bps: float = 0.0            # bit/s, both directions
    flows_per_s: float = 0.0    # new flows per second
    seconds: float = 0.0        # how much history the average covers

    @property
    def bytes_per_flow(self) -> float:
        """Bytes per new flow: small for RPC (many short flows), large for bulk."""
        return self.bps / 8 / self.flows_per_s if self.flows_per_s else float("inf")

    def __add__(self, other: "Rate") -> "Rate":
        return Rate(self.bps + other.bps, self.flows_per_s + other.flows_per_s,
                    min(self.seconds, other.seconds) if self.seconds and other.seconds
                    else self.seconds or other.seconds)


class DumpCounter:
    """Per-zone counters from conntrack dumps, without memory per entry.

    Each dump gives every zone's sums over its live entries (bytes, packets,
    entries: `ctmsg.scan`'s `zones`), and DESTROY events the final counters of
    the entries deleted in between (`destroyed`). What a zone carried between two
    dumps is then the change of its sums plus what its deleted entries carried;
    its new flows, the change of its entry count plus its deletions. So flows
    that begin and end between two dumps count too. The first dump is the
    baseline. A DESTROY event lost (nf_conntrack_events off, or the socket
    overflowed) makes a change negative: that step then counts 0; an entry deleted
    while a long dump runs, after the dump passed it, counts twice in that step."""

    def __init__(self):
        self.totals: dict[int, ZoneCounters] = {}
        self._last: dict[int, list[int]] | None = None
        self._gone: dict[int, list[int]] = {}

    def destroyed(self) -> dict[int, list[int]]:
        """Where DESTROY events add [bytes, packets, entries] per zone."""
        return self._gone

    def dump(self, sums: dict[int, list[int]]) -> None:
        """A whole dump's [bytes, packets, entries] per zone."""
        if self._last is not None:
            for zone in sums.keys() | self._last.keys():
                cur, prev = sums.get(zone, _NONE), self._last.get(zone, _NONE)
                gone = self._gone.get(zone, _NONE)
                b, p, n = (max(0, c - q + g) for c, q, g in zip(cur, prev, gone))
                z = self.totals.get(zone, ZoneCounters())
                self.totals[zone] = ZoneCounters(z.bytes + b, z.packets + p, z.flows + n)
        self._last, self._gone = sums, {}


_NONE = (0, 0, 0)


@dataclass(slots=True)
class ZoneRates:
    """Rates per zone from snapshots of cumulative counters, over `window` seconds."""

    window: float = 10.0
    _samples: deque = field(default_factory=deque)    # (ns, {zone: ZoneCounters})

    def update(self, counters: dict[int, ZoneCounters], now: int) -> None:
        self._samples.append((now, dict(counters)))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window * 1e9:
            self._samples.popleft()

    def rate(self, zone: int) -> Rate:
        """The zone's average rate over the window (less while history is short);
        a counter that went back (the source restarted) restarts its history."""
        if len(self._samples) < 2:
            return Rate()
        t1, last = self._samples[-1]
        end = last.get(zone)
        if end is None:
            return Rate()
        for t0, first in self._samples:
            start = first.get(zone, ZoneCounters())
            if t0 < t1 and start.bytes <= end.bytes and start.flows <= end.flows:
                s = (t1 - t0) / 1e9
                return Rate((end.bytes - start.bytes) * 8 / s, (end.flows - start.flows) / s, s)
        return Rate()

    def zones(self) -> set[int]:
        return set(self._samples[-1][1]) if self._samples else set()
