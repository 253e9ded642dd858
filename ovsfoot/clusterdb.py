"""`ovsfoot cluster-db`: one command per member of the cluster view's own
clustered (raft) OVSDB, database `OVSFoot_Cluster` (schema: cluster.ovsschema).

    ovsfoot cluster-db start --dir DIR --local ssl:IP[:PORT] [--join ssl:IP[:PORT],...]
                             [--chassis-remote pssl:PORT[:IP]] [--remote TARGET]...
                             --private-key F --certificate F --ca-cert F [--detach]
    ovsfoot cluster-db stop --dir DIR
    ovsfoot cluster-db status --dir DIR

`start` creates DIR/cluster.db when it is missing (`ovsdb-tool create-cluster` on
the first member, `ovsdb-tool join-cluster` with --join), then runs ovsdb-server
with its pidfile, log, control socket and admin socket (punix:DIR/db.sock) in DIR,
and the remotes of the Cluster_Global.connections rows, which carry the RBAC role
`ovsfoot-chassis` (ovsdb-server 3.1 applies a role only to such remotes). The
first member (no --join) then inserts, idempotently, the Cluster_Global row, the
Connection row (`--chassis-remote`, role ovsfoot-chassis) and the role: a chassis,
identified by the CN of its certificate, may insert, update and delete only its
own Chassis row (name = CN) and its own Workload_Class rows (chassis = CN).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

DB_NAME = "OVSFoot_Cluster"
ROLE = "ovsfoot-chassis"
RAFT_PORT = 6648          # member to member (raft)
CHASSIS_PORT = 6647       # agents and readers (the RBAC'd Connection)
DB_FILE = "cluster.db"
SERVER = "ovsdb-server"   # pidfile, log and ctl socket names in DIR

# table -> (authorization columns, insert_delete, updatable columns)
PERMISSIONS: dict[str, tuple[list[str], bool, list[str]]] = {
    "Chassis": (["name"], True, ["hostname", "footprint", "elephants", "heavy_ports",
                                 "sensitive_ports", "bps", "flows_per_s", "updated"]),
    "Workload_Class": (["chassis"], True, ["learned", "score", "updated"]),
}

_TOOLS = {"ovsdb-tool": "openvswitch-common", "ovsdb-server": "openvswitch-common",
          "ovsdb-client": "openvswitch-common", "ovs-appctl": "openvswitch-common"}
_HOST = (r"(?:\[[0-9A-Fa-f:.]+\]|[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
         r"|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)")
_RAFT_RE = re.compile(rf"^(?:(tcp|ssl):)?({_HOST})(?::([0-9]+))?$")
_LISTEN_RE = re.compile(rf"^(ptcp|pssl):([0-9]+)(?::({_HOST}))?$")


class ClusterDbError(Exception):
    """A problem the operator can fix; the message says how."""


# ----------------------------------------------------------------------------
# helpers

def _tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin", "/usr/local/sbin")
         if os.access(p := os.path.join(d, name), os.X_OK)), None)
    if not path:
        raise ClusterDbError(f"{name} not found: install the {_TOOLS.get(name, name)} "
                             f"package (Debian/Ubuntu: apt-get install {_TOOLS.get(name, name)})")
    return path


def _run(*cmd: str, check=True, timeout=60) -> subprocess.CompletedProcess:
    exe = _tool(cmd[0])
    p = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode:
        raise ClusterDbError(f"{' '.join(cmd)} failed: {p.stderr.strip() or p.stdout.strip()}")
    return p


@contextlib.contextmanager
def schema_path():
    """The packaged cluster.ovsschema as a file path (also from a zipped wheel)."""
    ref = importlib.resources.files("ovsfoot").joinpath("cluster.ovsschema")
    with importlib.resources.as_file(ref) as path:
        yield str(path)


def _port(text: str | None, default: int, what: str) -> int:
    if text is None:
        return default
    port = int(text)
    if not 0 < port < 65536:
        raise ClusterDbError(f"bad port {port} in {what}: expected 1..65535")
    return port


def _parts(regex: re.Pattern, text: str, what: str, expected: str) -> tuple:
    """The groups of `regex` matched on `text`, or ClusterDbError saying `expected`."""
    m = regex.match(text.strip())
    if not m:
        raise ClusterDbError(f"bad {what} {text!r}: expected {expected}")
    return m.groups()


def _check_host(host: str, what: str, expected: str) -> str:
    bare = host[1:-1] if host.startswith("[") else host
    if host.startswith("[") or re.fullmatch(r"[0-9.]+", host):
        try:
            ip = ipaddress.ip_address(bare)
        except ValueError:
            raise ClusterDbError(f"bad address {what!r}: {bare!r} is not an IP address; "
                                 f"expected {expected}") from None
        if ip.version == 6 and not host.startswith("["):
            raise ClusterDbError(f"bad address {what!r}: write IPv6 as [ADDR]; expected {expected}")
    return host


def raft_address(text: str, ssl: bool) -> str:
    """`tcp:IP[:PORT]`, `ssl:IP[:PORT]` or `IP[:PORT]` -> `ssl:IP:PORT` / `tcp:IP:PORT`."""
    expected = (f"{'ssl' if ssl else 'tcp'}:IP[:PORT] (e.g. {'ssl' if ssl else 'tcp'}:"
                f"192.0.2.11:{RAFT_PORT}, IPv6 as [ADDR], PORT defaults to {RAFT_PORT})")
    scheme, host, port = _parts(_RAFT_RE, text, "raft address", expected)
    scheme = scheme or ("ssl" if ssl else "tcp")
    if scheme == "ssl" and not ssl:
        raise ClusterDbError(f"raft address {text!r} is ssl: but no --private-key, "
                             "--certificate and --ca-cert were given")
    if scheme == "tcp" and ssl:
        raise ClusterDbError(f"raft address {text!r} is tcp: but SSL keys were given: "
                             f"expected {expected}")
    _check_host(host, text, expected)
    return f"{scheme}:{host}:{_port(port, RAFT_PORT, text)}"


def listen_target(text: str | None, ssl: bool) -> str:
    """The chassis remote: `pssl:PORT[:IP]` (or `ptcp:PORT[:IP]` without SSL)."""
    kind = "pssl" if ssl else "ptcp"
    if text is None:
        return f"{kind}:{CHASSIS_PORT}"
    expected = f"{kind}:PORT[:IP] (e.g. {kind}:{CHASSIS_PORT} or {kind}:{CHASSIS_PORT}:192.0.2.11)"
    scheme, port, host = _parts(_LISTEN_RE, text, "chassis remote", expected)
    if scheme != kind:
        raise ClusterDbError(f"chassis remote {text!r}: expected {expected}"
                             + ("" if ssl else "; pssl: needs --private-key, --certificate "
                                               "and --ca-cert"))
    if host:
        _check_host(host, text, expected)
    _port(port, CHASSIS_PORT, text)
    return text.strip()


def _ssl_options(args) -> list[str]:
    files = {"--private-key": args.db_private_key, "--certificate": args.db_certificate,
             "--ca-cert": args.db_ca_cert}
    given = {k: v for k, v in files.items() if v}
    if not given:
        return []
    if len(given) != 3:
        missing = ", ".join(k for k in files if k not in given)
        raise ClusterDbError(f"SSL needs --private-key, --certificate and --ca-cert: "
                             f"missing {missing}")
    opts = []
    for opt, path in given.items():
        p = Path(path).resolve()
        if not p.is_file():
            raise ClusterDbError(f"{opt} {path}: no such file")
        opts.append(f"{opt}={p}")
    return opts


class Paths:
    def __init__(self, directory: str):
        self.dir = Path(directory).resolve()
        self.db = self.dir / DB_FILE
        self.pidfile = self.dir / f"{SERVER}.pid"
        self.log = self.dir / f"{SERVER}.log"
        self.ctl = self.dir / f"{SERVER}.ctl"
        self.sock = self.dir / "db.sock"
        self.admin = f"unix:{self.sock}"

    def pid(self) -> int | None:
        """The pid of the running ovsdb-server, if any."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError, IndexError):
            return None


# ----------------------------------------------------------------------------
# bootstrap rows: Cluster_Global, Connection, RBAC role

def _set(value) -> list:
    """An OVSDB JSON set (or a bare atom) as a list."""
    if isinstance(value, list) and value and value[0] == "set":
        return list(value[1])
    return [value]


def _map(value) -> dict:
    return {k: v for k, v in value[1]} if isinstance(value, list) and value[0] == "map" else {}


def _transact(admin: str, ops: list, query=False) -> list:
    p = _run("ovsdb-client", "--timeout=30", "query" if query else "transact", admin,
             json.dumps([DB_NAME, *ops]))
    result = json.loads(p.stdout)
    errors = [r for r in result if isinstance(r, dict) and "error" in r]
    if errors:
        raise ClusterDbError(f"transaction on {admin} failed: {errors}")
    return result


def setup_ops(rows: list, target: str) -> list:
    """The operations that make the bootstrap rows what they should be (none if they are)."""
    glob, conns, roles, perms = (r["rows"] for r in rows)
    ops: list = []
    perm_by_uuid = {p["_uuid"][1]: p for p in perms}

    def perm_ok(uuid, table):
        p = perm_by_uuid.get(uuid[1])
        auth, ins_del, upd = PERMISSIONS[table]
        return (p is not None and p["table"] == table and sorted(_set(p["authorization"])) ==
                sorted(auth) and p["insert_delete"] == ins_del and sorted(_set(p["update"]))
                == sorted(upd))

    role_ok = (len(roles) == 1 and set(_map(roles[0]["permissions"])) == set(PERMISSIONS)
               and all(perm_ok(u, t) for t, u in _map(roles[0]["permissions"]).items()))
    if not role_ok:
        for role in roles:
            for u in _map(role["permissions"]).values():
                ops.append({"op": "delete", "table": "RBAC_Permission",
                            "where": [["_uuid", "==", u]]})
        if roles:
            ops.append({"op": "delete", "table": "RBAC_Role", "where": [["name", "==", ROLE]]})
        for table, (auth, ins_del, upd) in PERMISSIONS.items():
            ops.append({"op": "insert", "table": "RBAC_Permission",
                        "uuid-name": f"perm_{table}",
                        "row": {"table": table, "authorization": ["set", auth],
                                "insert_delete": ins_del, "update": ["set", upd]}})
        ops.append({"op": "insert", "table": "RBAC_Role",
                    "row": {"name": ROLE, "permissions": ["map", [
                        [t, ["named-uuid", f"perm_{t}"]] for t in PERMISSIONS]]}})

    # RBAC names a client by its certificate's CN: without SSL there is no name to
    # match, and a role would refuse every write, so the connection gets none
    role = ROLE if target.startswith("pssl:") else ""
    by_uuid = {c["_uuid"][1]: c for c in conns}
    current = [by_uuid[u[1]] for u in _set(glob[0]["connections"]) if u[1] in by_uuid] \
        if glob else []
    ours = [c for c in current if c["target"] == target and c["role"] == role
            and not c["read_only"]]
    stale = [c for c in current if c["role"] == ROLE and c not in ours]
    if ours and not stale:
        return ops
    keep = [["uuid", c["_uuid"][1]] for c in current if c["role"] != ROLE
            and c["target"] != target]
    existing = next((c for c in conns if c["target"] == target), None)
    if existing:                    # the target is unique: reuse the row
        ops.append({"op": "update", "table": "Connection",
                    "where": [["_uuid", "==", existing["_uuid"]]],
                    "row": {"role": role, "read_only": False}})
        mine = existing["_uuid"]
    else:
        ops.append({"op": "insert", "table": "Connection", "uuid-name": "conn",
                    "row": {"target": target, "role": role, "read_only": False}})
        mine = ["named-uuid", "conn"]
    row = {"connections": ["set", [*keep, mine]]}
    if glob:
        ops.append({"op": "update", "table": "Cluster_Global", "where": [], "row": row})
    else:
        ops.append({"op": "insert", "table": "Cluster_Global", "row": row})
    return ops


def bootstrap(admin: str, target: str) -> bool:
    """Inserts or repairs the bootstrap rows; True if anything changed."""
    rows = _transact(admin, [
        {"op": "select", "table": "Cluster_Global", "where": []},
        {"op": "select", "table": "Connection", "where": []},
        {"op": "select", "table": "RBAC_Role", "where": [["name", "==", ROLE]]},
        {"op": "select", "table": "RBAC_Permission", "where": []}], query=True)
    ops = setup_ops(rows, target)
    if ops:
        _transact(admin, ops)
    return bool(ops)


# ----------------------------------------------------------------------------
# commands

def _wait_connected(paths: Paths, seconds: float) -> None:
    p = _run("ovsdb-client", f"--timeout={max(1, int(seconds))}", "wait", paths.admin,
             DB_NAME, "connected", check=False, timeout=seconds + 10)
    if p.returncode:
        raise ClusterDbError(
            f"{DB_NAME} did not connect to its cluster within {seconds:.0f} s (is a majority "
            f"of the members up and reachable?); ovsdb-server keeps trying, see {paths.log} "
            f"and `ovsfoot cluster-db status --dir {paths.dir}`")


def start(args) -> int:
    ssl_opts = _ssl_options(args)
    ssl = bool(ssl_opts)
    local = raft_address(args.local, ssl)
    joins = [raft_address(a, ssl) for a in ",".join(args.join or []).split(",") if a.strip()]
    target = listen_target(args.chassis_remote, ssl)
    paths = Paths(args.dir)
    for name in _TOOLS:
        _tool(name)
    paths.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    if (pid := paths.pid()):
        raise ClusterDbError(f"an ovsdb-server already runs in {paths.dir} (pid {pid}): "
                             f"`ovsfoot cluster-db stop --dir {paths.dir}` first")
    if not paths.db.exists():
        if joins:
            if local in joins:
                raise ClusterDbError(f"--join lists this member's own address {local}")
            _run("ovsdb-tool", "join-cluster", str(paths.db), DB_NAME, local, *joins)
            print(f"{paths.db}: joining the cluster at {','.join(joins)} as {local}")
        else:
            with schema_path() as schema:
                _run("ovsdb-tool", "create-cluster", str(paths.db), schema, local)
            print(f"{paths.db}: created a new cluster, first member {local}")
    else:
        if _run("ovsdb-tool", "db-is-clustered", str(paths.db), check=False).returncode:
            raise ClusterDbError(f"{paths.db} exists but is not a clustered database")
        have = _run("ovsdb-tool", "db-local-address", str(paths.db)).stdout.strip()
        if have != local:
            raise ClusterDbError(f"{paths.db} belongs to member {have}, not {local}: "
                                 "use the same --local as when it was created")

    cmd = [_tool("ovsdb-server"), str(paths.db), f"--pidfile={paths.pidfile}",
           f"--log-file={paths.log}", f"--unixctl={paths.ctl}", f"--remote=punix:{paths.sock}",
           f"--remote=db:{DB_NAME},Cluster_Global,connections", *ssl_opts,
           *[f"--remote={r}" for r in args.remote or []]]
    cmd += [f"-v{v}" for v in args.verbose_spec or []]
    if args.no_chdir or not args.detach:
        cmd.append("--no-chdir")
    if args.monitor:
        cmd.append("--monitor")

    if args.detach:
        p = subprocess.run([*cmd, "--detach"], capture_output=True, text=True, timeout=120)
        if p.returncode:
            raise ClusterDbError(f"ovsdb-server failed to start: {p.stderr.strip()} "
                                 f"(see {paths.log})")
        _after_start(args, paths, joins, target)
        return 0

    server = subprocess.Popen(cmd)
    forwarded = []

    def forward(signum, _frame):
        forwarded.append(signum)
        server.send_signal(signum)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    try:
        deadline = time.monotonic() + 30
        while not paths.sock.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise ClusterDbError(f"ovsdb-server failed to start (see {paths.log})")
            time.sleep(0.05)
        _after_start(args, paths, joins, target)
    except ClusterDbError as e:
        print(f"ovsfoot cluster-db: {e}", file=sys.stderr)
    rc = server.wait()
    return 0 if rc < 0 and -rc in forwarded else rc      # stopped by us: a clean exit


def upgrade_schema(admin: str) -> bool:
    """Converts the running database to the packaged schema if it is older (an
    upgrade adds columns); True if it did. Online: members and clients stay."""
    with schema_path() as schema:
        need = _run("ovsdb-client", "--timeout=30", "needs-conversion", admin, schema)
        if need.stdout.strip() != "yes":
            return False
        _run("ovsdb-client", "--timeout=60", "convert", admin, schema)
    return True


def _after_start(args, paths: Paths, joins: list[str], target: str) -> None:
    if args.wait <= 0 and joins:
        return
    _wait_connected(paths, args.wait if args.wait > 0 else 60)
    if upgrade_schema(paths.admin):
        print(f"{DB_NAME}: converted to the schema of this version of ovsfoot")
    if not joins:
        if bootstrap(paths.admin, target):
            print(f"{DB_NAME}: chassis connection {target}"
                  + (f" with RBAC role {ROLE}" if target.startswith("pssl:") else ""))
        if not target.startswith("pssl:"):
            print(f"{DB_NAME}: WARNING: without SSL no client has a name, so RBAC cannot keep "
                  f"a chassis to its own rows: anyone who reaches {target} may write any row. "
                  "Give --private-key, --certificate and --ca-cert in production.",
                  file=sys.stderr)
    print(f"{DB_NAME} member running in {paths.dir} (admin socket {paths.admin})")


def stop(args) -> int:
    paths = Paths(args.dir)
    pid = paths.pid()
    if not pid:
        print(f"no ovsdb-server running in {paths.dir}")
        return 0
    p = _run("ovs-appctl", "-t", str(paths.ctl), "exit", check=False, timeout=15)
    if p.returncode:
        os.kill(pid, signal.SIGTERM)
    if not wait_exit(pid, 10):
        os.kill(pid, signal.SIGKILL)
    return 0


def wait_exit(pid: int, seconds: float) -> bool:
    """Whether process `pid` is gone within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def status(args) -> int:
    paths = Paths(args.dir)
    if not paths.pid():
        print(f"no ovsdb-server running in {paths.dir}", file=sys.stderr)
        return 1
    p = _run("ovs-appctl", "-t", str(paths.ctl), "cluster/status", DB_NAME, check=False,
             timeout=15)
    sys.stdout.write(p.stdout)
    sys.stderr.write(p.stderr)
    return p.returncode


def add_parser(sub) -> argparse.ArgumentParser:
    """Adds `cluster-db` (start/stop/status) to the `ovsfoot` subcommands."""
    c = sub.add_parser("cluster-db", help="run a member of the cluster view's clustered OVSDB",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = c.add_subparsers(dest="action", required=True)

    s = csub.add_parser("start", help="create or join the cluster and run this member")
    s.add_argument("--dir", required=True, help="where the database, pidfile, log and "
                   "sockets live (created if missing)")
    s.add_argument("--local", required=True, metavar="ADDR",
                   help=f"this member's raft address, ssl:IP[:PORT] (tcp: without SSL; "
                        f"PORT defaults to {RAFT_PORT})")
    s.add_argument("--join", action="append", metavar="ADDR[,ADDR...]",
                   help="raft addresses of members already in the cluster: join it "
                        "(without --join: create a new cluster, this is its first member)")
    s.add_argument("--chassis-remote", metavar="TARGET",
                   help=f"where agents connect, with the RBAC role {ROLE} (first member "
                        f"only; default pssl:{CHASSIS_PORT}, ptcp:{CHASSIS_PORT} without SSL)")
    s.add_argument("--remote", action="append", metavar="TARGET",
                   help="another listening remote, without a role (e.g. punix:PATH); repeatable")
    s.add_argument("--private-key", dest="db_private_key", metavar="FILE",
                   help="this member's SSL private key")
    s.add_argument("--certificate", dest="db_certificate", metavar="FILE",
                   help="this member's SSL certificate")
    s.add_argument("--ca-cert", dest="db_ca_cert", metavar="FILE",
                   help="CA certificate that signed the members' and the chassis' certificates")
    s.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="wait this long for the member to connect to the cluster (default 60; "
                        "0: do not wait, joining members only)")
    s.add_argument("--detach", action="store_true", help="run ovsdb-server in the background")
    s.add_argument("--monitor", action="store_true", help="restart ovsdb-server if it crashes")
    s.add_argument("--no-chdir", action="store_true", help="(with --detach) keep the directory")
    s.add_argument("--verbose-spec", action="append", metavar="SPEC",
                   help="ovsdb-server -vSPEC, e.g. raft:dbg; repeatable")
    s.set_defaults(cluster_db=start)

    for name, func, text in (("stop", stop, "stop this member's ovsdb-server"),
                             ("status", status, "cluster/status of this member")):
        x = csub.add_parser(name, help=text)
        x.add_argument("--dir", required=True, help="the member's directory")
        x.set_defaults(cluster_db=func)
    c.set_defaults(verbose=0, log_file=None)
    return c


def run(args) -> int:
    try:
        return args.cluster_db(args)
    except ClusterDbError as e:
        print(f"ovsfoot cluster-db: {e}", file=sys.stderr)
        return 1
