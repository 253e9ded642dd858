"""Per-zone throughput and flow rate, from the cumulative counters a source keeps.

Both sources count per conntrack zone, since they started: bytes and packets
of every flow (mice included) and the flows that began. The bpf source keeps
them in the kernel (per CPU, `zones` in bpf/ovsfoot_ct.c); the ctnetlink source
derives them from its dumps (`EntryCounter`). Each second the agent hands a
snapshot to `ZoneRates`, which keeps `window` seconds of them and answers each
zone's rate over that window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ovsfoot.events import FlowKey


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


class EntryCounter:
    """Per-zone counters from full conntrack dumps, fed entry by entry.

    `add` takes every entry of a dump (its cumulative counters); `finish` ends
    the dump. An entry not in the previous dump is a new flow, and only what an
    entry carried since the previous dump adds to its zone. Entries that were
    already there at the first dump are not counted as new; a flow that began
    and ended between two dumps is missed (conntrack keeps closed TCP entries
    for 2 minutes, so short connections are seen)."""

    def __init__(self):
        self.totals: dict[int, ZoneCounters] = {}
        self._last: dict[FlowKey, tuple[int, int]] = {}     # entry: (bytes, packets)
        self._seen: dict[FlowKey, tuple[int, int]] = {}
        self._first = True

    def add(self, key: FlowKey, nbytes: int, packets: int) -> None:
        prev = self._last.get(key)
        new = prev is None or nbytes < prev[0]      # a later entry with the same tuple
        if new:
            prev = (0, 0)
        self._seen[key] = (nbytes, packets)
        if self._first:
            return                  # a baseline: what came before we started is not counted
        z = self.totals.get(key.zone, ZoneCounters())
        self.totals[key.zone] = ZoneCounters(z.bytes + nbytes - prev[0],
                                             z.packets + packets - prev[1],
                                             z.flows + new)

    def finish(self) -> None:
        self._last, self._seen = self._seen, {}
        self._first = False


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
