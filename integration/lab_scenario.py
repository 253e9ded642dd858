"""The lab's scenario, run inside the VM (see integration/lab.py).

A central node (NB/SB databases, ovn-northd, and ovsfoot's cluster database:
three raft members of OVSFoot_Cluster) and three chassis, each in its own
network namespace with its own ovsdb-server, ovs-vswitchd on the kernel
datapath and ovn-controller, joined by an underlay bridge, tunnels in Geneve.
The nodes and pods are provisioned by vagrant/provision/, the scripts that
provision real hypervisors.
One logical switch with allow-related ACLs (so traffic goes through
conntrack) and five pods. An iperf3 elephant crosses from hv1 to hv2 while
sockperf mice ping-pong between the other two pods, with an ovsfoot agent per
chassis (bpf source on hv1 and hv2) publishing on the integration bridge and
in the cluster database. What OVN and OVS spend meanwhile (recomputes,
reconfigurations) is compared with a control phase without agents.
Everything observed goes into a timeline and a JSON report; `checks` says what
was expected and whether it happened.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from integration import lab_isolation
from integration.agentproc import AgentProcess
from integration.ovncost import (northd_explain, northd_recomputes, recompute_reasons,
                                 snapshot as ovn_snapshot)
from integration.programs import require
from integration.sandbox import Ovs, sh, wait_for

PROVISION = Path(__file__).resolve().parents[1] / "vagrant" / "provision"
UNDERLAY = "10.99.0"
UNDERLAY_LINK = "ovsfoot-ul"
CENTRAL_IP = f"{UNDERLAY}.10"
SUBNET = "10.0.0"
SUBNET6 = "fd00:10::"           # the logical switch is dual-stack
CHASSIS = ("hv1", "hv2", "hv3")
# ovsfoot's cluster database: three raft members on the central node, each in a
# network namespace of its own on the underlay (they all listen on the same
# chassis connection, ssl 6647), started by provision/cluster-db.sh. SSL, with a
# certificate per member and per chassis (CN = the chassis' name: the database's
# RBAC lets a chassis write only its own rows) from provision/pki.sh.
CLUSTER_DB = {"central-db1": f"{UNDERLAY}.21", "central-db2": f"{UNDERLAY}.22",
              "central-db3": f"{UNDERLAY}.23"}
CLUSTER_PORT, RAFT_PORT = 6647, 6648
EXTENDER = "scheduler-extender"        # the extender's certificate (it only reads)
PKI_NAMES = (*CLUSTER_DB, *CHASSIS, EXTENDER)
OVSFOOT = Path(sys.executable).with_name("ovsfoot")
# pod -> (chassis, logical port, role in the scenario)
PODS = {
    "pod1": ("hv1", "lab_elephant-client-5f7d8c9b4d-k2x7q", "elephant source"),
    "pod2": ("hv1", "lab_mice-client-6c8d9f7b5c-p4m2z", "mice"),
    "pod3": ("hv2", "lab_elephant-server-0", "elephant sink"),
    "pod4": ("hv2", "lab_mice-server-0", "mice"),
    "pod5": ("hv3", "lab_mice-client-6c8d9f7b5c-x9z8w", "mice, placed by ovsfoot"),
}
WORKLOADS = {"pod1": "lab/elephant-client", "pod2": "lab/mice-client",
             "pod3": "lab/elephant-server", "pod4": "lab/mice-server",
             "pod5": "lab/mice-client"}
# What the scenario and the provision scripts it runs start (integration/programs.py).
PROGRAMS = ("bash", "ip", "ss", "tc", "ping", "iperf3", "sockperf", "conntrack", "modprobe",
            "ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-appctl",
            "ovn-northd", "ovn-controller", "ovn-nbctl", "ovn-sbctl")
# The seed's measurement (LPC 2019): sockperf p99 of mice, in ms.
SEED_P99_MS = {"alone": 0.28, "beside the elephant": 14.04}
BOTTLENECK = ["tbf", "rate", "20mbit", "burst", "16kb", "latency", "100ms"]   # a FIFO
THRESHOLDS = ["--elephant-bytes=10000000", "--elephant-seconds=1", "--idle-seconds=2",
              "--interval=1"]
# The elephant phase's elephant: long enough to be seen published while it runs
# when the host is busy and everything in the VM is emulated.
ELEPHANT_S = 20
# Chassis whose agent isolates elephants on its underlay (row (d) of the experiment);
# started with --isolate so that the classifier is compiled at start, then off.
ISOLATING = ("hv1",)
IPV6_ELEPHANT_S = 10
# The traffic phase: 20 flows of 500 kB a second (80 Mbit/s, no elephant) and 100 short
# connections a second; the emulated VM moves far less than real hosts, so the
# heavy threshold is lowered from 200 to 40 Mbit/s for it (threshold/set, live).
TRAFFIC = str(Path(__file__).resolve().parent / "traffic.py")
SHUFFLE = ("20", "500000")
RPC_RATE = "100"
LAB_HEAVY_BPS = 40_000_000
TRAFFIC_S = 90
# What the OVN cost counters count (integration/ovncost.py), per daemon.
COST_COUNTERS = {
    "ovn-controller": "recomputes of its flow engine nodes (runtime_data, logical_flow_output, "
                      "physical_flow_output, ct_zones; inc-engine/show-stats)",
    "ovs-vswitchd": "bridge reconfigurations (coverage/show bridge_reconfigure)",
    "ovn-northd": "recomputes of its northd and lflow engine nodes (inc-engine/show-stats)"}


@dataclass
class Report:
    t0: float = field(default_factory=time.time)
    timeline: list[dict] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def event(self, what: str, at: float | None = None, **kw) -> None:
        at = time.time() if at is None else at
        row = {"t": round(at - self.t0, 3), "what": what, **kw}
        self.timeline.append(row)
        print(f"[lab {row['t']:8.3f}s] {what}" + "".join(f" {k}={v}" for k, v in kw.items()),
              flush=True)

    def check(self, name: str, ok: bool, detail="") -> bool:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        print(f"[lab check] {'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)
        return ok

    def save(self, path: Path) -> None:
        self.timeline.sort(key=lambda r: r["t"])
        path.write_text(json.dumps({"t0": self.t0, "timeline": self.timeline,
                                    "checks": self.checks, **self.data}, indent=1))


class Lab:
    def __init__(self, work: Path, run_dir: Path = Path("/tmp/ovsfoot-lab")):
        self.work = work            # shared with the host: reports and logs
        self.rundir = run_dir       # the VM's own: unix sockets cannot live on 9p
        self.report = Report()
        self.central = self.rundir / "central"
        # Made on the host before the VM boots (integration/lab.py), as the Vagrant lab
        # makes its keys on its host: RSA keys take long under emulation.
        self.pki = self.work / "pki"
        # ovsfoot's cluster database, for the agents and the scheduler extender
        self.cluster_db = ",".join(f"ssl:{ip}:{CLUSTER_PORT}" for ip in CLUSTER_DB.values())
        self.chassis: dict[str, Ovs] = {}
        self.pods: dict[str, dict] = {}
        self.agents: dict[str, AgentProcess] = {}
        self.procs: list[subprocess.Popen] = []

    # -- building --------------------------------------------------------
    def provision(self, *calls: tuple[str, ...]) -> None:
        """Runs vagrant/provision scripts, the ones real hypervisors run; each call is
        (script, args...), and the calls run side by side."""
        procs = [(c, subprocess.Popen(["bash", str(PROVISION / c[0]), *c[1:]], text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
                 for c in calls]
        failed = []
        for call, p in procs:
            out = p.communicate(timeout=600)[0]
            for line in out.splitlines():
                print(f"    {call[0]}: {line}", flush=True)
            if p.returncode:
                failed.append(" ".join(call))
        if failed:
            raise RuntimeError(f"provisioning failed: {'; '.join(failed)}")

    def build(self) -> None:
        require(*PROGRAMS)          # a missing one fails here, not as a timeout later
        r = self.report
        for mod in ("openvswitch", "geneve", "nf_conntrack"):
            sh("modprobe", mod)
        central = self.central
        self.provision(("underlay.sh", "--rundir", str(central), "--netns", "central",
                        "--link", UNDERLAY_LINK, f"{CENTRAL_IP}/24"),
                       ("pki.sh", "--dir", str(self.pki), *PKI_NAMES))
        self.provision(("central.sh", "--rundir", str(central), "--netns", "central",
                        CENTRAL_IP))
        northd_explain(central)     # each phase's cost says why ovn-northd recomputed
        # The VM itself is the management host on the underlay (the agents and the
        # scheduler extender reach the cluster database from here).
        sh("ip", "addr", "replace", f"{UNDERLAY}.254/24", "dev", UNDERLAY_LINK)
        r.event("central up (provision/central.sh)", nb=f"tcp:{CENTRAL_IP}:6641",
                sb=f"tcp:{CENTRAL_IP}:6642")
        # The cluster database comes up beside the chassis and pods (the agents connect
        # to it once their eBPF program is compiled; they would wait for it anyway).
        failed: list[Exception] = []

        def cluster_db():
            try:
                self.build_cluster_db()
            except Exception as e:
                failed.append(e)
        cluster = threading.Thread(target=cluster_db, name="cluster-db", daemon=True)
        cluster.start()
        encap = {hv: f"{UNDERLAY}.{i}" for i, hv in enumerate(CHASSIS, start=1)}
        for hv, ip in encap.items():
            self.provision(("underlay.sh", "--rundir", str(self.rundir / hv), "--netns", hv,
                            "--link", UNDERLAY_LINK, f"{ip}/24"))
        self.provision(*[("chassis.sh", "--rundir", str(self.rundir / hv), "--netns", hv,
                          "--datapath", "system", hv, ip, CENTRAL_IP)
                         for hv, ip in encap.items()])
        for hv, ip in encap.items():
            ovs = Ovs(self.rundir / hv, bridge="br-int", datapath="system", netns=hv)
            ovs.vswitchd_running = True
            self.chassis[hv] = ovs
            r.event("chassis up (provision/chassis.sh)", chassis=hv, encap=f"geneve {ip}")
        # The agents compile their eBPF program meanwhile (slow under emulation).
        self.spawn_agents("bpf", ("hv1", "hv2"))
        self.spawn_agents("ctnetlink", ("hv3",))          # hv3 only hosts placed mice
        calls = []
        for n, (pod, (hv, lport, role)) in enumerate(PODS.items(), start=1):
            ip, ip6, mac = f"{SUBNET}.{n + 10}", f"{SUBNET6}{n + 10}", f"0a:00:00:00:00:{n:02x}"
            calls.append(("workloads.sh", "--rundir", str(self.rundir / hv), "--netns", hv,
                          "--switch", "ls1", "--lport", lport, "--mac", mac,
                          "--ip6", f"{ip6}/64", CENTRAL_IP, pod, f"{ip}/24"))
            self.pods[pod] = {"chassis": hv, "lport": lport, "ip": ip, "ip6": ip6, "role": role,
                              "ns": pod, "workload": WORKLOADS[pod], "interface": pod[:15]}
        self.provision(calls[0])    # makes the logical switch: --may-exist does not lock
        self.provision(*calls[1:])
        r.event("pods bound (provision/workloads.sh)", pods=",".join(self.pods))
        wait_for(lambda: self.ping("pod1", "pod3") and self.ping("pod2", "pod4"),
                 timeout=120, interval=1, what="pods reachable across Geneve")
        r.event("pods reach each other across the Geneve tunnel")
        cluster.join()
        if failed:
            raise failed[0]
        self.report.data["zones"] = {hv: ovs.zones() for hv, ovs in self.chassis.items()}

    def build_cluster_db(self) -> None:
        """Three members of ovsfoot's cluster database, the first creating it, the
        others joining: `ovsfoot cluster-db start`, through provision/cluster-db.sh."""
        self.provision(*[("underlay.sh", "--rundir", str(self.rundir / m), "--netns", m,
                          "--link", UNDERLAY_LINK, f"{ip}/24") for m, ip in CLUSTER_DB.items()])
        joined: list[str] = []
        for m, ip in CLUSTER_DB.items():
            join = ("--join", ",".join(joined)) if joined else ()
            self.provision(("cluster-db.sh", "--rundir", str(self.rundir / m), "--netns", m,
                            "--ovsfoot", str(OVSFOOT), *self.creds(m), *join, ip))
            joined.append(f"ssl:{ip}:{RAFT_PORT}")
        status = self.cluster_status()
        self.report.data["cluster_db"] = {"remote": self.cluster_db, "status": status}
        self.report.event("cluster database up (provision/cluster-db.sh)",
                          members=len(CLUSTER_DB), remote=self.cluster_db,
                          leader=next((m for m, st in status.items() if "Role: leader" in st),
                                      None))

    def creds(self, name: str) -> list[str]:
        """--private-key, --certificate and --ca-cert of `name` (provision/pki.sh)."""
        return [f"--private-key={self.pki / name}-privkey.pem",
                f"--certificate={self.pki / name}-cert.pem",
                f"--ca-cert={self.pki / 'cacert.pem'}"]

    def cluster_status(self) -> dict[str, str]:
        """`ovsfoot cluster-db status` of each member."""
        return {m: subprocess.run([str(OVSFOOT), "cluster-db", "status", "--dir",
                                   str(self.rundir / m)], capture_output=True, text=True,
                                  timeout=30).stdout for m in CLUSTER_DB}

    def cluster_rows(self, table: str) -> list[dict]:
        """Rows of `table` in the cluster database, read through the members' admin sockets."""
        admin = ",".join(f"unix:{self.rundir / m / 'db.sock'}" for m in CLUSTER_DB)
        out = sh("ovsdb-client", "--timeout=20", "query", admin, json.dumps(
            ["OVSFoot_Cluster", {"op": "select", "table": table, "where": []}]), timeout=30)
        rows = json.loads(out)[0]["rows"]
        for row in rows:
            for k in [k for k in row if k.startswith("_")]:
                del row[k]
        return rows

    def teardown(self) -> None:
        for node in (*self.chassis, *CLUSTER_DB, "central"):
            self.provision(("teardown.sh", "--rundir", str(self.rundir / node),
                            "--netns", node))

    def ping(self, a: str, b: str) -> bool:
        """Does pod `a` reach pod `b`? An error, not False, if ping cannot run."""
        require("ip", "ping")
        p = subprocess.run(["ip", "netns", "exec", a, "ping", "-c1", "-W1", self.pods[b]["ip"]],
                           capture_output=True, text=True)
        if p.returncode and 'exec of "ping" failed' in p.stderr:  # from ip netns exec
            raise RuntimeError(f"ip netns exec {a} ping: {p.stderr.strip()}")
        return p.returncode == 0

    def spawn_agents(self, source: str, hvs) -> None:
        for hv in hvs:
            isolate = ["--isolate"] if hv in ISOLATING and source == "bpf" else []
            a = AgentProcess(self.chassis[hv], f"--source={source}", f"--netns={hv}",
                             f"--cluster-db={self.cluster_db}", *self.creds(hv), *THRESHOLDS,
                             *isolate, name=f"ovsfoot-{source}")
            a.spawn()
            self.agents[hv] = a

    def agents_ready(self) -> None:
        for hv, a in self.agents.items():
            a.wait_ready(timeout=600)
            source = a.json("stats")["source"]
            self.report.event("agent ready", chassis=hv, source=source["source"],
                              probe=source.get("probe", "-"))

    def stop_agents(self) -> None:
        for a in self.agents.values():
            a.stop()
        self.agents.clear()

    # -- traffic ---------------------------------------------------------
    def bg(self, pod: str, *cmd: str) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", pod, *cmd], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        self.procs.append(p)
        return p

    def iperf(self, seconds: int, port: int, rate: str = "200M",
              ipv6: bool = False) -> subprocess.Popen:
        self.bg("pod3", "iperf3", "-s", "-1", "-p", str(port))
        wait_for(lambda: f":{port}" in sh("ip", "netns", "exec", "pod3", "ss", "-ltn"),
                 what="iperf3 server")
        dst = self.pods["pod3"]["ip6" if ipv6 else "ip"]
        return self.bg("pod1", "iperf3", "-c", dst, "-p", str(port),
                       "-t", str(seconds), "-b", rate, "-J")

    def mice(self, seconds: int, client: str = "pod2",
             log: Path | None = None) -> tuple[subprocess.Popen, subprocess.Popen]:
        """A sockperf server on pod4 and a ping-pong client on `client` (every round
        trip into `log` if given)."""
        server = self.bg("pod4", "sockperf", "server", "-i", self.pods["pod4"]["ip"],
                         "-p", "11111")
        wait_for(lambda: "11111" in sh("ip", "netns", "exec", "pod4", "ss", "-lun"),
                 what="sockperf server")
        return server, self.bg(client, "sockperf", "ping-pong", "-i", self.pods["pod4"]["ip"],
                               "-p", "11111", "-t", str(seconds), "--mps", "200",
                               *(["--full-log", str(log)] if log else []))

    def mice_p99(self, client: str, seconds: int = 6, log: Path | None = None) -> float | None:
        """sockperf ping-pong p99 (ms) from `client` to pod4."""
        server, p = self.mice(seconds, client, log)
        out = p.communicate(timeout=seconds + 60)[0]
        server.kill()       # only the mice: an elephant may be running
        server.wait()
        for line in out.splitlines():
            if "percentile 99.000" in line:
                return round(float(line.rsplit("=", 1)[1]) / 1000, 3)
        return None

    def kill_traffic(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs.clear()

    # -- observing -------------------------------------------------------
    def monitor(self, hv: str) -> subprocess.Popen:
        """An OVSDB monitor client on the chassis' database (integration/monitor.py),
        returned once it has the database's contents."""
        path = self.work / f"monitor-{hv}.jsonl"
        p = subprocess.Popen([sys.executable, "-m", "integration.monitor",
                              self.chassis[hv].remote, str(path)])
        wait_for(lambda: path.exists() and path.stat().st_size, timeout=120,
                 what=f"the OVSDB monitor client on {hv}")
        return p

    def monitor_events(self, hv: str) -> list[dict]:
        """Every change of ovsfoot keys the monitor client saw, in order."""
        path = self.work / f"monitor-{hv}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def elephants(self, hv: str) -> list[dict]:
        return self.agents[hv].json("elephant/list")

    def published(self, hv: str) -> dict:
        """ovsfoot's keys on the chassis: of the integration bridge (the node), of the
        Open_vSwitch row (none expected) and of each pod's Interface, in one read."""
        ovs = self.chassis[hv]
        out = ovs.vsctl("--format=json", "--columns=name,external_ids", "list", "Bridge",
                        ovs.bridge, "--", "--columns=external_ids", "list", "Open_vSwitch", ".",
                        "--", "--columns=name,external_ids", "list", "Interface")
        bridge, root, ifaces = (json.loads(line)["data"] for line in out.splitlines())

        def mine(ids) -> dict:
            return {k: v for k, v in ids[1] if k.startswith("ovsfoot-")}
        by_name = {name: mine(ids) for name, ids in ifaces}
        return {"node": mine(bridge[0][1]), "open_vswitch": mine(root[0][0]),
                "interfaces": {p["lport"]: by_name.get(p["interface"], {})
                               for p in self.pods.values() if p["chassis"] == hv}}

    def snapshot(self, label: str) -> None:
        t0 = time.monotonic()
        snap = {hv: self.published(hv) for hv in self.chassis}
        took = time.monotonic() - t0
        for hv in self.chassis:
            snap[hv]["footprint_show"] = (self.agents[hv].appctl("footprint/show")
                                          if hv in self.agents else "")
        self.report.event(f"snapshot of the published keys ({label})",
                          seconds=round(took, 1))
        try:
            cluster = {row["name"]: {k: row.get(k) for k in (
                "footprint", "elephants", "heavy_ports", "sensitive_ports", "bps", "flows_per_s")}
                for row in self.cluster_rows("Chassis")}
        except RuntimeError as e:
            cluster = {"error": str(e)}
        self.report.data.setdefault("published", {})[label] = snap
        self.report.data.setdefault("cluster_view", {})[label] = cluster

    # -- the scenario ----------------------------------------------------
    def elephant_phase(self) -> None:
        r = self.report
        mon = {hv: self.monitor(hv) for hv in self.chassis}
        _, mice = self.mice(ELEPHANT_S + 6)
        started = time.time()
        client = self.iperf(ELEPHANT_S, 5201)
        r.event("elephant started", src="pod1@hv1", dst="pod3@hv2",
                flow=f"iperf3 200 Mbit/s {ELEPHANT_S} s")
        r.event("mice started", src="pod2@hv1", dst="pod4@hv2", flow="sockperf ping-pong")
        seen, rows1 = {}, {}

        def detected():
            """Asks each elephant's chassis until it lists one; keeps that list."""
            for hv in ("hv1", "hv2"):
                if hv in seen:
                    continue
                rows = self.elephants(hv)
                for e in rows:
                    if e["port"] and hv not in seen:
                        seen[hv], rows1[hv] = e, rows
                        r.event(f"elephant detected on {hv}", at=e["detected_ns"] / 1e9,
                                port=e["port"], workload=e["workload"], role=e["role"],
                                zone=e["zone"])
            return len(seen) == 2

        def visible():
            """Do the monitor clients see both elephant ports' keys published?"""
            return all(any(e["table"] == "Interface" and e["name"] == self.pods[pod]["interface"]
                           and e["ids"].get("ovsfoot-elephants") == "1"
                           for e in self.monitor_events(hv))
                       for hv, pod in (("hv1", "pod1"), ("hv2", "pod3")))
        # What was published first, as soon as a consumer sees it: asking the agents
        # (ovs-appctl) is slow while the elephant takes the emulated CPUs.
        _try_wait(visible, 60)
        self.snapshot("during")
        ok = _try_wait(detected, 60)
        r.check("elephant detected on both chassis", ok, ",".join(seen))
        for hv in ("hv1", "hv2"):
            rows1.setdefault(hv, [])
        client.wait(60)
        ended = time.time()
        r.event("elephant ended (iperf3 done)", at=ended,
                mbits=_iperf_mbits(client.stdout.read()))
        _try_wait(lambda: not any(self.elephants(hv) for hv in self.chassis), 60)
        mice.wait(60)
        self.snapshot("after")
        for m in mon.values():
            m.terminate()
            m.wait()
        self.kill_traffic()
        self._judge_elephant(rows1, started, ended)

    def _judge_elephant(self, rows, started, ended) -> None:
        r = self.report
        p1, p3 = self.pods["pod1"], self.pods["pod3"]
        for hv, pod, role in (("hv1", p1, "source"), ("hv2", p3, "sink")):
            mine = [e for e in rows[hv] if e["port"] == pod["lport"]]
            r.check(f"{hv}: elephant attributed to {pod['lport']} as {role}",
                    len(mine) == 1 and mine[0]["role"] == role
                    and mine[0]["workload"] == pod["workload"],
                    json.dumps(mine))
            others = [e for e in rows[hv] if e["port"] != pod["lport"]]
            r.check(f"{hv}: no other elephant (the mice are not)", not others, json.dumps(others))
        during, after = r.data["published"]["during"], r.data["published"]["after"]
        for hv, pod in (("hv1", p1), ("hv2", p3)):
            ids = during[hv]["interfaces"][pod["lport"]]
            r.check(f"{hv}: Interface keys published", ids.get("ovsfoot-footprint") == "heavy"
                    and ids.get("ovsfoot-elephants") == "1", json.dumps(ids))
            node = during[hv]["node"]
            r.check(f"{hv}: node keys published on Bridge br-int",
                    node.get("ovsfoot-footprint") == "heavy"
                    and node.get("ovsfoot-elephants") == "1", json.dumps(node))
            root = during[hv]["open_vswitch"]
            r.check(f"{hv}: no ovsfoot key on the Open_vSwitch row", not root, json.dumps(root))
            ids = after[hv]["interfaces"][pod["lport"]]
            r.check(f"{hv}: Interface keys withdrawn after the flow",
                    ids.get("ovsfoot-elephants") == "0" and ids.get("ovsfoot-footprint") == "light",
                    json.dumps(ids))
            node = after[hv]["node"]
            r.check(f"{hv}: node keys withdrawn after the flow",
                    node.get("ovsfoot-elephants") == "0", json.dumps(node))
        for mouse in ("pod2", "pod4"):
            hv, lport = self.pods[mouse]["chassis"], self.pods[mouse]["lport"]
            ids = during[hv]["interfaces"][lport]
            r.check(f"{hv}: mice port {mouse} stays light", ids.get("ovsfoot-footprint") == "light",
                    json.dumps(ids))
        latency = {}
        for hv, pod in (("hv1", p1), ("hv2", p3)):
            crossed = [e["detected_ns"] / 1e9 for e in rows[hv] if e["port"] == pod["lport"]]
            mine = [e for e in self.monitor_events(hv)
                    if e["table"] == "Interface" and e["name"] == pod["interface"]]
            pub = [e["t"] for e in mine if e["ids"].get("ovsfoot-elephants") == "1"]
            gone = [e["t"] for e in mine if pub and e["t"] > pub[0]
                    and e["ids"].get("ovsfoot-elephants") == "0"]
            if pub:
                r.event(f"published on {hv}", at=pub[0], interface=pod["interface"],
                        keys="ovsfoot-footprint=heavy ovsfoot-elephants=1")
            if gone:
                r.event(f"withdrawn on {hv}", at=gone[0], interface=pod["interface"],
                        keys="ovsfoot-footprint=light ovsfoot-elephants=0")
            if crossed and pub:
                latency[hv] = round((pub[0] - crossed[0]) * 1000, 1)
        r.data["detection_latency_ms"] = latency
        r.check("detection latency measured (threshold crossing to OVSDB monitor update)",
                len(latency) == 2, json.dumps(latency))

    def threshold_phase(self) -> None:
        """A live threshold change reaches the kernel program without a reload."""
        r = self.report
        hv1 = self.agents["hv1"]
        before = hv1.json("stats")["elephants_detected"]
        hv1.appctl("threshold/set", "bytes=100000000000")
        r.event("threshold raised to 100 GB on hv1 (live)")
        self.iperf(4, 5202).wait(60)
        self.kill_traffic()
        time.sleep(1.5)
        quiet = hv1.json("stats")["elephants_detected"] == before
        r.check("raised threshold honoured in the kernel: no elephant", quiet)
        hv1.appctl("threshold/set", "bytes=5000000")
        r.event("threshold lowered to 5 MB on hv1 (live)")
        self.iperf(4, 5203).wait(60)
        self.kill_traffic()
        ok = _try_wait(lambda: hv1.json("stats")["elephants_detected"] > before, 20)
        r.check("lowered threshold honoured in the kernel: elephant", ok)
        hv1.appctl("threshold/set", "bytes=10000000")

    def ipv6_phase(self) -> None:
        """An IPv6 elephant, pod1 -> pod3 on the dual-stack switch: detected on both
        chassis with its v6 tuple, attributed as source and sink, published, withdrawn."""
        r = self.report
        ends = (("hv1", self.pods["pod1"], "source"), ("hv2", self.pods["pod3"], "sink"))
        src, dst = self.pods["pod1"]["ip6"], self.pods["pod3"]["ip6"]
        client = self.iperf(IPV6_ELEPHANT_S, 5204, ipv6=True)
        r.event("IPv6 elephant started", src=f"pod1@hv1 {src}", dst=f"pod3@hv2 {dst}")
        found: dict[str, dict] = {}

        def detected():
            for hv, _, _ in ends:
                found.update({hv: e for e in self.elephants(hv)
                              if hv not in found and (e["src"], e["dst"]) == (src, dst)})
            return len(found) == 2

        def keys(value: str):
            return lambda: all(self.published(hv)["interfaces"][pod["lport"]]
                               .get("ovsfoot-elephants") == value for hv, pod, _ in ends)
        _try_wait(detected, 60)
        published = _try_wait(keys("1"), 60)
        for hv, pod, role in ends:
            e = found.get(hv, {})
            if e:
                r.event(f"IPv6 elephant detected on {hv}", at=e["detected_ns"] / 1e9,
                        tuple=f"[{e['src']}]:{e['sport']} -> [{e['dst']}]:{e['dport']}",
                        role=e["role"], zone=e["zone"])
            r.check(f"{hv}: IPv6 elephant attributed to {pod['lport']} as {role}",
                    e.get("port") == pod["lport"] and e.get("role") == role
                    and e.get("dport") == 5204 and e.get("workload") == pod["workload"],
                    json.dumps(e))
        r.check("IPv6 elephant published on both chassis", published)
        client.wait(60)
        self.kill_traffic()
        r.check("IPv6 elephant withdrawn on both chassis", _try_wait(keys("0"), 60))
        r.data["ipv6_elephant"] = found

    def experiment_phase(self) -> None:
        """The seed's experiment: mice p99 (a) alone, (b) beside an elephant on the
        same chassis and tunnel, (c) on the node the scheduler extender ranks best
        given the footprints ovsfoot published, and (d) beside the elephant with
        isolation on hv1 (integration/lab_isolation.py), alternated with (b). A rate
        limit with a FIFO queue on hv1's underlay makes queueing, not emulation,
        dominate."""
        r = self.report
        sh("ip", "netns", "exec", "hv1", "tc", "qdisc", "replace", "dev", "ul", "root",
           *BOTTLENECK)     # ul: the chassis' end of the underlay (provision/underlay.sh)
        r.event("bottleneck on hv1's underlay", qdisc=" ".join(BOTTLENECK))
        cdf: dict[str, list[float]] = {}

        def measure(label: str, client: str = "pod2") -> float | None:
            log = self.work / f"mice-{len(cdf)}.csv"
            ms = self.mice_p99(client, log=log)
            cdf.setdefault(label, []).extend(lab_isolation.round_trips(log))
            return ms
        p99 = {"alone": measure("(a) alone")}
        r.event("mice alone", p99_ms=p99["alone"], path="pod2@hv1 -> pod4@hv2")
        iso = lab_isolation.Rows(self)
        elephant = self.iperf(600, 5205, rate="100M")     # killed when the phase ends
        iso.started(5205)
        for row in lab_isolation.ROUNDS:
            label = {"b": "(b) beside the elephant", "d": "(d) isolated on hv1"}[row]
            iso.measure(row, lambda: measure(label))
        p99["beside the elephant"] = lab_isolation.median(iso.p99["b"])
        r.event("mice beside the elephant", p99_ms=p99["beside the elephant"],
                rounds=iso.p99["b"])
        best, scores = self.extender_pick(["hv1", "hv3"])
        r.event("scheduler extender ranks nodes for a light mice pod", scores=json.dumps(scores),
                best=best)
        client = next(p for p, v in self.pods.items() if v["chassis"] == best
                      and v["workload"] == "lab/mice-client")
        iso.mark("placement", f"mice placed on {best}")
        p99["placed by ovsfoot"] = measure("(c) placed by ovsfoot", client)
        r.event("mice placed by ovsfoot", p99_ms=p99["placed by ovsfoot"], node=best)
        p99["isolated on hv1"] = lab_isolation.median(iso.p99["d"])
        r.event("mice beside the elephant, isolated on hv1", p99_ms=p99["isolated on hv1"],
                rounds=iso.p99["d"])
        elephant.kill()
        self.kill_traffic()
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

    def extender_pick(self, nodes: list[str], pod: dict | None = None) -> tuple[str, dict]:
        """Asks a real `ovsfoot scheduler-extender` on the cluster database to rank `nodes`
        for `pod` (a v1.Pod; default: a new replica of lab/mice-client)."""
        ext = subprocess.Popen([sys.executable, "-m", "ovsfoot", "scheduler-extender",
                                "--listen", "127.0.0.1:0", "--cluster-db", self.cluster_db,
                                *self.creds(EXTENDER), "--node-key", "name"],
                               stdout=subprocess.PIPE, text=True)
        try:
            url = ext.stdout.readline().rsplit(" ", 1)[1].strip()
            pod = pod or {"metadata": {"name": "mice-client-6c8d9f7b5c-new01",
                                       "namespace": "lab",
                                       "labels": {"pod-template-hash": "6c8d9f7b5c"},
                                       "ownerReferences": [{"kind": "ReplicaSet",
                                                            "name": "mice-client-6c8d9f7b5c"}]}}
            body = json.dumps({"Pod": pod, "NodeNames": nodes}).encode()

            def ask():
                req = urllib.request.Request(f"{url}/prioritize", body,
                                             {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=10) as resp:
                    scores = {h["Host"]: h["Score"] for h in json.load(resp)}
                return scores if len(set(scores.values())) > 1 else None
            try:
                scores = wait_for(ask, timeout=60, interval=1,
                                  what="footprints in the cluster database")
            except TimeoutError:
                with urllib.request.urlopen(f"{url}/healthz", timeout=10) as resp:
                    health = json.load(resp)
                try:
                    rows = json.dumps(self.cluster_rows("Chassis"))
                except RuntimeError as e:
                    rows = str(e)
                scores = {n: None for n in nodes}
                scores["why"] = f"extender {health}; cluster database Chassis: {rows}"
            best = max(nodes, key=lambda n: scores[n] or 0)
            return best, scores
        finally:
            ext.terminate()
            ext.wait()

    def ctnetlink_phase(self) -> None:
        """The ctnetlink source on the same chassis attributes the same kind of elephant."""
        r = self.report
        self.stop_agents()
        sh("ip", "netns", "exec", "hv1", "conntrack", "-F", check=False)
        self.spawn_agents("ctnetlink", ("hv1",))
        self.agents_ready()
        client = self.iperf(5, 5204)
        rows = []
        _try_wait(lambda: rows.extend(self.elephants("hv1")) or rows, 30)
        client.wait(60)
        self.kill_traffic()
        p1 = self.pods["pod1"]
        mine = [e for e in rows if e["port"] == p1["lport"]]
        r.check("ctnetlink source: same elephant attribution on hv1",
                bool(mine) and mine[0]["role"] == "source"
                and mine[0]["workload"] == p1["workload"],
                json.dumps(mine))
        self.stop_agents()

    def learned_class_phase(self) -> None:
        """A class learned on one chassis reaches another through the cluster database:
        hv2 has received elephant after elephant for lab/elephant-server (and learned it
        heavy); hv3, where it never ran, classes it heavy too."""
        r = self.report
        workload = self.pods["pod3"]["workload"]
        here = self.agents["hv2"].json("workload/show").get(workload, {})
        r.check(f"hv2 learned {workload} heavy", here.get("learned") == "heavy",
                json.dumps(here))
        rows = [row for row in self.cluster_rows("Workload_Class") if row["workload"] == workload]
        seen = {}

        def classed():
            seen.update(self.agents["hv3"].json("workload/show").get(workload, {}))
            return seen.get("cluster") == "heavy" and seen.get("learned") == "heavy"
        ok = _try_wait(classed, 20)
        r.event("learned class in the cluster database", workload=workload,
                rows=json.dumps(rows), hv3=seen.get("learned"))
        r.check(f"hv3 classes {workload} heavy, learned on hv2 (cluster database)", ok,
                json.dumps({"hv3": seen, "Workload_Class": rows}))

    # -- traffic classes: throughput and flow rate ------------------------------
    def workload(self, client: str, server: str, port: int, *args: str) -> None:
        """integration/traffic.py's client `args` on pod `client` against a sink on `server`."""
        self.bg(server, sys.executable, TRAFFIC, "serve", self.pods[server]["ip"], str(port))
        wait_for(lambda: f":{port}" in sh("ip", "netns", "exec", server, "ss", "-ltn"),
                 what="the traffic sink")
        self.bg(client, sys.executable, TRAFFIC, args[0], self.pods[server]["ip"], str(port),
                *args[1:])

    def port_traffic(self, pod: str) -> dict:
        """The pod's port as its chassis' agent shows it (footprint/show json)."""
        p = self.pods[pod]
        return self.agents[p["chassis"]].json("footprint/show")["ports"][p["lport"]]

    def traffic_phase(self) -> None:
        """Many medium flows (heavy without an elephant: pod1 -> pod3), a loop of short
        RPC connections (sensitive: pod2 -> pod4), an idle pod (light: pod5), each
        measured in the kernel, published and learned; then the extender ranks a
        sensitive, a light and a heavy pod with what the chassis published."""
        r = self.report
        for a in self.agents.values():
            a.appctl("threshold/set", f"heavy-bps={LAB_HEAVY_BPS}")
        r.event("traffic phase: heavy-bps lowered for the emulated VM", bps=LAB_HEAVY_BPS)
        self.workload("pod1", "pod3", 7001, "shuffle", *SHUFFLE, str(TRAFFIC_S))
        self.workload("pod2", "pod4", 7002, "rpc", RPC_RATE, str(TRAFFIC_S))
        seen: dict[str, dict] = {}

        def classed():
            seen.update({pod: self.port_traffic(pod) for pod in ("pod1", "pod2", "pod5")})
            return seen["pod1"]["traffic"] == "heavy" and seen["pod2"]["traffic"] == "sensitive"
        ok = _try_wait(classed, TRAFFIC_S - 10)
        snap = {hv: self.published(hv) for hv in self.chassis}
        r.event("traffic classes", **{pod: json.dumps({k: v[k] for k in (
            "class", "traffic", "bps", "flows_per_s", "elephants")}) for pod, v in seen.items()})
        p2 = self.pods["pod2"]
        keys = {p: snap[self.pods[p]["chassis"]]["interfaces"][self.pods[p]["lport"]]
                for p in ("pod1", "pod2", "pod5")}
        r.check("many medium flows: pod1 heavy by throughput, without an elephant",
                ok and seen["pod1"]["elephants"] == 0
                and int(keys["pod1"].get("ovsfoot-bps", 0)) >= LAB_HEAVY_BPS / 2,
                json.dumps({"shown": seen.get("pod1"), "published": keys["pod1"]}))
        r.check("RPC loop: pod2 sensitive, published",
                ok and keys["pod2"].get("ovsfoot-footprint") == "sensitive"
                and int(keys["pod2"].get("ovsfoot-flows-per-s", 0)) >= 20,
                json.dumps({"shown": seen.get("pod2"), "published": keys["pod2"]}))
        # (pod5 is a replica of pod2's workload: once that is learned sensitive, pod5's
        # footprint is too, by design; its own traffic stays light)
        r.check("idle pod5: its traffic stays light", seen["pod5"]["traffic"] == "light"
                and keys["pod5"].get("ovsfoot-bps") == "0", json.dumps(keys["pod5"]))
        learned = {}

        def learned_sensitive():
            learned.update(self.agents["hv1"].json("workload/show").get(p2["workload"], {}))
            return learned.get("learned") == "sensitive"
        r.check(f"hv1 learned {p2['workload']} sensitive", _try_wait(learned_sensitive, 60),
                json.dumps(learned))
        scores = {}
        for klass in ("sensitive", "light", "heavy"):
            pod = {"metadata": {"name": f"new-{klass}", "namespace": "lab",
                                "labels": {"ovsfoot.io/footprint": klass}}}
            scores[klass] = self.extender_pick(list(CHASSIS), pod)[1]
        r.event("extender scores by pod class", **{k: json.dumps(v) for k, v in scores.items()})
        s, li, h = scores["sensitive"], scores["light"], scores["heavy"]
        r.check("extender: the sensitive pod ranks the quiet hv3 first, and minds the busy "
                "chassis more than a light pod",
                all(isinstance(x.get(hv), int) for x in (s, li, h) for hv in CHASSIS)
                and s["hv3"] > max(s["hv1"], s["hv2"])
                and all(s[hv] < li[hv] for hv in ("hv1", "hv2")), json.dumps(scores))
        r.check("extender: the heavy pod ranks hv3, without sensitive pods, first",
                isinstance(h.get("hv3"), int) and h["hv3"] > max(h.get("hv1") or 0,
                                                                 h.get("hv2") or 0),
                json.dumps(h))
        self.kill_traffic()

    # -- what OVN and OVS spend ------------------------------------------------
    def counters(self) -> dict[str, dict[str, int]]:
        """The counters now: ovn-controller and ovs-vswitchd of every chassis,
        ovn-northd of the central node (see COST_COUNTERS)."""
        out = {}
        for hv, ovs in self.chassis.items():
            c = ovn_snapshot(ovs, None)
            out[hv] = {"ovn-controller": c.controller, "ovs-vswitchd": c.vswitchd_reconfigures}
        out["central"] = {"ovn-northd": northd_recomputes(self.central)}
        return out

    def costed(self, label: str, fn, seconds: float | None = None) -> float:
        """Runs fn(), then idles until `seconds` have passed (if given), and records
        what OVN and OVS spent meanwhile as ovn_cost[label]; returns the seconds taken."""
        northd_log = self.central / "ovn-northd.log"
        offset = northd_log.stat().st_size
        before, t0 = self.counters(), time.monotonic()
        fn()
        if seconds is not None:
            time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        took = time.monotonic() - t0
        after = self.counters()
        spent = {node: {d: after[node][d] - n for d, n in daemons.items()}
                 for node, daemons in before.items()}
        cost = self.report.data.setdefault("ovn_cost", {"counters": COST_COUNTERS})
        cost[label] = {"seconds": round(took, 1), **spent}
        why = recompute_reasons(northd_log, offset)
        self.report.data.setdefault("northd_recompute_reasons", {})[label] = why
        self.report.event(f"OVN/OVS cost of the {label} phase", seconds=round(took, 1),
                          **{n: ",".join(f"{d}={v}" for d, v in x.items())
                             for n, x in spent.items()},
                          **({"northd_why": json.dumps(why)} if why else {}))
        return took

    def control_phase(self) -> None:
        """The elephant phase's traffic (elephant and mice), with no agent running."""
        if self.agents:
            raise RuntimeError(f"agents still running on {', '.join(self.agents)}")
        _, mice = self.mice(ELEPHANT_S + 6)
        client = self.iperf(ELEPHANT_S, 5206)
        r = self.report
        r.event("control: elephant and mice again, no agents", src="pod1@hv1", dst="pod3@hv2")
        client.wait(60)
        mice.wait(60)
        self.kill_traffic()

    def probe_phase(self) -> None:
        """What ovsfoot no longer does, to show that the counters see it: a key set on
        hv3's Open_vSwitch row, then removed (--no-wait: ovs-vswitchd need not reload)."""
        ovs = self.chassis["hv3"]
        for change in (("set", "Open_vSwitch", ".", "external_ids:ovsfoot-lab-probe=1"),
                       ("remove", "Open_vSwitch", ".", "external_ids", "ovsfoot-lab-probe")):
            ovs.vsctl("--no-wait", *change)
            time.sleep(2)           # ovn-controller handles each change on its own

    def judge_cost(self) -> None:
        """No more recomputes or reconfigurations with the agents than without them."""
        r = self.report
        cost = self.report.data.get("ovn_cost", {})
        control, agents = cost.get("control"), cost.get("agents")
        if not (control and agents):
            r.check("OVN cost measured in a control phase and with the agents", False,
                    f"measured: {', '.join(k for k in cost if k != 'counters') or 'nothing'}")
            return
        for node in (*self.chassis, "central"):
            more = {d: f"{n} with the agents > {control[node][d]} without"
                    for d, n in agents[node].items() if n > control[node][d]}
            r.check(f"{node}: the agents cost no recompute ({', '.join(agents[node])}: "
                    f"no more than the control phase)", not more,
                    json.dumps(more or {"agents": agents[node], "control": control[node]}))
        probe = cost.get("probe", {}).get("hv3", {})
        r.check("the counters see a recompute: two writes of hv3's Open_vSwitch row",
                probe.get("ovn-controller", 0) >= 1, json.dumps(probe))

    def run(self) -> Report:
        try:
            self.build()
            self.agents_ready()
            lab_isolation.isolate(self, False)      # compiled at start; on only in row (d)
            took = self.costed("agents", self.elephant_phase)
            self.threshold_phase()
            self.ipv6_phase()
            self.experiment_phase()
            self.learned_class_phase()
            self.traffic_phase()
            self.ctnetlink_phase()              # stops the agents
            self.costed("control", self.control_phase, seconds=took)
            self.costed("probe", self.probe_phase)
            self.judge_cost()
        except Exception as e:          # the report says what went wrong
            self.report.check("lab ran to the end", False, f"{type(e).__name__}: {e}")
            for hv, a in self.agents.items():
                print(f"--- {hv} agent log ---\n{a.log_text()[-3000:]}", flush=True)
        finally:
            self.kill_traffic()
            self.stop_agents()
            self.teardown()
            logs = self.work / "logs"
            for log in self.rundir.glob("*/*.log"):
                (logs / log.parent.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(log, logs / log.parent.name / log.name)
        return self.report


def _try_wait(pred, timeout) -> bool:
    try:
        wait_for(pred, timeout=timeout, interval=0.2)
        return True
    except TimeoutError:
        return False


def _iperf_mbits(text: str) -> float | None:
    try:
        return round(json.loads(text)["end"]["sum_received"]["bits_per_second"] / 1e6, 1)
    except (ValueError, KeyError, TypeError):
        return None


def main() -> int:
    work = Path(sys.argv[1])
    report = Lab(work).run()
    report.save(work / "lab-report.json")
    return 0 if all(c["ok"] for c in report.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
