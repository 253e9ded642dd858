"""Footprints: active elephants and traffic (throughput, flow rate) per port,
per workload and per node."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ovsfoot.attribution import Attribution
from ovsfoot.contract import LIGHT, Traffic, classify, traffic_class
from ovsfoot.events import FlowEvent, FlowKey, Kind, Thresholds
from ovsfoot.learning import Learner
from ovsfoot.rates import Rate


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
    rate: Rate = Rate()             # over the rate window
    traffic: str = LIGHT            # the class its traffic alone gives

    @property
    def klass(self) -> str:
        return classify(self.elephants, self.learned, traffic=self.traffic)

    def as_dict(self) -> dict:
        return {"class": self.klass, "elephants": self.elephants, "bytes": self.bytes,
                "sources": self.sources, "sinks": self.sinks, "learned": self.learned,
                "bps": round(self.rate.bps), "flows_per_s": round(self.rate.flows_per_s, 1),
                "traffic": self.traffic}


class Footprints:
    def __init__(self, learner: Learner):
        self.learner = learner
        self.active: dict[FlowKey, ActiveElephant] = {}
        self.generation = 0        # bumps on every change publishers care about
        self.rates: dict[str, dict[str, Rate]] = {"lport": {}, "workload": {}}
        self.traffic: dict[str, Traffic] = {}      # per lport, as published
        self.node_traffic = Traffic()

    def set_rates(self, ports: dict[str, Rate], workloads: dict[str, str],
                  t: Thresholds) -> None:
        """The rate of each bound port (`workloads`: each port's workload), each
        second; bumps the generation only when a published bucket or class moves."""
        by_workload: dict[str, Rate] = {}
        for lport, rate in ports.items():
            w = workloads[lport]
            by_workload[w] = by_workload[w] + rate if w in by_workload else rate
        self.rates = {"lport": ports, "workload": by_workload}
        traffic = {lp: self.traffic.get(lp, Traffic()).next(r, t) for lp, r in ports.items()}
        node = self.node_traffic.next(sum(ports.values(), Rate()), t)
        if traffic != self.traffic or node != self.node_traffic:
            self.generation += 1
        self.traffic, self.node_traffic = traffic, node

    def workload_traffic(self, t: Thresholds) -> dict[str, str]:
        """The class each workload's traffic on this node gives (its ports summed)."""
        return {w: traffic_class(r, t) for w, r in self.rates["workload"].items()}

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
        for name, rate in self.rates[attr].items():
            out.setdefault(name, Footprint()).rate = rate
        if attr == "lport":
            for name, traffic in self.traffic.items():
                out[name].traffic = traffic.klass
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

    def workloads(self, learned: Callable[[str], str | None], t: Thresholds,
                  names=()) -> dict[str, Footprint]:
        """Per workload, with the class `learned` gives it (here or on other chassis)."""
        out = self.by("workload", list(names) + list(self.learner.records))
        traffic = self.workload_traffic(t)
        for name, fp in out.items():
            fp.learned = learned(name)
            fp.traffic = traffic.get(name, LIGHT)
        return out

    def node(self) -> Footprint:
        fp = Footprint(elephants=len(self.active),
                       bytes=sum(a.event.bytes for a in self.active.values()),
                       rate=sum(self.rates["lport"].values(), Rate()))
        for a in self.active.values():
            fp.sources += a.attribution.role == "source"
            fp.sinks += a.attribution.role == "sink"
        return fp
