"""The VM half of the benchmarks (run by bench/vmbench.py inside one VM boot).

    python bench/vmguest.py WORKDIR

integration/barenode.py's node: one OVS kernel-datapath bridge br0 with two pods
(network namespaces pod1 10.0.0.1, pod2 10.0.0.2) whose IP traffic is committed
with ct(zone=1) for pod1 and ct(zone=2) for pod2, as OVN's per-port zones do (each
packet passes the sender's zone, then the receiver's). The bridge carries the zone
map an ovn-controller would write (ct-zone-lp1=1, ct-zone-lp2=2) and the Interfaces
their iface-id, so real `ovsfoot agent` processes attribute without OVN.
An OVSDB monitor client (integration/monitor.py) logs every change of the
ovsfoot keys with its arrival time, throughout.

Phases, results appended to WORKDIR/vm-results.json after each (BENCH_PHASES,
comma-separated, chooses among latency, datapath, churn; default all):
  latency-bpf     agent --source bpf: N paced elephants one after another
  churn-bpf       the same agent under connect/reset churn
  datapath        bench/vmdriver.py: iperf3 without / with the tracer, and the
                  tracer's programs beside empty ones on the same calls
  latency-ctnetlink, churn-ctnetlink   the same with --source ctnetlink (1 s polls)
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench.common import proc_cpu_s  # noqa: E402
from integration import barenode  # noqa: E402
from integration.agentproc import AgentProcess  # noqa: E402
from integration.programs import require  # noqa: E402
from integration.sandbox import Ovs, sh, wait_for  # noqa: E402

PY = sys.executable
FLOWS = str(BENCH / "vmflows.py")
RUN = Path("/tmp/ovsb")             # sockets cannot live on the shared 9p directory
QUICK = os.environ.get("BENCH_QUICK") == "1"
PHASES = set(os.environ.get("BENCH_PHASES", "latency,datapath,churn").split(","))
# elephants per source: each makes two samples (zones), whose latencies go together (a
# stall of the emulated machine delays both), so 100 flows: one flow cannot decide the
# p99 of 200 samples; the baseline's p99 is that of 1 s polls, bounded by the poll
# interval, and needs fewer
N_ELEPHANTS = {"bpf": 10 if QUICK else 100, "ctnetlink": 5 if QUICK else 25}
PAIRS = 3 if QUICK else 5
COST_RUNS = 2 if QUICK else 3
IPERF_S = 2 if QUICK else 3
CHURN_S = 5 if QUICK else 10
ELEPHANT_BYTES, ELEPHANT_S, IDLE_S = 100_000, 1.0, 1.0
RATE = 2_500_000                    # bytes/s of a paced elephant (20 Mbit/s)
FLOW_S = 5.0                        # how long a paced elephant sends at the most
START_RNG = random.Random(19)      # when each flow starts, after the previous has ended
THRESHOLDS = [f"--elephant-bytes={ELEPHANT_BYTES}", f"--elephant-seconds={ELEPHANT_S}",
              f"--idle-seconds={IDLE_S}"]
IFACES = {1: "pod1-ovs", 2: "pod2-ovs"}          # zone -> Interface


def log(msg: str) -> None:
    print(f"[guest {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Results:
    def __init__(self, path: Path):
        self.path, self.data = path, {"quick": QUICK}

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=1))


class Monitor:
    """Follows integration/monitor.py's log: the ovsfoot-elephants value per Interface."""

    def __init__(self, path: Path):
        self.path, self.pos, self.lines = path, 0, []
        self.state: dict[str, int] = {}

    def poll(self) -> None:
        try:
            with open(self.path) as f:
                f.seek(self.pos)
                chunk = f.read()
        except FileNotFoundError:
            return
        end = chunk.rfind("\n") + 1
        self.pos += len(chunk[:end].encode())
        for line in chunk[:end].splitlines():
            rec = json.loads(line)
            if rec["table"] == "Interface":
                v = rec["ids"].get("ovsfoot-elephants")
                n = int(v) if v is not None else None       # None: not published
                self.state[rec["name"]] = n
                self.lines.append((rec["t"], rec["name"], n))

    def first_seen(self, iface: str, after: float) -> float | None:
        return next((t for t, name, n in self.lines if name == iface and t >= after and n),
                    None)

    def wait(self, pred, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if pred(self):
                return True
            time.sleep(0.05)
        return False


def setup(work: Path, monitor: bool = True) -> tuple[Ovs, subprocess.Popen | None]:
    """The node (integration/barenode.py) with the pods' servers; bench/vmdriver.py started
    for the datapath phase; with `monitor`, the OVSDB monitor client (bench/zonecost.py
    needs none)."""
    require("sysctl", "iperf3", "conntrack")
    barenode.load_modules()
    for k in ("net.netfilter.nf_conntrack_acct=1", "net.netfilter.nf_conntrack_timestamp=1"):
        sh("sysctl", "-qw", k)
    # The tracer for the datapath phase compiles while the node is set up.
    driver = subprocess.Popen([PY, str(BENCH / "vmdriver.py"), str(work), str(PAIRS),
                               str(IPERF_S), str(COST_RUNS)],
                              stdout=open(work / "driver.log", "w"),
                              stderr=subprocess.STDOUT, cwd=str(BENCH.parent)) \
        if "datapath" in PHASES else None
    ovs = barenode.up(RUN)
    subprocess.Popen(["ip", "netns", "exec", "pod2", PY, FLOWS, "sink", "5001", "5002"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sh("ip", "netns", "exec", "pod2", "iperf3", "-s", "-D")
    sh("ip", "netns", "exec", "pod1", "sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000")
    if monitor:
        subprocess.Popen([PY, "-m", "integration.monitor", ovs.remote,
                          str(RUN / "monitor.jsonl")], cwd=str(BENCH.parent),
                         stdout=subprocess.DEVNULL, stderr=open(work / "monitor.err", "w"))
        wait_for(lambda: (RUN / "monitor.jsonl").exists(), timeout=60, what="monitor client")
    return ovs, driver


def latency(agent: AgentProcess, mon: Monitor, label: str) -> list[dict]:
    """N paced elephants pod1 -> pod2, one at a time; per conntrack entry (zone),
    when it crossed the thresholds and when the monitor saw its port's key change."""
    out = []
    sender = subprocess.Popen(["ip", "netns", "exec", "pod1", PY, FLOWS, "send", "10.0.0.2",
                               "5001", str(RATE), str(FLOW_S)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    try:
        for i in range(N_ELEPHANTS[label]):
            out += elephant(agent, mon, sender, label, i)
    finally:
        sender.stdin.close()
        sender.wait(30)
    return out


def elephant(agent: AgentProcess, mon: Monitor, sender: subprocess.Popen, label: str,
             i: int) -> list[dict]:
    """One flow from the sender: its two zones' samples."""
    # quiet: this agent has published 0 elephants for both ports
    if not mon.wait(lambda m: all(m.state.get(n) == 0 for n in IFACES.values()), 15):
        log(f"{label}: elephants still published before flow {i}: {mon.state}")
    # at a random phase of the ctnetlink agent's 1 s poll, which ended the previous flow
    time.sleep(START_RNG.random())
    t_start = time.time()
    sender.stdin.write(b"g")
    seen = mon.wait(lambda m: all(m.first_seen(n, t_start) for n in IFACES.values()),
                    FLOW_S + 10)
    # the flow sends until its entries have been read: none has ended before
    rows = [r for r in agent.json("elephant/list") if r["dport"] == 5001] if seen else []
    sender.stdin.write(b"s")
    ready, _, _ = select.select([sender.stdout], [], [], FLOW_S + 30)
    flow = json.loads(sender.stdout.readline() or b"{}") if ready else {}
    out = []
    for zone, iface in IFACES.items():
        row = next((r for r in rows if r["zone"] == zone and r["sport"] == flow.get("sport")),
                   None)
        out.append({"flow": i, "zone": zone, "t_start": t_start, **flow,
                    "visible": mon.first_seen(iface, t_start),
                    "first_seen_ns": row and row["first_seen_ns"],
                    "detected_ns": row and row["detected_ns"],
                    "bytes": row and row["bytes_orig"] + row["bytes_reply"],
                    "port": row and row["port"]})
    log(f"{label}: elephant {i}: " + ", ".join(
        f"zone {o['zone']} {1000 * (o['visible'] - o['detected_ns'] / 1e9):.0f} ms "
        "after detection"
        if o["visible"] and o["detected_ns"] else f"zone {o['zone']} not seen"
        for o in out))
    return out


def churn(agent: AgentProcess, label: str, work: Path) -> dict:
    """Two connect/reset loops pod1 -> pod2 for CHURN_S; the agent's counters and CPU."""
    sh("conntrack", "-F", check=False)
    time.sleep(1)
    before = agent.json("stats")
    cpu0, t0 = proc_cpu_s(agent.proc.pid), time.monotonic()
    procs = [subprocess.Popen(["ip", "netns", "exec", "pod1", PY, FLOWS, "churn", "10.0.0.2",
                               "5002", str(CHURN_S), "200000",
                               str(work / f"churn-{label}-{k}.json")])
             for k in range(2)]
    counts = []
    while any(p.poll() is None for p in procs) and time.monotonic() - t0 < CHURN_S + 30:
        counts.append(int(Path("/proc/sys/net/netfilter/nf_conntrack_count").read_text()))
        time.sleep(0.5)
    wall = time.monotonic() - t0
    cpu = proc_cpu_s(agent.proc.pid) - cpu0
    time.sleep(2)                       # let the agent catch up before reading counters
    after = agent.json("stats")
    clients = [json.loads((work / f"churn-{label}-{k}.json").read_text()) for k in range(2)]
    sh("conntrack", "-F", check=False)
    return {"wall_s": wall, "agent_cpu_s": cpu, "clients": clients, "before": before,
            "after": after, "conntrack_count_peak": max(counts or [0])}


def agent_phases(agent: AgentProcess, label: str, mon: Monitor, work: Path,
                 res: Results) -> None:
    if "latency" in PHASES:
        res.put(f"latency_{label}", latency(agent, mon, label))
    if "churn" in PHASES:
        log(f"churn with the {label} agent")
        res.put(f"churn_{label}", churn(agent, label, work))
    agent.stop()


def wait_driver(driver: subprocess.Popen, work: Path) -> None:
    """Until bench/vmdriver.py has compiled and loaded its programs (then it waits, its
    programs detached, for driver-go)."""
    log("datapath: waiting for the driver to load")
    wait_for(lambda: (work / "driver-ready.json").exists() or driver.poll() is not None,
             timeout=600, interval=0.5, what="the datapath driver to load")


def main() -> int:
    work = Path(sys.argv[1]).resolve()
    res = Results(work / "vm-results.json")
    ovs, driver = setup(work)
    mon = Monitor(RUN / "monitor.jsonl")
    agents = PHASES & {"latency", "churn"}
    try:
        sh("conntrack", "-F", check=False)
        if agents:
            log("starting the bpf agent (compiles the program)")
            t = time.monotonic()
            agent = AgentProcess(ovs, "--source=bpf", *THRESHOLDS, name="agent-bpf")
            agent.start(timeout=600)
            res.put("bpf_agent_start_s", time.monotonic() - t)
            res.put("bpf_stats_start", agent.json("stats"))
            if driver:          # its two compilers would share the VM's CPUs with the agent
                wait_driver(driver, work)
            agent_phases(agent, "bpf", mon, work, res)

        if driver:
            wait_driver(driver, work)
            (work / "driver-go").write_text("go")
            driver.wait((PAIRS * 2 + COST_RUNS) * (IPERF_S + 30) + 60)
            if (work / "datapath.json").exists():
                res.put("datapath", json.loads((work / "datapath.json").read_text()))

        if agents:
            # the iperf3 runs' entries (elephants, in TIME_WAIT) must not be the next agent's
            sh("conntrack", "-F", check=False)
            log("starting the ctnetlink agent")
            agent = AgentProcess(ovs, "--source=ctnetlink", "--interval=1", *THRESHOLDS,
                                 name="agent-ctnetlink")
            agent.start(timeout=120)
            agent_phases(agent, "ctnetlink", mon, work, res)
        res.put("done", True)
        log("done")
        return 0
    finally:
        if driver and driver.poll() is None:
            driver.kill()
        for f in RUN.glob("*.log"):
            shutil.copy(f, work / f.name)
        if (RUN / "monitor.jsonl").exists():
            shutil.copy(RUN / "monitor.jsonl", work / "monitor.jsonl")
        ovs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
