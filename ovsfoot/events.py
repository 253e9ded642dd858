"""Typed flow events: what every source produces and the pipeline consumes."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class Kind(enum.IntEnum):
    """What a flow event says about its flow."""

    NEW = 0       # the flow was first seen
    UPDATE = 1    # cumulative counters changed
    ELEPHANT = 2  # the flow crossed the thresholds (decided in the kernel)
    END = 3       # the conntrack entry went away


@dataclass(frozen=True, slots=True)
class FlowKey:
    """A conntrack entry's identity: its original-direction tuple in one zone."""

    netns: int          # inode of the network namespace whose conntrack holds it
    zone: int
    proto: int          # IP protocol number
    src: str            # original-direction source address
    dst: str
    sport: int
    dport: int

    def __str__(self) -> str:
        return (f"zone={self.zone} proto={self.proto} "
                f"{self.src}:{self.sport}->{self.dst}:{self.dport}")


@dataclass(slots=True)
class FlowEvent:
    """One observation of a flow, with cumulative counters per direction.

    `ts` is when it was observed and `first_seen` when the flow started, both
    in nanoseconds since the epoch, so that replayed events detect the same
    way as live ones.
    """

    kind: Kind
    key: FlowKey
    ts: int
    first_seen: int
    bytes_orig: int = 0
    bytes_reply: int = 0
    packets_orig: int = 0
    packets_reply: int = 0
    ifindex: int = 0    # interface the flow was seen on, 0 if unknown

    @property
    def bytes(self) -> int:
        return self.bytes_orig + self.bytes_reply

    def to_list(self) -> list:
        """A compact msgpack-friendly form (see `from_list`)."""
        k = self.key
        return [int(self.kind), k.netns, k.zone, k.proto, k.src, k.dst,
                k.sport, k.dport, self.ts, self.first_seen, self.bytes_orig,
                self.bytes_reply, self.packets_orig, self.packets_reply,
                self.ifindex]

    @classmethod
    def from_list(cls, v: list) -> "FlowEvent":
        """Inverse of `to_list`; raises ValueError on a malformed record."""
        if not isinstance(v, (list, tuple)) or len(v) != 15:
            raise ValueError(f"flow event record must be a list of 15 items, got {v!r:.80}")
        try:
            key = FlowKey(int(v[1]), int(v[2]), int(v[3]), str(v[4]), str(v[5]),
                          int(v[6]), int(v[7]))
            return cls(Kind(v[0]), key, *(int(x) for x in v[8:15]))
        except (TypeError, ValueError) as e:
            raise ValueError(f"malformed flow event record {v!r:.80}: {e}") from None


# What the thresholds may be: the eBPF program's map holds them as u64 bytes and
# u64 nanoseconds, and every source and the detector take the same.
MAX_BYTES = 2**64 - 1
MAX_SECONDS = 1e10              # 317 years: 1e19 ns < 2**64


def check_number(name: str, value, low: float, high: float, *, whole: bool = False,
                 low_open: bool = False) -> None:
    """ValueError naming `name` and its allowed range unless `value` is a finite
    number (a whole one if `whole`) from `low` (excluded if `low_open`) to `high`."""
    fmt = str if whole else (lambda x: f"{x:g}")
    rng = (f"> {fmt(low)} and <= {fmt(high)}" if low_open
           else f"from {fmt(low)} to {fmt(high)}")
    ok = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool) \
        and low <= value <= high and math.isfinite(value) and not (low_open and value == low)
    if not ok:
        got = repr(value)
        got = got if len(got) <= 30 else f"{got[:12]}... ({len(got)} characters)"
        raise ValueError(f"{name} must be {'a whole' if whole else 'a finite'} number "
                         f"{rng}, not {got}")


@dataclass(slots=True)
class Thresholds:
    """When a flow is an elephant: at least `bytes` carried over `seconds` lived.
    When a port's traffic, averaged over `window` seconds, is heavy (above
    `heavy_bps`) or sensitive (at least `sensitive_flows` new flows per second,
    of at most `sensitive_flow_bytes` each): see contract.traffic_class."""

    bytes: int = 10_000_000
    seconds: float = 1.0
    idle_seconds: float = 30.0   # an elephant that carries nothing this long has ended
    heavy_bps: float = 200e6
    sensitive_flows: float = 50.0
    sensitive_flow_bytes: int = 100_000
    window: float = 10.0

    RATE_FIELDS = ("heavy_bps", "sensitive_flows", "sensitive_flow_bytes", "window")

    def validate(self) -> None:
        """ValueError naming each value out of its range (non-finite ones included)."""
        problems = []
        for name, value, low, high, whole, low_open in (
                ("bytes", self.bytes, 1, MAX_BYTES, True, False),
                ("seconds", self.seconds, 0, MAX_SECONDS, False, False),
                ("idle seconds", self.idle_seconds, 0, MAX_SECONDS, False, True),
                ("heavy bps", self.heavy_bps, 0, 1e15, False, True),
                ("sensitive flows", self.sensitive_flows, 0, 1e9, False, True),
                ("sensitive flow bytes", self.sensitive_flow_bytes, 1, MAX_BYTES, True, False),
                ("window", self.window, 1, 3600, False, False)):
            try:
                check_number(name, value, low, high, whole=whole, low_open=low_open)
            except ValueError as e:
                problems.append(str(e))
        if problems:
            raise ValueError("; ".join(problems))
