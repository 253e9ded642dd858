"""The seed's experiment: mice p99 (a) alone, (b) beside an elephant, (c) on the
node the scheduler extender ranks best, (d) beside the elephant with isolation on hv1.

The elephant runs through rows (b), (d) and (c); (d) and (b) are measured twice,
alternated, so that drift (the emulated VM slows down as it warms) does not
favour either. hv1's agent runs with `--isolate` (its classifier is compiled
at start) and is switched off right away; `isolate/set on|off` then switches it
around each (d). The elephant's throughput is sampled at its sink (pod3's
received bytes, every half second) for the whole experiment, and each row's
mean is reported next to its mice p99.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from integration.sandbox import sh
from ovsfoot.background import Background

if TYPE_CHECKING:
    from integration.lab_scenario import Lab

# The seed's measurement (LPC 2019): sockperf p99 of mice, in ms.
SEED_P99_MS = {"alone": 0.28, "beside the elephant": 14.04}
BOTTLENECK = ["tbf", "rate", "20mbit", "burst", "16kb", "latency", "100ms"]   # a FIFO
# Row (d): the elephant's throughput sampled every SAMPLE_S, the rows in this order.
SAMPLE_S = 0.5
ROUNDS = ("d", "b", "d", "b")          # the first (d) right after the detection


def experiment_phase(lab: Lab) -> None:
    """The seed's experiment: mice p99 (a) alone, (b) beside an elephant on the
    same chassis and tunnel, (c) on the node the scheduler extender ranks best
    given the footprints ovsfoot published, and (d) beside the elephant with
    isolation on hv1 (Rows, below), alternated with (b). A rate
    limit with a FIFO queue on hv1's underlay makes queueing, not emulation,
    dominate."""
    r = lab.report
    sh("ip", "netns", "exec", "hv1", "tc", "qdisc", "replace", "dev", "ul", "root",
       *BOTTLENECK)     # ul: the chassis' end of the underlay (provision/underlay.sh)
    r.event("bottleneck on hv1's underlay", qdisc=" ".join(BOTTLENECK))
    cdf: dict[str, list[float]] = {}

    def measure(label: str, client: str = "pod2") -> float | None:
        log = lab.work / f"mice-{len(cdf)}.csv"
        ms = lab.traffic.mice_p99(client, log=log)
        cdf.setdefault(label, []).extend(round_trips(log))
        return ms
    p99 = {"alone": measure("(a) alone")}
    r.event("mice alone", p99_ms=p99["alone"], path="pod2@hv1 -> pod4@hv2")
    iso = Rows(lab)
    elephant = lab.traffic.iperf(600, 5205, rate="100M")     # killed when the phase ends
    iso.started(5205)
    for row in ROUNDS:
        label = {"b": "(b) beside the elephant", "d": "(d) isolated on hv1"}[row]
        iso.measure(row, lambda: measure(label))
    p99["beside the elephant"] = median(iso.p99["b"])
    r.event("mice beside the elephant", p99_ms=p99["beside the elephant"],
            rounds=iso.p99["b"])
    best, scores = lab.observer.extender_pick(["hv1", "hv3"])
    r.event("scheduler extender ranks nodes for a light mice pod", scores=json.dumps(scores),
            best=best)
    client = next(p for p, v in lab.nodes.pods.items() if v["chassis"] == best
                  and v["workload"] == "lab/mice-client")
    iso.mark("placement", f"mice placed on {best}")
    p99["placed by ovsfoot"] = measure("(c) placed by ovsfoot", client)
    r.event("mice placed by ovsfoot", p99_ms=p99["placed by ovsfoot"], node=best)
    p99["isolated on hv1"] = median(iso.p99["d"])
    r.event("mice beside the elephant, isolated on hv1", p99_ms=p99["isolated on hv1"],
            rounds=iso.p99["d"])
    elephant.kill()
    lab.traffic.kill()
    iso.stop()
    sh("ip", "netns", "exec", "hv1", "tc", "qdisc", "del", "dev", "ul", "root", check=False)
    r.data["experiment"] = {"p99_ms": p99, "seed_p99_ms": SEED_P99_MS, "placed_on": best,
                            "scores": scores, "bottleneck": " ".join(BOTTLENECK),
                            "latency_cdf_ms": {k: sorted(v) for k, v in cdf.items()},
                            **iso.report()}
    a, b, c = (p99[k] for k in ("alone", "beside the elephant", "placed by ovsfoot"))
    r.check("experiment: mice p99 measured three times", None not in (a, b, c), json.dumps(p99))
    if None in (a, b, c):
        return
    r.check("experiment: extender places the light pod away from the heavy node",
            best == "hv3", json.dumps(scores))
    r.check("experiment: (b) beside the elephant is clearly above (a) alone", b > 3 * a,
            f"{b} ms vs {a} ms")
    # Near: placing the pod took back at least two thirds of what the elephant cost.
    # (Under emulation the elephant also takes CPU from every pod in the VM.)
    r.check("experiment: (c) placed by ovsfoot is back near (a)", c - a < (b - a) / 3,
            f"{c} ms vs {a} ms alone, {b} ms beside the elephant")
    r.data["experiment"]["goals"] = iso.judge(a)


class Throughput(Background):
    """Mbit/s received on `ifname` in network namespace `netns`, sampled in a thread.

    The thread makes its own netlink socket in `netns`: pyroute2 (0.9) gives each
    thread that uses an IPRoute a socket of its own, made in the namespace the
    thread is in."""

    def __init__(self, netns: str, ifname: str = "eth0"):
        self.netns, self.ifname = netns, ifname
        self.index = self._lookup()
        self.samples: list[tuple[float, float]] = []      # (epoch s, Mbit/s)
        self.error: str | None = None                     # why sampling stopped early
        super().__init__("throughput")

    def _open(self):
        from pyroute2 import IPRoute

        from ovsfoot import netns as ns
        with ns.entered(self.netns):
            return IPRoute()

    def _lookup(self) -> int:
        ipr = self._open()
        try:
            found = ipr.link_lookup(ifname=self.ifname)
        finally:
            ipr.close()
        if not found:
            raise RuntimeError(f"no interface {self.ifname!r} in network namespace {self.netns}")
        return found[0]

    def loop(self) -> None:
        try:
            ipr = self._open()
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            return

        def rx() -> int:
            return ipr.get_links(self.index)[0].get_attr("IFLA_STATS64")["rx_bytes"]
        try:
            last_t, last = time.time(), rx()
            while not self.stopping.wait(SAMPLE_S):
                t, n = time.time(), rx()
                self.samples.append((t, (n - last) * 8 / (t - last_t) / 1e6))
                last_t, last = t, n
        except Exception as e:      # said in the report: the rows lack their throughput
            self.error = f"{type(e).__name__}: {e}"
        finally:
            ipr.close()

    def mean(self, t0: float, t1: float) -> float | None:
        inside = [m for t, m in self.samples if t0 < t <= t1]
        return round(sum(inside) / len(inside), 1) if inside else None


def isolate(lab, on: bool) -> dict:
    """Switches hv1's isolation; returns its `isolate/show json`."""
    lab.nodes.agents["hv1"].appctl("isolate/set", "on" if on else "off")
    state = lab.nodes.agents["hv1"].json("isolate/show")
    lab.report.event(f"hv1 isolation switched {'on' if on else 'off'}", qdisc=state.get("qdisc"),
                     reason=state.get("reason") or None)
    return state


def round_trips(log: Path) -> list[float]:
    """The latencies (ms, sockperf's: half the round trip) of a sockperf --full-log."""
    out = []
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(",")
        if len(parts) == 4 and parts[0].strip().isdigit():
            try:
                out.append(round(float(parts[3]) / 1000, 4))
            except ValueError:
                pass
    return out


def median(values: list) -> float | None:
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    return v[len(v) // 2] if len(v) % 2 else round((v[len(v) // 2 - 1] + v[len(v) // 2]) / 2, 3)


class Rows:
    """Rows (b) and (d), alternated, with the elephant's throughput and the marks."""

    def __init__(self, lab):
        self.lab = lab
        self.tput = Throughput("pod3").start()
        self.p99: dict[str, list] = {"b": [], "d": []}
        self.mbits: dict[str, list] = {"b": [], "d": []}
        self.marks: list[dict] = []
        self.windows: list[tuple[float, float, str]] = []
        self.first: dict | None = None
        self.elephant_started = 0.0
        self.on = bool(isolate(lab, True).get("qdisc"))   # on before the elephant is detected

    def mark(self, kind: str, label: str, at: float | None = None) -> None:
        self.marks.append({"kind": kind, "label": label, "t": at or time.time()})

    def started(self, port: int) -> None:
        """The elephant to `port` has started: waits for its first isolated packet and
        marks its detection, publication and isolation."""
        lab, r = self.lab, self.lab.report
        self.elephant_started = time.time()
        self.first = _first_isolation(lab, port)
        if self.first is None:
            r.check("experiment: (d) the elephant's packets isolated on hv1", False,
                    json.dumps(lab.nodes.agents["hv1"].json("isolate/show"))[:2000])
            return
        detected, isolated = self.first["detected_ns"] / 1e9, self.first["first_isolated_ns"] / 1e9
        self.mark("detection", "detected (hv1)", detected)
        self.mark("isolation", "first isolated packet", isolated)
        published = _published_at(lab)
        if published:
            self.mark("publication", "published (hv1 Interface)", published)
        r.event("elephant isolated on hv1", at=isolated,
                detection_to_isolation_ms=self.first["detection_to_isolation_ms"])
        r.check("experiment: (d) the elephant's packets isolated on hv1 after its detection",
                self.first["detection_to_isolation_ms"] >= 0, json.dumps(self.first))

    def measure(self, row: str, fn) -> None:
        if (row == "d") != self.on:
            self.on = bool(isolate(self.lab, row == "d").get("qdisc"))
        t0 = time.time()
        ms = fn()
        t1 = time.time()
        self.windows.append((t0, t1, row))
        self.p99[row].append(ms)
        self.mbits[row].append(self.tput.mean(t0, t1))
        self.lab.report.event(f"row ({row})", p99_ms=ms, elephant_mbits=self.mbits[row][-1],
                              isolation="on" if self.on else "off")

    def stop(self) -> None:
        if self.on:
            isolate(self.lab, False)
            self.on = False
        self.tput.stop()

    def report(self) -> dict:
        return {"rounds": [{"row": row, "p99_ms": p, "elephant_mbits": m}
                           for (_, _, row), p, m in zip(self.windows, self._in_order("p99"),
                                                        self._in_order("mbits"))],
                "elephant_mbits_by_row": {k: median(v) for k, v in self.mbits.items()},
                "detection_to_isolation_ms": (self.first or {}).get("detection_to_isolation_ms"),
                "elephant_started": self.elephant_started,
                "elephant_mbits": [(round(t, 3), round(m, 2)) for t, m in self.tput.samples],
                "marks": self.marks, "windows": self.windows}

    def _in_order(self, what: str) -> list:
        values = {k: list(v) for k, v in getattr(self, what).items()}
        return [values[row].pop(0) for _, _, row in self.windows]

    def judge(self, alone: float | None) -> dict:
        """Checks that isolation works: the mice get back most of what the elephant
        cost them (as (c) must), and the elephant keeps its throughput. Returns the
        issue's goal for (d), a figure under emulation (see the README), not a check:
        mice p99 within 1.5x of (a)."""
        r = self.lab.report
        d, b = median(self.p99["d"]), median(self.p99["b"])
        md, mb = median(self.mbits["d"]), median(self.mbits["b"])
        r.check("experiment: (d) measured, alternated with (b)",
                None not in (d, b, alone, md, mb),
                json.dumps({"rounds": self.report()["rounds"],
                            "throughput": self.tput.error or "sampled"}))
        if None in (d, b, alone, md, mb):
            return {}
        r.check("experiment: (d) isolation on hv1 takes back most of what the elephant cost "
                "the mice", d - alone < (b - alone) / 3,
                f"{d} ms vs {alone} ms alone, {b} ms beside the elephant")
        r.check("experiment: (d) the elephant keeps >= 90% of its throughput without "
                "isolation", md >= 0.9 * mb, f"{md} Mbit/s isolated vs {mb} Mbit/s in (b)")
        ratio = round(d / alone, 2)
        return {"(d) mice p99 <= 1.5x (a)": {"ratio": ratio, "met": ratio <= 1.5},
                "(d) elephant throughput >= 90% of (b)": {"ratio": round(md / mb, 3),
                                                          "met": md >= 0.9 * mb}}


def _first_isolation(lab, port: int, timeout: float = 60) -> dict | None:
    """hv1's isolated row for the elephant to `port`, once a packet of it was isolated."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for f in lab.nodes.agents["hv1"].json("isolate/show").get("flows", []):
            if port in (f["dport"], f["sport"]) and f["first_isolated_ns"]:
                return f
        time.sleep(0.2)
    return None


def _published_at(lab, timeout: float = 30) -> float | None:
    """When hv1 published pod1's elephant (its Interface's ovsfoot-ts, epoch s)."""
    lport = lab.nodes.pods["pod1"]["lport"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = lab.observer.published("hv1")["interfaces"].get(lport, {})
        if ids.get("ovsfoot-elephants", "0") != "0" and ids.get("ovsfoot-ts"):
            return int(ids["ovsfoot-ts"]) / 1000
        time.sleep(0.2)
    return None
