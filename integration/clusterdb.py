"""ovsfoot's clustered OVSDB (`OVSFoot_Cluster`, raft) for tests and the lab.

`ClusterDbSandbox` runs each member in its own network namespace, started with
`ovsfoot cluster-db start` (the command operators run), because every member
listens on the targets of the same Connection rows (the RBAC'd chassis remote):
on one host they would clash. The namespaces hang off a Linux bridge in the root
namespace, which holds .254 of a private /24 (172.31.77.0/24 unless that is taken),
so that clients here reach members at .1, .2, .3.

An `ovs-pki` PKI in the workdir signs one certificate per member and, on demand,
one per chassis (`client_creds(name)`: CN = exactly `name`), all from the switch CA;
`foreign_creds(name)` are signed by another CA that the members do not trust.

`ClusterDb` is one standalone server of the same schema, on a unix socket, for tests
that need the database and not raft.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from integration.programs import require
from integration.sandbox import Daemons, free_port, kill_pidfile, sh, wait_for
from ovsfoot.contract import cluster_schema_path

DB = "OVSFoot_Cluster"
CLIENT_PORT = 6647
RAFT_PORT = 6648


@dataclass
class Member:
    index: int
    name: str           # also the CN of its certificate
    netns: str
    ip: str
    dir: Path
    veth: str           # the bridge side of its veth pair
    scheme: str         # ssl or tcp

    @property
    def raft(self) -> str:
        return f"{self.scheme}:{self.ip}:{RAFT_PORT}"

    @property
    def remote(self) -> str:
        """Where chassis connect to this member (the RBAC'd Connection)."""
        return f"{self.scheme}:{self.ip}:{CLIENT_PORT}"

    @property
    def admin(self) -> str:
        """The member's local admin socket, without a role (reachable from any netns)."""
        return f"unix:{self.dir / 'db.sock'}"

    @property
    def ctl(self) -> str:
        return str(self.dir / "ovsdb-server.ctl")


class ClusterDb(Daemons):
    """A standalone OVSFoot_Cluster server (the schema agents and extenders use), with
    the rows written as agents publish them."""

    def __init__(self, workdir: Path):
        super().__init__(workdir, {"OVS_RUNDIR": str(workdir), "OVS_LOGDIR": str(workdir)})
        self.remote = f"unix:{self.dir / 'db.sock'}"

    def start_db(self) -> "ClusterDb":
        require("ovsdb-tool", "ovsdb-server", "ovsdb-client")
        sh("ovsdb-tool", "create", str(self.dir / "cluster.db"), cluster_schema_path())
        self.start("db", "ovsdb-server", str(self.dir / "cluster.db"),
                   f"--remote=punix:{self.dir / 'db.sock'}", f"--unixctl={self.dir / 'db.ctl'}")
        wait_for(lambda: (self.dir / "db.sock").exists(), what="cluster DB socket")
        return self

    def transact(self, *ops) -> list:
        out = json.loads(sh("ovsdb-client", "transact", self.remote, json.dumps([DB, *ops])))
        if any(isinstance(r, dict) and "error" in r for r in out):
            raise RuntimeError(f"transaction failed: {out}")
        return out

    def set_chassis(self, name: str, hostname: str = "", **cols) -> None:
        """Inserts or updates a chassis' summary row."""
        row = {"footprint": "light", "elephants": 0, "heavy_ports": 0, **cols,
               "updated": time.time_ns() // 1_000_000}
        where = [["name", "==", name]]
        if self.transact({"op": "select", "table": "Chassis", "where": where})[0]["rows"]:
            self.transact({"op": "update", "table": "Chassis", "where": where, "row": row})
        else:
            self.transact({"op": "insert", "table": "Chassis",
                           "row": {"name": name, "hostname": hostname, **row}})

    def set_class(self, chassis: str, workload: str, learned: str | None) -> None:
        where = [["chassis", "==", chassis], ["workload", "==", workload]]
        self.transact({"op": "delete", "table": "Workload_Class", "where": where})
        if learned:
            self.transact({"op": "insert", "table": "Workload_Class", "row": {
                "chassis": chassis, "workload": workload, "learned": learned, "score": 1.0,
                "updated": time.time_ns() // 1_000_000}})

    def chassis(self) -> set[str]:
        """The names of the Chassis rows."""
        rows = self.transact({"op": "select", "table": "Chassis", "where": [],
                              "columns": ["name"]})[0]["rows"]
        return {r["name"] for r in rows}


_SANDBOXES = itertools.count()


def _free_subnet(first: int = 77) -> str:
    used = sh("ip", "-4", "route", "show", "table", "all") + sh("ip", "-4", "-o", "addr")
    for n in [*range(first, 255), *range(16, first)]:
        if f"172.31.{n}." not in used:
            return f"172.31.{n}"
    raise RuntimeError("no free 172.31.N.0/24 for the cluster sandbox")


class ClusterDbSandbox:
    """`members` OVSFoot_Cluster members, each in its own network namespace."""

    def __init__(self, workdir, members: int = 3, ssl: bool = True, subnet: str | None = None):
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ssl = ssl
        # unique per sandbox: two in one test process must not clean up each other
        self.tag = f"ofc{os.getpid() % 10000}{next(_SANDBOXES) % 10}"
        self.bridge = f"{self.tag}br"
        self.subnet = subnet            # "172.31.77"; chosen by start() when None
        self.pki = self.workdir / "pki"
        self.foreign_pki = self.workdir / "pki-foreign"
        self.n = members
        self.members: list[Member] = []
        self._relays: list[Path] = []

    # -- PKI -----------------------------------------------------------------

    def _sign(self, pki: Path, name: str) -> tuple[str, str, str]:
        certs = pki / "certs"
        key, cert = certs / f"{name}-privkey.pem", certs / f"{name}-cert.pem"
        ca = pki / "switchca" / "cacert.pem"
        if not ca.exists():
            sh("ovs-pki", "-d", str(pki), "-l", str(pki) + ".log", "--force", "init")
        if not cert.exists():
            certs.mkdir(parents=True, exist_ok=True)
            for stale in (key, certs / f"{name}-req.pem"):
                stale.unlink(missing_ok=True)
            p = subprocess.run(["ovs-pki", "-d", str(pki), "-l", str(pki) + ".log", "-u",
                                "req+sign", name, "switch"], cwd=certs, capture_output=True,
                               text=True, timeout=60)
            if p.returncode:
                raise RuntimeError(f"ovs-pki req+sign {name} failed: {p.stderr.strip()}")
        return str(key), str(cert), str(ca)

    def client_creds(self, name: str) -> tuple[str, str, str]:
        """(private key, certificate, CA certificate) of chassis `name` (CN = name)."""
        return self._sign(self.pki, name)

    def foreign_creds(self, name: str) -> tuple[str, str, str]:
        """Like client_creds, but signed by a CA the members do not trust; the CA
        certificate returned is the cluster's, so the client trusts the server."""
        key, cert, _ = self._sign(self.foreign_pki, name)
        return key, cert, str(self.pki / "switchca" / "cacert.pem")

    # -- network -------------------------------------------------------------

    def cleanup_leftovers(self) -> None:
        """Removes namespaces and the bridge an earlier run with our prefix left."""
        for line in sh("ip", "netns", "list", check=False).splitlines():
            ns = line.split()[0] if line.split() else ""
            if re.fullmatch(rf"{self.tag}m\d+", ns):
                self._kill_netns(ns)
        sh("ip", "link", "del", self.bridge, check=False)

    @staticmethod
    def _kill_netns(ns: str) -> None:
        for pid in sh("ip", "netns", "pids", ns, check=False).split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "del", ns, check=False)

    def _network(self) -> None:
        self.subnet = self.subnet or _free_subnet()
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        scheme = "ssl" if self.ssl else "tcp"
        for i in range(self.n):
            m = Member(i, f"db{i + 1}", f"{self.tag}m{i + 1}", f"{self.subnet}.{i + 1}",
                       self.workdir / f"db{i + 1}", f"{self.tag}m{i + 1}", scheme)
            sh("ip", "netns", "add", m.netns)
            sh("ip", "-n", m.netns, "link", "set", "lo", "up")
            sh("ip", "link", "add", m.veth, "type", "veth", "peer", "name", "eth0",
               "netns", m.netns)
            sh("ip", "link", "set", m.veth, "master", self.bridge, "up")
            sh("ip", "-n", m.netns, "addr", "add", f"{m.ip}/24", "dev", "eth0")
            sh("ip", "-n", m.netns, "link", "set", "eth0", "up")
            self.members.append(m)

    # -- members -------------------------------------------------------------

    def start(self) -> "ClusterDbSandbox":
        require("ip", "ovs-pki", "ovsdb-tool", "ovsdb-server", "ovs-appctl")
        self.cleanup_leftovers()
        self.members.clear()
        self._network()
        for m in self.members:
            if self.ssl:
                self._sign(self.pki, m.name)
            self.start_member(m.index)
        wait_for(lambda: self.leader() is not None
                 and all(self.servers(m.index) == self.n for m in self.members),
                 timeout=60, what=f"a {self.n}-member cluster with a leader")
        return self

    def start_args(self, i: int) -> list[str]:
        """The `ovsfoot cluster-db start` arguments of member i (what an operator runs)."""
        m = self.members[i]
        args = ["--dir", str(m.dir), "--local", m.raft]
        if i:
            args += ["--join", ",".join(x.raft for x in self.members[:i])]
        if self.ssl:
            key, cert, ca = self._sign(self.pki, m.name)
            args += ["--private-key", key, "--certificate", cert, "--ca-cert", ca]
        return args

    def start_member(self, i: int) -> None:
        m = self.members[i]
        sh("ip", "netns", "exec", m.netns, sys.executable, "-m", "ovsfoot", "cluster-db",
           "start", "--detach", *self.start_args(i), timeout=120)

    def stop_member(self, i: int) -> None:
        sh(sys.executable, "-m", "ovsfoot", "cluster-db", "stop", "--dir",
           str(self.members[i].dir), timeout=30)

    def running(self, i: int) -> bool:
        try:
            os.kill(int((self.members[i].dir / "ovsdb-server.pid").read_text()), 0)
            return True
        except (OSError, ValueError):
            return False

    def status(self, i: int) -> str:
        """`cluster/status` of member i ("" when it is not running)."""
        if not self.running(i):
            return ""
        return sh("ovs-appctl", "-t", self.members[i].ctl, "cluster/status", DB,
                  check=False, timeout=10)

    def servers(self, i: int) -> int:
        """How many servers member i's cluster/status lists."""
        out = self.status(i)
        part = out.split("Servers:", 1)[1] if "Servers:" in out else ""
        return sum(1 for line in part.splitlines() if " at " in line)

    def leader(self) -> int | None:
        """The index of the member that is leader now, if any."""
        for m in self.members:
            if "Role: leader" in self.status(m.index):
                return m.index
        return None

    @property
    def remote(self) -> str:
        """All members' chassis remotes: `ssl:IP:6647,...` (what agents are given)."""
        return ",".join(m.remote for m in self.members)

    # -- clients -------------------------------------------------------------

    def client(self, *args: str, creds: tuple[str, str, str] | None = None,
               check: bool = True, timeout: float = 30) -> str:
        """Runs ovsdb-client with `creds` (private key, certificate, CA certificate)."""
        opts = []
        if creds:
            opts = [f"--private-key={creds[0]}", f"--certificate={creds[1]}",
                    f"--ca-cert={creds[2]}"]
        return sh("ovsdb-client", f"--timeout={int(timeout)}", *opts, *args, check=check,
                  timeout=timeout + 5)

    def transact(self, chassis: str | None, ops: list, remote: str | None = None) -> list:
        """A transaction as chassis `chassis` (None: on the leader's admin socket),
        on `remote` (default: all members); returns the result list, errors included."""
        if chassis is None:
            remote = remote or self.members[self.leader() or 0].admin
            creds = None
        else:
            remote = remote or self.remote
            creds = self.client_creds(chassis)
        out = self.client("transact", remote, json.dumps([DB, *ops]), creds=creds)
        return json.loads(out)

    def rows(self, table: str, where=(), remote: str | None = None) -> list[dict]:
        """Rows of `table` read through the admin socket of a running member (or `remote`)."""
        if remote is None:
            m = next(m for m in self.members if self.running(m.index))
            remote = m.admin
        out = self.client("query", remote, json.dumps(
            [DB, {"op": "select", "table": table, "where": list(where)}]))
        return json.loads(out)[0]["rows"]

    def relay(self, name: str = "relay", port: int | None = None) -> str:
        """Starts an ovsdb-server relay of the cluster (connected as chassis `name`)
        listening on 127.0.0.1; returns its remote, `tcp:127.0.0.1:PORT`, once the
        relay has connected to the cluster."""
        port = port or free_port()
        d = self.workdir / name
        d.mkdir(exist_ok=True)
        pidfile = d / "ovsdb-server.pid"
        opts = []
        if self.ssl:
            key, cert, ca = self.client_creds(name)
            opts = [f"--private-key={key}", f"--certificate={cert}", f"--ca-cert={ca}"]
        sh("ovsdb-server", f"relay:{DB}:{self.remote}", f"--remote=ptcp:{port}:127.0.0.1",
           f"--remote=punix:{d / 'db.sock'}", f"--unixctl={d / 'ovsdb-server.ctl'}",
           f"--pidfile={pidfile}", f"--log-file={d / 'ovsdb-server.log'}", "--detach",
           "--no-chdir", *opts)
        self._relays.append(pidfile)
        remote = f"tcp:127.0.0.1:{port}"
        self.client("wait", remote, DB, "connected", timeout=30)
        return remote

    # -- teardown ------------------------------------------------------------

    def destroy(self) -> None:
        for pidfile in self._relays:
            kill_pidfile(pidfile)
        for m in self.members:
            kill_pidfile(m.dir / "ovsdb-server.pid")
            self._kill_netns(m.netns)
        self.cleanup_leftovers()        # also what a start() that failed half-way made
