"""Recorded flow events: `ovsfoot record` writes them, the replay source reads them.

The file is a msgpack stream: a header map, then one list per event
(`FlowEvent.to_list`). Replay keeps the recorded pacing scaled by `speed`
(0: as fast as possible), so detection, tests and benchmarks are deterministic.
"""

from __future__ import annotations

import logging
import time

import msgpack

from ovsfoot.events import FlowEvent
from ovsfoot.sources import SourceUnavailable

log = logging.getLogger(__name__)

MAGIC = "ovsfoot-events"
VERSION = 1


class Recorder:
    """Appends flow events to a msgpack file."""

    def __init__(self, path: str, source_name: str):
        self._f = open(path, "wb")
        self._pack = msgpack.Packer()
        self._f.write(self._pack.pack({"magic": MAGIC, "version": VERSION,
                                       "source": source_name}))
        self.count = 0

    def write(self, events: list[FlowEvent]) -> None:
        for ev in events:
            self._f.write(self._pack.pack(ev.to_list()))
        self.count += len(events)
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class ReplaySource:
    """Plays back a recorded file; stops, with an error logged, at the first bad record."""

    name = "replay"

    def __init__(self, path: str, speed: float = 1.0, batch: int = 4096):
        try:
            self._f = open(path, "rb")
        except OSError as e:
            raise SourceUnavailable(f"cannot read replay file: {e}") from None
        self.path, self.speed, self.batch = path, speed, batch
        self._unpacker = msgpack.Unpacker(self._f, raw=False, max_buffer_size=64 << 20)
        header = self._next_record()
        if not (isinstance(header, dict) and header.get("magic") == MAGIC):
            raise SourceUnavailable(f"{path} is not an ovsfoot event recording "
                                    f"(record it with `ovsfoot record`)")
        self.recorded_by = header.get("source", "?")
        self.done = False
        self.events = 0
        self.errors = 0
        self._pending: FlowEvent | None = None
        self._now = 0
        self._t0: tuple[float, int] | None = None    # (monotonic at start, first event ts)

    def _next_record(self):
        try:
            return next(self._unpacker)
        except StopIteration:
            return None
        except (msgpack.UnpackException, ValueError) as e:
            raise ValueError(f"undecodable data: {e}") from None

    def _next_event(self) -> FlowEvent | None:
        if self._pending is not None:
            ev, self._pending = self._pending, None
            return ev
        if self.done:
            return None
        try:
            rec = self._next_record()
            if rec is not None:
                return FlowEvent.from_list(rec)
        except ValueError as e:
            self.errors += 1
            log.error("%s: stopping replay after %d events: %s", self.path, self.events, e)
        self.done = True
        return None

    def _due(self, ev: FlowEvent) -> bool:
        if not self.speed:
            return True
        if self._t0 is None:
            self._t0 = (time.monotonic(), ev.ts)
        return (ev.ts - self._t0[1]) / 1e9 / self.speed <= time.monotonic() - self._t0[0]

    def run(self) -> list[FlowEvent]:
        out = []
        while len(out) < self.batch:
            ev = self._next_event()
            if ev is None:
                break
            if not self._due(ev):
                self._pending = ev
                break
            out.append(ev)
            self._now = ev.ts
            self.events += 1
        return out

    @property
    def finished(self) -> bool:
        """Every recorded event has been returned by run()."""
        return self.done and self._pending is None

    def wait(self, poller) -> None:
        if self.finished:
            return
        if self._pending is None or not self.speed:
            poller.immediate_wake()
            return
        start, ts0 = self._t0
        due = start + (self._pending.ts - ts0) / 1e9 / self.speed
        poller.timer_wait(max(0, int((due - time.monotonic()) * 1000)))

    def clock(self) -> int:
        """The recording's time: that of the last event played."""
        return self._now

    def set_thresholds(self, thresholds) -> None:
        pass

    def zone_counters(self) -> dict:
        """None: a recording holds elephant events only, so no port has a rate."""
        return {}

    def stats(self) -> dict:
        return {"source": self.name, "file": self.path, "recorded_by": self.recorded_by,
                "events": self.events, "errors": self.errors, "finished": self.done}

    def close(self) -> None:
        self._f.close()
