"""User-space pipeline, on the host: recorded events through the whole agent.

A recording (written with ovsfoot.sources.replay.Recorder) of mostly mice and
some elephants, in zones that belong to real Interfaces of a real
ovsdb-server, is played by the replay source at speed 0 through the Agent:
decode, detection, attribution, footprints, learning and publishing. Each
measurement runs in a fresh child process pinned to one core, so its peak RSS
is its own. The baseline is the decode alone (the replay source drained with
nothing behind it) on the same file.

    python -m bench.pipeline child FILE REMOTE BRIDGE   (internal)
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Result, ratio, rss_kib

PORTS = 8                       # Interfaces with iface-id, zones 1..8
ELEPHANT_EVERY = 100            # one flow in this many is an elephant
ELEPHANT_BYTES = 10_000_000


def generate(path: Path, mice_flows: int, elephants: int, seed: int = 6) -> int:
    """Writes a recording; returns the number of events.

    A mouse: an UPDATE with a few KB, then its END. An elephant: an UPDATE
    below the thresholds, the UPDATE that crosses them, 3 more, its END, all
    interleaved with the mice. Zones 1..8 are the ports', zone 9 nobody's.
    """
    from ovsfoot.events import FlowEvent, FlowKey, Kind
    from ovsfoot.sources.replay import Recorder

    rnd = random.Random(seed)
    rec = Recorder(str(path), "bench")
    now = time.time_ns()
    ts = now
    per_elephant = max(1, mice_flows // max(1, elephants))
    batch, open_elephants, n = [], [], 0
    e_made = 0
    for i in range(mice_flows):
        ts += 10_000
        zone = 1 + i % (PORTS + 1)
        key = FlowKey(1, zone, 6, f"10.0.{zone}.{1 + i % 250}", "10.1.0.1",
                      1024 + i % 60000, 80 + (i // 60000) % 1000)
        small = 200 + rnd.randrange(20_000)
        batch.append(FlowEvent(Kind.UPDATE, key, ts, ts - 1_000_000, small, small // 3, 4, 3))
        batch.append(FlowEvent(Kind.END, key, ts + 5_000, ts - 1_000_000))
        if i % per_elephant == 0 and e_made < elephants:
            e_made += 1
            z = 1 + e_made % PORTS
            ekey = FlowKey(1, z, 6, f"10.0.{z}.2", "10.2.0.1", 40000 + e_made % 20000, 5201)
            first = ts - 2_000_000_000
            open_elephants.append((ekey, first, 0))
        # advance open elephants: each gets an event now; after 5 it ends
        still = []
        for ekey, first, step in open_elephants:
            if rnd.random() < 0.5:
                still.append((ekey, first, step))
                continue
            if step < 5:
                b = ELEPHANT_BYTES // 2 if step == 0 else ELEPHANT_BYTES * step
                batch.append(FlowEvent(Kind.UPDATE, ekey, ts, first, b, b // 50, b // 1400, 10))
                still.append((ekey, first, step + 1))
            else:
                batch.append(FlowEvent(Kind.END, ekey, ts, first))
        open_elephants = still
        if len(batch) >= 8192:
            rec.write(batch)
            n += len(batch)
            batch = []
    for ekey, first, _ in open_elephants:
        batch.append(FlowEvent(Kind.END, ekey, ts, first))
    rec.write(batch)
    n += len(batch)
    rec.close()
    return n


class Sandbox:
    """A real ovsdb-server with a bridge whose zone map names 8 Interfaces."""

    def __init__(self):
        from integration.sandbox import Ovs
        self.tmp = tempfile.mkdtemp(prefix="ovsfoot-bench-db-")
        self.bridge = "br-bench"
        self.ovs = Ovs(Path(self.tmp), bridge=self.bridge)
        self.ovs.start_db().create_bridge()     # no ovs-vswitchd: rows are what the agent reads
        args = []
        for i in range(1, PORTS + 1):
            args += ["--", "add-port", self.bridge, f"bp{i}", "--", "set", "Interface", f"bp{i}",
                     f"external_ids:iface-id=ns{i}_app{i}-0",
                     f'external_ids:ip_addresses="10.0.{i}.2/24"']
            args += ["--", "br-set-external-id", self.bridge, f"ct-zone-ns{i}_app{i}-0", str(i)]
        self.ovs.vsctl(*args)
        self.remote = self.ovs.remote

    @staticmethod
    def wait_ports(agent, ready=lambda: True) -> None:
        """Runs `agent`'s database connection until it is synced, sees the PORTS ports
        (and `ready()` holds), for at most 30 s."""
        import ovs.poller
        deadline = time.monotonic() + 30
        while not (agent.synced and len(agent.attributor.ports) == PORTS and ready()):
            if time.monotonic() > deadline:
                raise RuntimeError("the agent never saw the sandbox's ports")
            agent.db.run()
            if agent.db.idl.has_ever_connected():
                agent.refresh_topology()
            p = ovs.poller.Poller()
            agent.db.wait(p)
            p.timer_wait(100)
            p.block()

    def close(self):
        import shutil
        self.ovs.stop_all()
        shutil.rmtree(self.tmp, ignore_errors=True)


def child(mode: str, path: str, remote: str, bridge: str) -> dict:
    """Runs in its own process, pinned to one CPU."""
    cpu = sorted(os.sched_getaffinity(0))[-1]
    os.sched_setaffinity(0, {cpu})
    from ovsfoot.sources.replay import ReplaySource
    src = ReplaySource(path, speed=0)
    if mode == "decode":
        t0, c0 = time.perf_counter(), time.process_time()
        while not src.done:
            src.run()
        t1, c1 = time.perf_counter(), time.process_time()
        return {"events": src.events, "seconds": t1 - t0, "cpu_s": c1 - c0, "rss_kib": rss_kib()}
    from ovsfoot.agent import Agent, Config
    from ovsfoot.events import Thresholds
    from ovsfoot.ovsdb import LocalDb
    cfg = Config(db=remote, bridge=bridge,
                 thresholds=Thresholds(ELEPHANT_BYTES, 1.0, idle_seconds=3600))
    agent = Agent(cfg, src, db=LocalDb(remote, timeout=10))
    Sandbox.wait_ports(agent)
    t0, c0 = time.perf_counter(), time.process_time()
    while not src.finished:
        agent.run_once()
    ok = agent.publisher.flush(10)
    t1, c1 = time.perf_counter(), time.process_time()
    return {"events": agent.events, "seconds": t1 - t0, "cpu_s": c1 - c0, "rss_kib": rss_kib(),
            "elephants": agent.detector.detected, "ended": agent.detector.ended,
            "attributed": agent.detector.detected - agent.unattributed,
            "transactions": agent.publisher.transactions, "flushed": ok}


def _spawn(mode: str, path: Path, sb: Sandbox | None) -> dict:
    cmd = [sys.executable, "-m", "bench.pipeline", "child", mode, str(path),
           sb.remote if sb else "-", sb.bridge if sb else "-"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO), timeout=1800,
                       env={**os.environ, "OVS_RUNDIR": sb.tmp if sb else "/tmp"})
    if p.returncode:
        raise RuntimeError(f"pipeline child {mode} failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run(quick: bool = False, log=print) -> list[Result]:
    events_target = 200_000 if quick else 1_000_000
    mice = events_target // 2 - events_target // 200
    elephants = mice // ELEPHANT_EVERY
    tmp = Path(tempfile.mkdtemp(prefix="ovsfoot-bench-pipe-"))
    sb = Sandbox()
    try:
        f1 = tmp / "events.msgpack"
        n1 = generate(f1, mice, elephants)
        log(f"pipeline: {n1:,} events recorded ({f1.stat().st_size >> 20} MiB), "
            f"{elephants:,} elephants")
        dec = _spawn("decode", f1, None)
        full = _spawn("agent", f1, sb)
        log(f"pipeline: decode {dec['events'] / dec['seconds']:,.0f} ev/s, agent "
            f"{full['events'] / full['seconds']:,.0f} ev/s, rss {full['rss_kib'] >> 10} MiB")
        f1.unlink()
        f10 = tmp / "events-10x.msgpack"
        n10 = generate(f10, mice * 10, elephants)
        log(f"pipeline: {n10:,} events with 10x the mice ({f10.stat().st_size >> 20} MiB)")
        big = _spawn("agent", f10, sb)
        log(f"pipeline: 10x mice: {big['events'] / big['seconds']:,.0f} ev/s, "
            f"rss {big['rss_kib'] >> 10} MiB")
        f10.unlink()
    finally:
        sb.close()
        for f in tmp.glob("*"):
            f.unlink()
        tmp.rmdir()
    rate, base = full["events"] / full["seconds"], dec["events"] / dec["seconds"]
    out = [Result("pipeline_events_per_s", rate, "events/s", base,
                  "decode only (replay source drained, nothing behind it)", ratio(rate, base),
                  ">= 200,000 events/s on one core", rate >= 200_000,
                  detail={"agent": full, "decode": dec, "events": n1})]
    r = ratio(big["rss_kib"], full["rss_kib"])
    out.append(Result("pipeline_rss_10x_mice", big["rss_kib"] / 1024, "MiB peak RSS",
                      full["rss_kib"] / 1024, f"peak RSS with {n1:,} events (1x mice)", r,
                      "ratio <= 1.1 (RSS independent of mice)", r is not None and r <= 1.1,
                      detail={"agent_10x": big, "events_10x": n10,
                              "events_per_s_10x": round(big["events"] / big["seconds"])}))
    return out


if __name__ == "__main__":
    if sys.argv[1] == "child":
        print(json.dumps(child(*sys.argv[2:6])))
    else:
        for r in run(quick="--quick" in sys.argv):
            print(r)
