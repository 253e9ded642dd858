"""Real OVS and OVN daemons in a private run directory, for tests and the lab.

`Ovs` runs ovsdb-server and ovs-vswitchd (userspace datapath unless told
otherwise): a bare OVS node. The OVN nodes are built by vagrant/provision/, the
scripts of the VM lab and of the Vagrant lab's hypervisors: `OvnCentral` (NB, SB,
ovn-northd) by central.sh, and `Ovs.join_ovn()` makes the node a chassis with
chassis.sh.
Pods are network namespaces on veth ports bound with `iface-id`.
Nothing here touches the system's own OVS: every daemon gets its own
OVS_RUNDIR / OVN_RUNDIR under `workdir`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from integration.programs import require
from ovsfoot.clusterdb import wait_exit

PROVISION = Path(__file__).resolve().parents[1] / "vagrant" / "provision"
OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


def sh(*cmd: str, env=None, check=True, timeout=60, input=None) -> str:
    """Runs a command; on failure raises with its stderr in the message."""
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                       input=input)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout.strip()


def wait_for(pred, timeout=30.0, interval=0.1, what="condition"):
    """Polls `pred` until it returns something true; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def text_or_empty(path: Path) -> str:
    """A file's text; "" while there is none (a log not written yet)."""
    try:
        return path.read_text()
    except OSError:
        return ""


def wait_or_kill(proc: subprocess.Popen, timeout: float) -> None:
    """Waits up to `timeout` s for a child process to exit, then kills it."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def terminate(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM to a child process that still runs; SIGKILL if it has not exited in time."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        wait_or_kill(proc, timeout)


def kill(*procs: subprocess.Popen | None) -> None:
    """SIGKILL to the child processes that still run, and reaps them."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()


def kill_pidfile(pidfile: Path, sig=signal.SIGTERM, wait=5.0) -> None:
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    if wait_exit(pid, wait):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Daemons:
    """A run directory and the daemons started in it."""

    def __init__(self, workdir: Path, env_extra: dict[str, str]):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **env_extra}
        self.pidfiles: list[Path] = []

    def start(self, name: str, *args: str) -> Path:
        """Starts a detached OVS-style daemon with pidfile and log file in the dir."""
        pidfile = self.dir / f"{name}.pid"
        sh(*args, f"--pidfile={pidfile}", f"--log-file={self.dir / name}.log", "--detach",
           "--no-chdir", env=self.env)
        if pidfile not in self.pidfiles:
            self.pidfiles.append(pidfile)
        return pidfile

    def provision(self, script: str, *args: str, daemons: tuple[str, ...]) -> None:
        """Runs vagrant/provision/`script` in lab mode on this run directory; stop_all
        stops the `daemons` it starts (their pidfile names)."""
        require("bash", "ip")
        sh("bash", str(PROVISION / script), "--rundir", str(self.dir), *args, env=self.env,
           timeout=120)
        for name in daemons:
            if self.dir / f"{name}.pid" not in self.pidfiles:
                self.pidfiles.append(self.dir / f"{name}.pid")

    def stop(self, name: str) -> None:
        kill_pidfile(self.dir / f"{name}.pid")

    def stop_all(self) -> None:
        for pidfile in reversed(self.pidfiles):
            kill_pidfile(pidfile)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OvnCentral(Daemons):
    """An OVN central node: the NB and SB databases and ovn-northd, started by
    vagrant/provision/central.sh without an address: clients use the databases' unix
    sockets, which any network namespace reaches."""

    def __init__(self, workdir: Path):
        super().__init__(workdir, {"OVN_RUNDIR": str(workdir), "OVS_RUNDIR": str(workdir),
                                   "OVN_LOGDIR": str(workdir), "OVS_LOGDIR": str(workdir)})
        self.nb = f"unix:{self.dir / 'ovnnb_db.sock'}"
        self.sb = f"unix:{self.dir / 'ovnsb_db.sock'}"

    def start_all(self) -> "OvnCentral":
        require("ovsdb-tool", "ovsdb-server", "ovn-northd", "ovn-nbctl", "ovn-sbctl",
                "ovs-appctl")
        self.provision("central.sh", daemons=("ovnnb_db", "ovnsb_db", "ovn-northd"))
        return self

    def nbctl(self, *args: str) -> str:
        return sh("ovn-nbctl", f"--db={self.nb}", *args, env=self.env)

    def sbctl(self, *args: str) -> str:
        return sh("ovn-sbctl", f"--db={self.sb}", *args, env=self.env)


@dataclass
class Pod:
    name: str           # also the network namespace
    lport: str          # OVN logical port (iface-id)
    interface: str      # OVS Interface name
    ip: str


class Ovs(Daemons):
    """ovsdb-server + ovs-vswitchd; optionally an OVN chassis."""

    def __init__(self, workdir: Path, bridge: str = "br-int", datapath: str = "netdev",
                 netns: str | None = None):
        workdir = Path(workdir)
        super().__init__(workdir, {"OVS_RUNDIR": str(workdir), "OVS_LOGDIR": str(workdir),
                                   "OVS_DBDIR": str(workdir), "OVN_RUNDIR": str(workdir),
                                   "OVN_LOGDIR": str(workdir)})
        self.bridge, self.datapath, self.netns = bridge, datapath, netns
        self.db_sock = self.dir / "db.sock"
        self.remote = f"unix:{self.db_sock}"
        self.pods: dict[str, Pod] = {}
        self.vswitchd_running = False
        self.chassis: tuple[str, ...] = ()    # chassis.sh's NAME ENCAP_IP SOUTHBOUND

    def _in_ns(self, *cmd: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.netns, *cmd) if self.netns else cmd

    def start(self, name: str, *args: str) -> Path:
        return super().start(name, *self._in_ns(*args))

    def start_db(self) -> "Ovs":
        require("ovsdb-tool", "ovsdb-server", "ovs-vsctl", "ovs-appctl", "ip")
        db = self.dir / "ovsdb-server.db"
        if not db.exists():
            sh("ovsdb-tool", "create", str(db), OVS_SCHEMA)
        self.start("ovsdb-server", "ovsdb-server", str(db), f"--remote=punix:{self.db_sock}",
                   f"--unixctl={self.dir / 'ovsdb-server.ctl'}")
        wait_for(self.db_sock.exists, what="ovsdb-server socket")
        self.vsctl("init")
        return self

    def create_bridge(self) -> "Ovs":
        """The integration bridge, made before ovs-vswitchd starts (on the kernel
        datapath, OVS 3.1 + Linux 6.1 lose upcalls for bridges made later)."""
        self.vsctl("--may-exist", "add-br", self.bridge, "--", "set", "Bridge", self.bridge,
                   "fail-mode=secure", "other_config:disable-in-band=true",
                   f"datapath_type={self.datapath}")
        return self

    def start_vswitchd(self) -> "Ovs":
        require("ovs-vswitchd")
        self.vswitchd_running = True
        args = ["ovs-vswitchd", self.remote]
        if self.datapath == "netdev":
            args.append("--disable-system")
        self.start("ovs-vswitchd", *args)
        wait_for(lambda: list(self.dir.glob("ovs-vswitchd.*.ctl")), what="ovs-vswitchd")
        return self

    def vsctl(self, *args: str, check=True) -> str:
        wait = () if self.vswitchd_running else ("--no-wait",)
        return sh("ovs-vsctl", f"--db={self.remote}", "--timeout=20", *wait, *args,
                  env=self.env, check=check)

    def appctl(self, target: str, *args: str, check=True) -> str:
        return sh("ovs-appctl", "-t", target, *args, env=self.env, check=check, timeout=30)

    def external_ids(self, table: str, record: str) -> dict[str, str]:
        out = self.vsctl("--format=json", "--columns=external_ids", "list", table, record)
        data = json.loads(out)["data"][0][0]
        return dict(data[1])

    def join_ovn(self, central: OvnCentral, system_id: str,
                 encap_ip: str = "127.0.0.1") -> "Ovs":
        """Builds this node as an OVN chassis of `central`: ovsdb-server, the bridge,
        ovs-vswitchd and ovn-controller, started by vagrant/provision/chassis.sh."""
        self.chassis = (system_id, encap_ip, central.sb)
        return self.provision_chassis()

    def provision_chassis(self) -> "Ovs":
        """Runs chassis.sh (again): it starts whichever of the daemons does not run."""
        require("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovn-controller")
        netns = ("--netns", self.netns) if self.netns else ()
        self.provision("chassis.sh", *netns, "--datapath", self.datapath, "--bridge",
                       self.bridge, *self.chassis,
                       daemons=("ovsdb-server", "ovs-vswitchd", "ovn-controller"))
        self.vswitchd_running = True
        return self

    def zones(self) -> dict[str, int]:
        """The ct-zone-* map ovn-controller wrote on the integration bridge."""
        ids = self.external_ids("Bridge", self.bridge)
        return {k[len("ct-zone-"):]: int(v) for k, v in ids.items()
                if k.startswith("ct-zone-") and v.isdigit()}

    def add_pod(self, name: str, lport: str, ip: str, *, netns_prefix: str = "",
                extra_ids: dict[str, str] | None = None, mac: str | None = None,
                prefixlen: int | None = None, mtu: int = 1500) -> Pod:
        """A network namespace on a veth port of the integration bridge, bound to `lport`.

        With `prefixlen`, the pod's eth0 gets `ip` (and `mac`): its traffic then
        goes through OVN.
        """
        ns = netns_prefix + name
        iface = (netns_prefix + name if netns_prefix else f"{name}-ovs")[:15]   # unique per run
        sh("ip", "netns", "add", ns)
        sh(*self._in_ns("ip", "link", "add", iface, "type", "veth", "peer", "name", "eth0",
                        "netns", ns))
        sh(*self._in_ns("ip", "link", "set", iface, "up"))
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        if mac:
            sh("ip", "-n", ns, "link", "set", "eth0", "address", mac)
        if prefixlen:
            sh("ip", "-n", ns, "addr", "add", f"{ip}/{prefixlen}", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "mtu", str(mtu), "up")
        ids = {"iface-id": lport, **(extra_ids or {})}
        self.vsctl("add-port", self.bridge, iface, "--", "set", "Interface", iface,
                   *[f"external_ids:{k}=\"{v}\"" for k, v in ids.items()])
        pod = Pod(ns, lport, iface, ip)
        self.pods[name] = pod
        return pod

    def remove_pod(self, name: str) -> None:
        pod = self.pods.pop(name)
        self.vsctl("--if-exists", "del-port", self.bridge, pod.interface)
        sh("ip", "netns", "del", pod.name, check=False)

    def stop_all(self) -> None:
        super().stop_all()
        for name in list(self.pods):
            sh("ip", "netns", "del", self.pods.pop(name).name, check=False)
        # The userspace datapath leaves tap devices named after its bridges.
        for dev in (self.bridge, "ovs-netdev"):
            sh(*self._in_ns("ip", "link", "del", dev), check=False)
