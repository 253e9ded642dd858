"""Footprints: active elephants per port, per workload and per node."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ovsfoot.attribution import Attribution
from ovsfoot.contract import classify
from ovsfoot.events import FlowEvent, FlowKey, Kind
from ovsfoot.learning import Learner


@dataclass(slots=True)
class ActiveElephant:
    event: FlowEvent
    attribution: Attribution
    detected_at: int


@dataclass(slots=True)
class Footprint:
    elephants: int = 0
    bytes: int = 0
    learned: str | None = None
    sources: int = 0
    sinks: int = 0

    @property
    def klass(self) -> str:
        return classify(self.elephants, self.learned)

    def as_dict(self) -> dict:
        return {"class": self.klass, "elephants": self.elephants, "bytes": self.bytes,
                "sources": self.sources, "sinks": self.sinks, "learned": self.learned}


class Footprints:
    def __init__(self, learner: Learner):
        self.learner = learner
        self.active: dict[FlowKey, ActiveElephant] = {}
        self.generation = 0        # bumps on every change publishers care about

    def apply(self, ev: FlowEvent, attribution: Attribution | None) -> None:
        """Takes an elephant event from the detector (with its attribution on ELEPHANT)."""
        if ev.kind == Kind.ELEPHANT:
            self.active[ev.key] = ActiveElephant(ev, attribution, ev.ts)
            if attribution.workload:     # counted once per conntrack entry
                self.learner.elephant(attribution.workload, ev.ts, ev.key, ev.first_seen)
        elif ev.kind == Kind.END:
            if self.active.pop(ev.key, None) is None:
                return
        elif ev.key in self.active:
            self.active[ev.key].event = ev
            return                  # byte counts alone do not change what is published
        self.generation += 1

    def by(self, attr: str, names=()) -> dict[str, Footprint]:
        """Footprints keyed by the attribution's `attr` ("lport" or "workload").

        `names` are included even without elephants (light, or learned heavy).
        """
        out = {n: Footprint() for n in names}
        for a in self.active.values():
            name = getattr(a.attribution, attr)
            if name is None:
                continue
            fp = out.setdefault(name, Footprint())
            fp.elephants += 1
            fp.bytes += a.event.bytes
            fp.sources += a.attribution.role == "source"
            fp.sinks += a.attribution.role == "sink"
        return out

    def workloads(self, learned: Callable[[str], str | None], names=()) -> dict[str, Footprint]:
        """Per workload, with the class `learned` gives it (here or on other chassis)."""
        out = self.by("workload", list(names) + list(self.learner.records))
        for name, fp in out.items():
            fp.learned = learned(name)
        return out

    def node(self) -> Footprint:
        fp = Footprint(elephants=len(self.active),
                       bytes=sum(a.event.bytes for a in self.active.values()))
        for a in self.active.values():
            fp.sources += a.attribution.role == "source"
            fp.sinks += a.attribution.role == "sink"
        return fp
