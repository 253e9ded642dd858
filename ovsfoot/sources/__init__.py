"""Flow sources: where flow events come from.

Every source is polled from the agent's single loop: `wait(poller)` registers
a file descriptor or a timer with an `ovs.poller.Poller`, and `run()` returns
the events that are ready without blocking.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ovsfoot.events import FlowEvent, Thresholds
from ovsfoot.rates import ZoneCounters

log = logging.getLogger(__name__)


class SourceUnavailable(Exception):
    """A source cannot run here; the message says why."""


class Source(Protocol):
    name: str

    def clock(self) -> int:
        """Now, in ns since the epoch, on the clock of the events (for idle expiry)."""
        ...

    def run(self) -> list[FlowEvent]: ...

    def zone_counters(self) -> dict[int, ZoneCounters]:
        """Per conntrack zone, cumulative bytes, packets and new flows (mice included)."""
        ...

    def wait(self, poller) -> None: ...
    def set_thresholds(self, thresholds: Thresholds) -> None: ...
    def stats(self) -> dict: ...
    def close(self) -> None: ...


NAMES = ("auto", "bpf", "ctnetlink", "replay")


def open_source(name: str, thresholds: Thresholds, *, netns: str | None = None,
                include_zone0: bool = False, replay_file: str | None = None,
                interval: float = 1.0, speed: float = 1.0) -> Source:
    """Open the source called `name`; "auto" tries bpf, then ctnetlink.

    `netns` names the network namespace of the OVS datapath (None: our own).
    """
    if name == "replay":
        if not replay_file:
            raise SourceUnavailable("the replay source needs --replay FILE")
        from ovsfoot.sources.replay import ReplaySource
        return ReplaySource(replay_file, speed=speed)
    if name in ("bpf", "auto"):
        try:
            from ovsfoot.sources.bpf import BpfSource
            src = BpfSource(thresholds, netns=netns, include_zone0=include_zone0)
        except SourceUnavailable as e:
            if name == "bpf":
                raise
            reason = f"bpf source unavailable ({e})"
        else:
            if name == "auto":
                log.info("--source auto chose bpf: its kernel program is loaded (%s)", src.probe)
            return src
    if name in ("ctnetlink", "auto"):
        from ovsfoot.sources.ctnetlink import CtnetlinkSource
        src = CtnetlinkSource(netns=netns, include_zone0=include_zone0,
                              interval=interval, thresholds=thresholds)
        if name == "auto":
            log.warning("--source auto chose ctnetlink: %s; falling back to ctnetlink, which "
                        "dumps conntrack every %g s (%d entries now)", reason, interval,
                        src.entries_at_start)
        return src
    raise SourceUnavailable(f"unknown source {name!r}: choose one of {', '.join(NAMES)}")
