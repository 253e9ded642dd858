"""ovs-appctl commands: `ovs-appctl -t ovsfoot CMD`.

Every show command answers text for people, or JSON when given `json`.
"""

from __future__ import annotations

import json
import time
import logging

import ovs.unixctl
import ovs.unixctl.server

from ovsfoot import __version__, contract
from ovsfoot.contract import printable
from ovsfoot.events import Thresholds
from ovsfoot.isolation import IsolationUnavailable

log = logging.getLogger(__name__)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _traffic(fp) -> str:
    return f"{fp.rate.bps / 1e6:.1f} Mbit/s, {fp.rate.flows_per_s:.1f} new flows/s"


# threshold/set NAME=VALUE: the Thresholds field and its type
SETTABLE = {"bytes": ("bytes", int), "seconds": ("seconds", float),
            "idle": ("idle_seconds", float), "heavy-bps": ("heavy_bps", float),
            "sensitive-flows": ("sensitive_flows", float),
            "sensitive-flow-bytes": ("sensitive_flow_bytes", int), "window": ("window", float)}


class Control:
    """Registers the agent's commands and serves them on a unixctl socket."""

    def __init__(self, agent, path: str | None = None):
        self.agent = agent
        err, self.server = ovs.unixctl.server.UnixctlServer.create(path, __version__)
        if err:
            raise OSError(err, f"cannot create the unixctl socket: {err}")
        shows = {
            "footprint/show": self.footprint,
            "elephant/list": self.elephants,
            "zone/map": self.zones,
            "workload/show": self.workloads,
            "threshold/show": self.threshold_show,
            "stats": self.stats,
            "isolate/show": lambda: self.agent.isolator.show(),
        }
        for name, fn in shows.items():
            ovs.unixctl.command_register(name, "[json]", 0, 1, self._show, fn)
        ovs.unixctl.command_register("threshold/set", " ".join(f"[{n}=X]" for n in SETTABLE),
                                     1, len(SETTABLE), self._threshold_set, None)
        ovs.unixctl.command_register("isolate/set", "on|off", 1, 1, self._isolate_set, None)
        ovs.unixctl.command_register("exit", "", 0, 0, self._exit, None)

    def run(self) -> None:
        self.server.run()

    def wait(self, poller) -> None:
        self.server.wait(poller)

    def close(self) -> None:
        self.server.close()

    # -- plumbing ---------------------------------------------------------
    @staticmethod
    def _show(conn, argv, fn):
        if argv and argv[0] != "json":
            conn.reply_error(f"unknown argument {argv[0]!r}: the only one is 'json'")
            return
        data, text = fn()
        conn.reply(json.dumps(data, indent=1, sort_keys=True) if argv else text)

    def _threshold_set(self, conn, argv, _aux):
        t = self.agent.thresholds
        values = {field: getattr(t, field) for field in Thresholds.__slots__}
        try:
            for arg in argv:
                name, sep, value = arg.partition("=")
                if not sep or name not in SETTABLE:
                    raise ValueError(f"bad argument {arg!r}: use "
                                     + ", ".join(f"{n}=X" for n in SETTABLE))
                field, kind = SETTABLE[name]
                try:
                    values[field] = kind(value)
                except ValueError:
                    what = "a whole number" if kind is int else "a number"
                    raise ValueError(f"bad argument {arg!r}: {name} must be {what}") from None
            new = Thresholds(**values)
            new.validate()      # ranges, and nan/inf: before anything changes
        except ValueError as e:
            conn.reply_error(f"thresholds not changed: {e}")
            return
        try:
            self.agent.set_thresholds(new)
        except Exception as e:             # the source could not take them
            log.exception("threshold/set failed")
            conn.reply_error(f"thresholds not changed: {e}")
            return
        conn.reply(self.threshold_show()[1])

    def _isolate_set(self, conn, argv, _aux):
        if argv[0] not in ("on", "off"):
            conn.reply_error(f"unknown argument {argv[0]!r}: use on or off")
            return
        try:
            self.agent.isolator.set(argv[0] == "on")
            self.agent.isolator.sync(self.agent.footprints.active)
        except IsolationUnavailable as e:
            conn.reply_error(f"isolation stays off: {e}")
            return
        conn.reply(self.agent.isolator.show()[1])

    def _exit(self, conn, argv, _aux):
        self.agent.exiting = True
        conn.reply(None)

    # -- the views --------------------------------------------------------
    def footprint(self):
        a = self.agent
        interfaces, node = a.desired()
        ports = a.footprints.by("lport", a.attributor.ports)
        data = {"node": {**a.footprints.node().as_dict(), "class": node[contract.FOOTPRINT],
                         "heavy_ports": int(node[contract.HEAVY_PORTS])},
                "ports": {}}
        data["node"]["sensitive_ports"] = int(node[contract.SENSITIVE_PORTS])
        data["node"]["published"] = {"bps": int(node[contract.BPS]),
                                     "flows_per_s": int(node[contract.FLOWS_PER_S])}
        lines = [f"node: {node[contract.FOOTPRINT]}, {node[contract.ELEPHANTS]} elephants, "
                 f"{node[contract.HEAVY_PORTS]} heavy ports, "
                 f"{node[contract.SENSITIVE_PORTS]} sensitive ports, "
                 f"{_traffic(a.footprints.node())}"]
        for lport, port in sorted(a.attributor.ports.items()):
            fp = ports[lport]
            klass = interfaces[port.interface][contract.FOOTPRINT]
            learned = a.klass(port.workload)
            kv = interfaces[port.interface]
            data["ports"][lport] = {**fp.as_dict(), "class": klass, "learned": learned,
                                    "interface": port.interface, "workload": port.workload,
                                    "published": {"bps": int(kv[contract.BPS]),
                                                  "flows_per_s": int(kv[contract.FLOWS_PER_S])}}
            lines.append(f"  {lport} ({port.interface}, workload {port.workload}): {klass}, "
                         f"{fp.elephants} elephants, {_mb(fp.bytes)}, {_traffic(fp)}"
                         + (f", learned {learned}" if learned else ""))
        return data, "\n".join(lines)

    def elephants(self):
        rows, lines = [], []
        for key, e in self.agent.footprints.active.items():
            at, ev = e.attribution, e.event
            rows.append({"zone": key.zone, "proto": key.proto, "src": key.src,
                         "dst": key.dst, "sport": key.sport, "dport": key.dport,
                         "bytes_orig": ev.bytes_orig, "bytes_reply": ev.bytes_reply,
                         "first_seen_ns": ev.first_seen, "detected_ns": e.detected_at,
                         "port": at.lport, "workload": at.workload, "role": at.role,
                         "router": at.router, "reason": at.reason})
            who = (f"{at.lport} ({at.workload}) {at.role}" if at.attributed
                   else f"unattributed: {at.reason}")
            lines.append(f"{key}: {_mb(ev.bytes)} -> {who}")
        return rows, "\n".join(lines) or "no elephants"

    def zones(self):
        a = self.agent
        data, lines = {}, []
        for zone, o in sorted(a.attributor.zones.current.items()):
            port = a.attributor.ports.get(o.owner)
            kind = "router" if o.router else ("port" if port else "port, no interface here")
            conflicts = a.attributor.conflicts(zone)
            data[str(zone)] = {"owner": o.owner, "kind": kind.split(",")[0],
                               "interface": port.interface if port else None,
                               "workload": port.workload if port else None,
                               "conflicts": conflicts}
            lines.append(printable(f"zone {zone}: {o.owner} ({kind})"
                                   + (f" -> {port.interface}, workload {port.workload}"
                                      if port else "")
                                   + "".join(f"; {c['ignored']} ignored ({c['why']})"
                                             for c in conflicts), 4096))
        return data, "\n".join(lines) or f"no zones on bridge {a.cfg.bridge}"

    def workloads(self):
        a = self.agent
        present = {p.workload for p in a.attributor.ports.values()}
        cluster = a.cluster.classes if a.cluster else {}
        fps = a.footprints.workloads(a.klass, a.thresholds, present | cluster.keys())
        data, lines = {}, []
        for name, fp in sorted(fps.items()):
            r = a.learner.records.get(name)
            data[name] = {**fp.as_dict(), "present": name in present,
                          "cluster": cluster.get(name),
                          "score": round(r.score, 3) if r else 0.0,
                          "sensitive_score": round(r.sensitive_score, 3) if r else 0.0,
                          "elephants_seen": r.elephants if r else 0}
            lines.append(f"{name}: {fp.klass}, {fp.elephants} elephants now, "
                         f"{_traffic(fp)} ({fp.traffic}), learned "
                         f"{fp.learned or '-'}" + (f" (score {r.score:.2f}, {r.elephants} seen)"
                                                   if r else "")
                         + ("" if name in present else ", not on this node"))
        return data, "\n".join(lines) or "no workloads"

    def threshold_show(self):
        t = self.agent.thresholds
        data = {field: getattr(t, field) for field in Thresholds.__slots__}
        return data, " ".join(f"{name}={_number(getattr(t, field))}"
                              for name, (field, _) in SETTABLE.items())

    def stats(self):
        a = self.agent
        data = {"events": a.events, "elephants_detected": a.detector.detected,
                "elephants_ended": a.detector.ended, "elephants_active": len(a.detector.elephants),
                "unattributed": a.unattributed, "transactions": a.publisher.transactions,
                "publish_failures": a.publisher.failures,
                "cluster_transactions": a.cluster.transactions if a.cluster else 0,
                "cluster_failures": a.cluster.failures if a.cluster else 0,
                "uptime_s": round((time.time_ns() - a.started) / 1e9, 1),
                "source": a.source.stats()}
        lines = [f"{k}: {v}" for k, v in data.items() if k != "source"]
        lines += [f"source {k}: {v}" for k, v in data["source"].items()]
        return data, "\n".join(lines)
