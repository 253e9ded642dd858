"""Elephant detection: turns a source's flow events into elephant events.

A flow is an elephant once it has carried at least `thresholds.bytes` and
lived at least `thresholds.seconds`. The detector keeps state for elephants
only; it emits ELEPHANT once per flow, UPDATE as an elephant's counters grow,
and END when its conntrack entry goes away or it stays idle too long.
Events that a kernel program already classified (ELEPHANT) are taken as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from ovsfoot.events import FlowEvent, FlowKey, Kind, Thresholds


@dataclass(slots=True)
class Elephant:
    event: FlowEvent        # latest counters
    detected_at: int        # ns since the epoch
    last_change: int        # ns since the epoch, when its bytes last grew


class Detector:
    def __init__(self, thresholds: Thresholds):
        self.thresholds = thresholds
        self.elephants: dict[FlowKey, Elephant] = {}
        # Elephants ended for idleness whose conntrack entry is still there, with
        # their bytes then: they come back only if they carry more.
        self._idle: dict[FlowKey, int] = {}
        self.detected = 0
        self.ended = 0

    def is_elephant(self, ev: FlowEvent) -> bool:
        t = self.thresholds
        return ev.bytes >= t.bytes and ev.ts - ev.first_seen >= t.seconds * 1e9

    def feed(self, ev: FlowEvent) -> FlowEvent | None:
        """Returns the elephant event `ev` causes, if any."""
        e = self.elephants.get(ev.key)
        if ev.kind == Kind.END:
            self._idle.pop(ev.key, None)
            if e is None:
                return None
            del self.elephants[ev.key]
            self.ended += 1
            return _with(e.event, Kind.END, ev.ts, ev)
        if e is not None:
            if ev.bytes != e.event.bytes:
                e.last_change = ev.ts
            e.event = _with(ev, Kind.UPDATE, ev.ts)
            return e.event
        if self._idle.get(ev.key, -1) >= ev.bytes:
            return None             # ended idle, and still has not carried anything
        if ev.kind == Kind.ELEPHANT or self.is_elephant(ev):
            self._idle.pop(ev.key, None)
            out = _with(ev, Kind.ELEPHANT, ev.ts)
            self.elephants[ev.key] = Elephant(out, ev.ts, ev.ts)
            self.detected += 1
            return out
        return None

    def expire(self, now: int) -> list[FlowEvent]:
        """END events for elephants idle longer than `thresholds.idle_seconds`."""
        limit = self.thresholds.idle_seconds * 1e9
        gone = [k for k, e in self.elephants.items() if now - e.last_change > limit]
        out = [self.feed(FlowEvent(Kind.END, k, now, 0)) for k in gone]
        for ev in out:
            self._idle[ev.key] = ev.bytes
        return out

    def next_expiry(self) -> int | None:
        """When the next idle elephant expires (ns since the epoch), if any."""
        if not self.elephants:
            return None
        oldest = min(e.last_change for e in self.elephants.values())
        return oldest + int(self.thresholds.idle_seconds * 1e9)


def _with(ev: FlowEvent, kind: Kind, ts: int, counters: FlowEvent | None = None) -> FlowEvent:
    """A copy of `ev` with another kind and time; counters from `counters` if it has any."""
    c = counters if counters is not None and counters.bytes else ev
    return FlowEvent(kind, ev.key, ts, ev.first_seen, c.bytes_orig, c.bytes_reply,
                     c.packets_orig, c.packets_reply, ev.ifindex or c.ifindex)
