"""The lab's nodes: the central node, ovsfoot's cluster database, three chassis, the
pods on them and an ovsfoot agent per chassis, built and torn down by
vagrant/provision/, the scripts that provision real hypervisors.

A central node (NB/SB databases, ovn-northd, and ovsfoot's cluster database:
three raft members of OVSFoot_Cluster) and three chassis, each in its own
network namespace with its own ovsdb-server, ovs-vswitchd on the kernel
datapath and ovn-controller, joined by an underlay bridge, tunnels in Geneve.
One logical switch with allow-related ACLs (so traffic goes through
conntrack) and five pods.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from integration.agentproc import AgentProcess
from integration.lab_report import Report
from integration.ovncost import northd_explain
from integration.programs import require
from integration.sandbox import PROVISION, Ovs, sh, wait_for

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
THRESHOLDS = ["--elephant-bytes=10000000", "--elephant-seconds=1", "--idle-seconds=2",
              "--interval=1"]
# Chassis whose agent isolates elephants on its underlay (row (d) of the experiment);
# started with --isolate so that the classifier is compiled at start, then off.
ISOLATING = ("hv1",)


class Nodes:
    """The lab's nodes, pods and agents; build() makes them, teardown() removes them."""

    def __init__(self, work: Path, run_dir: Path, report: Report):
        self.work = work            # shared with the host: reports and logs
        self.rundir = run_dir       # the VM's own: unix sockets cannot live on 9p
        self.report = report
        self.central = self.rundir / "central"
        # Made on the host before the VM boots (integration/lab.py), as the Vagrant lab
        # makes its keys on its host: RSA keys take long under emulation.
        self.pki = self.work / "pki"
        # ovsfoot's cluster database, for the agents and the scheduler extender
        self.cluster_db = ",".join(f"ssl:{ip}:{CLUSTER_PORT}" for ip in CLUSTER_DB.values())
        self.chassis: dict[str, Ovs] = {}
        self.pods: dict[str, dict] = {}
        self.agents: dict[str, AgentProcess] = {}

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
