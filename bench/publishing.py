"""Publishing, on the host: 1,000 elephant starts and 1,000 ends per second.

A paced source (a stand-in for the bpf source: ELEPHANT and END events, as
the kernel program sends them) feeds the real Agent loop, which publishes to
a real ovsdb-server (8 Interfaces with their zones on a bridge). An OVSDB
monitor client (integration/monitor.py) logs every change it sees. Counted:
the publisher's transactions per second, next to the footprint changes per
second (what a publisher without coalescing would write, one transaction
each). When the feed stops, with 200 elephants still active, every ovsfoot key
in the database is compared with the truth the feed knows, after at most 1 s.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter, deque
from pathlib import Path

from bench.common import REPO, Result, ratio
from bench.pipeline import PORTS, Sandbox

RATE = 1000                 # starts per second, and as many ends
ACTIVE = 200                # elephants active at once (after the first 0.2 s)


class PacedSource:
    """ELEPHANT and END events at RATE each per second, for `seconds`."""

    name = "bench-paced"
    clock = staticmethod(time.time_ns)     # live events: idle expiry on wall time

    def __init__(self, seconds: float, seed: int = 6):
        from ovsfoot.events import FlowKey
        self.FlowKey = FlowKey
        self.seconds = seconds
        self.rnd = random.Random(seed)
        self.t0: float | None = None
        self.made = 0
        self.active: deque = deque()
        self.starts = self.ends = 0
        self.armed = False          # nothing is sent before the measurement starts

    def per_zone(self) -> Counter:
        return Counter(k.zone for k in self.active)

    @property
    def done(self) -> bool:
        return self.t0 is not None and time.monotonic() - self.t0 >= self.seconds

    def run(self):
        from ovsfoot.events import FlowEvent, Kind
        if not self.armed:
            return []
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        due = int(min(now - self.t0, self.seconds) * RATE)
        out, ts = [], time.time_ns()
        while self.made < due:
            self.made += 1
            zone = 1 + self.rnd.randrange(PORTS)
            key = self.FlowKey(1, zone, 6, f"10.0.{zone}.2", "10.9.0.1",
                               1024 + self.made % 60000, 5201 + self.made // 60000)
            out.append(FlowEvent(Kind.ELEPHANT, key, ts, ts - 2_000_000_000,
                                 20_000_000, 100_000, 15000, 2000))
            self.active.append(key)
            self.starts += 1
            if len(self.active) > ACTIVE:
                old = self.active.popleft()
                out.append(FlowEvent(Kind.END, old, ts, ts - 2_000_000_000))
                self.ends += 1
        return out

    def wait(self, poller) -> None:
        if not self.done:
            poller.timer_wait(1)

    def set_thresholds(self, t) -> None:
        pass

    def zone_counters(self) -> dict:
        return {}               # elephants only: what this bench measures

    def stats(self) -> dict:
        return {"source": self.name, "starts": self.starts, "ends": self.ends}

    def close(self) -> None:
        pass


def db_keys(sb: Sandbox) -> dict[str, dict[str, str]]:
    """ovsfoot keys of every Interface and, as "node", of the integration bridge (the
    node summary), read by ovs-vsctl."""
    out = {}
    data = json.loads(sb.ovs.vsctl("--format=json", "--columns=name,external_ids", "list",
                                   "Interface"))
    for name, ids in data["data"]:
        out[name] = {k: v for k, v in dict(ids[1]).items() if k.startswith("ovsfoot-")}
    node = json.loads(sb.ovs.vsctl("--format=json", "--columns=external_ids", "list",
                                   "Bridge", sb.bridge))
    out["node"] = {k: v for k, v in dict(node["data"][0][0][1]).items()
                   if k.startswith("ovsfoot-")}
    return out


def run(quick: bool = False, log=print) -> list[Result]:
    import ovs.poller
    from ovsfoot.agent import Agent, Config
    from ovsfoot.events import Thresholds
    from ovsfoot.ovsdb import LocalDb

    seconds = 5.0 if quick else 10.0
    sb = Sandbox()
    mon_log = Path(sb.tmp) / "monitor.jsonl"
    mon = subprocess.Popen([sys.executable, "-m", "integration.monitor", sb.remote, str(mon_log)],
                           cwd=str(REPO), stderr=subprocess.DEVNULL)
    try:
        src = PacedSource(seconds)
        agent = Agent(Config(db=sb.remote, bridge=sb.bridge,
                             thresholds=Thresholds(idle_seconds=3600)), src,
                      db=LocalDb(sb.remote, timeout=10))
        sb.wait_ports(agent, mon_log.exists)
        # settle the initial publication, then measure from a clean slate
        agent.run_once()
        agent.publisher.flush(5)
        time.sleep(0.3)
        tx0, gen0 = agent.publisher.transactions, agent.footprints.generation
        t_start = time.time()
        t0 = time.monotonic()
        src.armed = True
        # the sustained window: from the first transaction started after the first
        # second (the burst is spent, the bucket empty) to the end of the feed
        tx1 = t1 = None
        while not src.done:
            before = agent.publisher.transactions
            agent.run_once()
            if t1 is None and time.monotonic() - t0 >= 1.0 \
                    and agent.publisher.transactions > before:
                tx1, t1 = agent.publisher.transactions, time.monotonic() - t0
            p = ovs.poller.Poller()
            agent.wait(p)
            p.block()
        t_feed = time.monotonic() - t0
        t_end = time.time()
        tx_feed = agent.publisher.transactions - tx0
        gen = agent.footprints.generation - gen0
        # the feed has stopped: within 1 s every key must be the truth
        settle = time.monotonic() + 1.0
        while time.monotonic() < settle:
            agent.run_once()
            p = ovs.poller.Poller()
            agent.wait(p)
            p.timer_wait(10)
            p.block()
        have = db_keys(sb)
        truth = src.per_zone()
        want = {f"bp{z}": {"ovsfoot-elephants": str(truth.get(z, 0)),
                           "ovsfoot-footprint": "heavy" if truth.get(z) else None}
                for z in range(1, PORTS + 1)}
        want["node"] = {"ovsfoot-elephants": str(len(src.active)),
                     "ovsfoot-footprint": "heavy" if src.active else "light"}
        checked, stale = 0, []
        for row, kv in want.items():
            for k, v in kv.items():
                if v is None:
                    continue
                checked += 1
                if have.get(row, {}).get(k) != v:
                    stale.append(f"{row} {k}={have.get(row, {}).get(k)} (want {v})")
        agent.shutdown()
    finally:
        mon.terminate()
        mon.wait(10)
        lines = [json.loads(x) for x in mon_log.read_text().splitlines()] \
            if mon_log.exists() else []
        sb.close()
    # one transaction arrives as one update: rows changed together share its arrival time
    seen = len({x["t"] for x in lines if t_start <= x["t"] <= t_end + 0.2})
    # the budget is a token bucket: a burst at first, then its rate, sustained
    tx_s, chg_s = (tx_feed - (tx1 - tx0)) / (t_feed - t1), gen / t_feed
    burst, rate = agent.publisher.budget.burst, agent.publisher.budget.rate
    log(f"publishing: {src.starts:,} starts, {src.ends:,} ends in {t_feed:.1f} s: "
        f"{tx_s:.1f} tx/s sustained ({tx_feed} in all) for {chg_s:,.0f} footprint changes/s; "
        f"stale keys: {len(stale)}")
    return [Result("publish_tx_per_s", tx_s, "tx/s", chg_s,
                   "footprint changes/s (1 tx each without coalescing)", ratio(tx_s, chg_s),
                   "<= 10 tx/s sustained (after the burst)", tx_s <= 10,
                   detail={"seconds": round(t_feed, 2), "starts": src.starts, "ends": src.ends,
                           "transactions": tx_feed, "window_s": round(t_feed - t1, 3),
                           "before_window": tx1 - tx0,
                           "tx_per_s_whole_feed": round(tx_feed / t_feed, 2),
                           "budget": f"burst {burst}, then {rate:g}/s: at most "
                                     f"{burst + rate * t_feed:.0f} in {t_feed:.1f} s",
                           "changes": gen,
                           "monitor_updates": seen,
                           "monitor_updates_per_s": round(seen / t_feed, 1)}),
            Result("publish_stale_keys", len(stale), "keys", checked,
                   "ovsfoot keys checked against the feed's truth 1 s after it stopped",
                   ratio(len(stale), checked), "0 stale", not stale,
                   detail={"stale": stale[:20], "active_at_end": len(src.active)})]


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
