"""Fixtures that start real OVS/OVN daemons and real kernel conntrack.

The host has no OVS kernel datapath and the userspace datapath's conntrack
keeps no byte counters, so traffic here runs through kernel conntrack in a
network namespace that puts it into the zones ovn-controller assigned
(integration/kernelpath.py): a stand-in for the kernel datapath, which the
VM lab (tests/test_lab.py) covers for real.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from integration.agentproc import AgentProcess
from integration.kernelpath import KernelPath
from integration.programs import require
from integration.sandbox import Ovs, OvnCentral, kill, sh, wait_for

UNIT = Path(__file__).resolve().parent / "unit"
TRAFFIC = str(Path(__file__).resolve().parents[1] / "integration" / "traffic.py")


def pytest_collection_modifyitems(config, items):
    """The system tests (everything but tests/unit) start OVS/OVN daemons, network
    namespaces and a VM: they need root. The unit tests run as anyone (`make unit`)."""
    system = [i for i in items if UNIT not in Path(str(i.fspath)).parents]
    for item in system:
        item.add_marker(pytest.mark.system)
    if system and os.geteuid() != 0:
        raise pytest.UsageError(f"{len(system)} system tests start OVS/OVN, network namespaces "
                                "and a VM: run them as root (`make test`), or only the unit "
                                "tests (`make unit`)")

# pod name -> (logical port, extra Interface external_ids, expected workload)
PODS = {
    "p1": ("shop_web-7d9f8b6c5d-x2x4z", {}, "shop/web"),
    "p2": ("shop_db-0", {}, "shop/db"),
    "p3": ("cache-port", {"ovsfoot-workload": "team-a/cache"}, "team-a/cache"),
    "p4": ("4f0c9a2e-vm-port", {"vm-id": "vm-42"}, "vm:vm-42"),
}
THRESHOLDS = ["--elephant-bytes=5000000", "--elephant-seconds=1", "--idle-seconds=2"]


@dataclass
class PodInfo:
    name: str
    ns: str
    lport: str
    interface: str
    workload: str
    zone: int = 0
    ip: str = ""
    ip6: str = ""


@dataclass
class Node:
    """One OVN chassis with pods, and the kernel conntrack path for their traffic."""

    central: OvnCentral
    ovs: Ovs
    kp: KernelPath
    prefix: str
    pods: dict[str, PodInfo] = field(default_factory=dict)

    def add_pod(self, name, lport, extra_ids, workload, index) -> PodInfo:
        self.central.nbctl("lsp-add", "ls1", lport, "--", "lsp-set-addresses", lport,
                           f"00:00:00:00:00:{index:02x} 10.0.0.{index}")
        pod = self.ovs.add_pod(name, lport, f"10.0.0.{index}", netns_prefix=self.prefix,
                               extra_ids=extra_ids)
        info = PodInfo(name, pod.name, lport, pod.interface, workload)
        info.zone = wait_for(lambda: self.ovs.zones().get(lport), what=f"zone of {lport}")
        port = self.kp.attach(pod.name, index, info.zone)
        info.ip, info.ip6 = port.ip, port.ip6
        if "vm-id" not in extra_ids:        # ovn-kubernetes records pod IPs like this
            self.ovs.vsctl("set", "Interface", pod.interface,
                           f"external_ids:ip_addresses=\"{info.ip}/24,{info.ip6}/64\"")
        self.pods[name] = info
        return info

    def ns_exec(self, pod: str, *cmd: str, **kw) -> str:
        return sh("ip", "netns", "exec", self.pods[pod].ns, *cmd, **kw)

    def popen(self, pod: str, *cmd: str) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.pods[pod].ns, *cmd],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def iperf(self, client: str, server: str, seconds: float = 3, rate: str = "300M",
              port: int = 5201, ipv6: bool = False, during=None):
        """An iperf3 flow from `client` to `server` (blocks until it is done).

        An elephant ends when its TCP connection closes: to look at one, pass
        `during`, which is called while the flow runs (for at most `seconds`); the
        flow is closed once it returns, and its value is returned."""
        dst = self.pods[server].ip6 if ipv6 else self.pods[server].ip
        require("iperf3", "ss")         # not a 30 s wait for a server that cannot start
        srv = self.popen(server, "iperf3", "-s", "-1", "-p", str(port))
        cli = None
        try:
            wait_for(lambda: f":{port}" in self.ns_exec(server, "ss", "-ltn"), what="iperf3 -s")
            cmd = ["iperf3", "-c", dst, "-p", str(port), "-t", str(seconds),
                   "-b", rate]
            if during is None:
                self.ns_exec(client, *cmd, timeout=seconds + 30)
                return None
            cli = self.popen(client, *cmd)
            value = during()
            cli.terminate()             # iperf3 closes its connections and exits
            cli.wait(30)
            return value
        finally:
            kill(cli, srv)

    def workload(self, client: str, server: str, port: int, *args: str):
        """integration/traffic.py's client `args` (shuffle ..., rpc ...) from `client`
        against a sink in `server`; returns both processes, running."""
        sink = self.popen(server, sys.executable, TRAFFIC, "serve", self.pods[server].ip,
                          str(port))
        wait_for(lambda: f":{port}" in self.ns_exec(server, "ss", "-ltn"), what="the sink")
        return sink, self.popen(client, sys.executable, TRAFFIC, args[0],
                                self.pods[server].ip, str(port), *args[1:])

    @contextlib.contextmanager
    def short_time_wait(self, seconds: int = 2):
        """Closed TCP entries stay `seconds` in the kernel path's conntrack (120 s by
        default), so that loops of short connections do not pile up entries until each
        ctnetlink dump takes seconds."""
        key = "net.netfilter.nf_conntrack_tcp_timeout_time_wait"
        before = sh("ip", "netns", "exec", self.kp.netns, "sysctl", "-n", key)
        sh("ip", "netns", "exec", self.kp.netns, "sysctl", "-qw", f"{key}={seconds}")
        try:
            yield
        finally:
            sh("ip", "netns", "exec", self.kp.netns, "sysctl", "-qw", f"{key}={before}")

    def flush_conntrack(self) -> None:
        sh("ip", "netns", "exec", self.kp.netns, "conntrack", "-F", check=False)

    def agent(self, *args: str, **kw) -> AgentProcess:
        return AgentProcess(self.ovs, "--source=ctnetlink", f"--netns={self.kp.netns}",
                            "--interval=0.2", *THRESHOLDS, *args, **kw)


def make_central(tmp: Path) -> OvnCentral:
    central = OvnCentral(tmp / "central").start_all()
    central.nbctl("ls-add", "ls1")
    central.nbctl("acl-add", "ls1", "from-lport", "1000", "ip", "allow-related")
    central.nbctl("acl-add", "ls1", "to-lport", "1000", "ip", "allow-related")
    return central


def make_node(tmp: Path, tag: str, central: OvnCentral | None = None, pods=PODS,
              encap_ip: str = "127.0.0.1") -> Node:
    """A chassis (own OVS, own bridge, own kernel path) with `pods` bound to OVN.

    Its ovs-vswitchd runs in a network namespace of its own: a second userspace
    datapath in one namespace (another chassis, another test run) clashes with
    the first on its tap devices. Chassis that share a central get their own
    `encap_ip` (SB allows one chassis per tunnel address)."""
    prefix = f"of{os.getpid() % 10000}{tag}-"
    central = central or make_central(tmp)
    netns = f"{prefix}ovs"
    sh("ip", "netns", "add", netns)
    sh("ip", "-n", netns, "link", "set", "lo", "up")
    node = Node(central, Ovs(tmp / f"hv-{tag}", bridge=f"br-{prefix[:-1]}"[:15], netns=netns),
                KernelPath(f"{prefix}dp"), prefix)
    try:                    # a failed set-up leaves no daemon behind
        node.ovs.join_ovn(central, f"hv-{prefix}", encap_ip=encap_ip)
        node.kp.create()
        for i, (name, (lport, ids, workload)) in enumerate(pods.items(), start=1):
            node.add_pod(name, lport, ids, workload, i)
    except BaseException:
        destroy_node(node)
        raise
    return node


def destroy_node(node: Node) -> None:
    node.ovs.stop_all()
    node.kp.destroy()
    if node.ovs.netns:
        sh("ip", "netns", "del", node.ovs.netns, check=False)


@pytest.fixture(scope="module")
def node(tmp_path_factory, request):
    tag = request.module.__name__.rsplit("_", 1)[-1][:3]
    tmp = tmp_path_factory.mktemp("node")
    n = make_node(tmp, tag)
    yield n
    destroy_node(n)
    n.central.stop_all()


@pytest.fixture
def agent(node):
    node.flush_conntrack()
    a = node.agent().start()
    yield a
    a.stop()
    node.flush_conntrack()


def wait_elephants(agent: AgentProcess, pred, timeout=30.0, what="elephants"):
    """Polls `elephant/list json` until `pred(list)` holds; returns the list."""
    def check():
        rows = agent.json("elephant/list")
        return (rows,) if pred(rows) else None
    return wait_for(check, timeout=timeout, interval=0.2, what=what)[0]


def time_ms() -> int:
    return time.time_ns() // 1_000_000
