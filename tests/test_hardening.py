"""Issue 12, items 1, 3 and 9: what a hostile or careless environment must not do.

1. An OVSDB server that accepts and never answers, or an address whose SYN goes
   nowhere, must not hold the library (`api.Node(timeout=...)`), the CNI plugin or
   the agent beyond their bounds: one deadline for all comma-separated remotes,
   the first server that answers wins, and the agent says in its log that it waits.
   The hung server is a Python socket that accepts and reads nothing; the
   unroutable addresses live in a network namespace made here (one with no
   route, one where the SYN is dropped on the wire).
3. nan, inf and out-of-range thresholds are refused everywhere (command line,
   `threshold/set`, the eBPF map) before anything changes, naming the range.
9. A `--state` that is a directory (or a FIFO, or ends in /) is refused at start,
   exit 1 with what to do, and nothing is renamed.

Real ovsdb-server (integration/sandbox.py) and real `ovsfoot agent` processes.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from integration.agentproc import AgentProcess
from integration.sandbox import Ovs, kill_pidfile, sh, wait_for
from ovsfoot.events import MAX_BYTES, MAX_SECONDS, Thresholds
from ovsfoot.learning import StateFile
from ovsfoot.sources.replay import Recorder

REPO = Path(__file__).resolve().parents[1]
TAG = f"ofh{os.getpid() % 10000}"
PLUGIN = str(Path(sys.executable).parent / "ovsfoot-cni")
BLACKHOLED = "tcp:198.51.100.2:6640"    # the SYN is dropped on the wire: no answer
NO_ROUTE = "tcp:203.0.113.9:6640"       # no route at all


class HungServer:
    """A unix socket that accepts connections and never answers: a hung ovsdb-server."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.remote = f"unix:{path}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.conns: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(conn)         # read nothing, answer nothing

    def close(self) -> None:
        if self._stop:
            return
        self._stop = True
        self._thread.join(2)
        self.sock.close()
        for c in self.conns:
            c.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


@pytest.fixture
def hung(tmp_path):
    h = HungServer(tmp_path / "hung.sock")
    yield h
    h.close()


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A real ovsdb-server with the Open_vSwitch database (no vswitchd)."""
    ovs = Ovs(tmp_path_factory.mktemp("hardening") / "ovs").start_db()
    yield ovs
    ovs.stop_all()


@pytest.fixture(scope="module")
def netns():
    """A network namespace where BLACKHOLED hangs and NO_ROUTE fails at once."""
    ns = f"{TAG}bh"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # A veth pair whose far end takes nothing: a permanent neighbour with a MAC
        # nobody has, so the SYN leaves and is dropped (no ARP failure, no ICMP).
        sh("ip", "-n", ns, "link", "add", "bh0", "type", "veth", "peer", "name", "bh1")
        sh("ip", "-n", ns, "addr", "add", "198.51.100.1/24", "dev", "bh0")
        sh("ip", "-n", ns, "link", "set", "bh0", "up")
        sh("ip", "-n", ns, "link", "set", "bh1", "up")
        sh("ip", "-n", ns, "neigh", "add", "198.51.100.2", "lladdr", "02:00:5e:00:53:02",
           "dev", "bh0", "nud", "permanent")
        yield ns
    finally:
        sh("ip", "netns", "del", ns, check=False)


def run_py(code: str, *args: str, netns: str | None = None, timeout: float = 30,
           env: dict | None = None) -> dict:
    """Runs `code` in a fresh Python (in `netns`); returns the JSON it prints.

    A hang is a TimeoutExpired, so a test fails rather than blocks."""
    cmd = [sys.executable, "-c", code, *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                       env=env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


NODE = """
import json, sys, time
from ovsfoot import api
t = time.monotonic()
try:
    with api.Node(sys.argv[1], timeout=float(sys.argv[2])) as node:
        out = {"ok": node.idl.has_ever_connected()}
except api.Error as e:
    out = {"ok": False, "type": type(e).__name__, "error": str(e)}
out["elapsed"] = time.monotonic() - t
print(json.dumps(out))
"""

SCHEMA = """
import json, sys, time
from ovsfoot.ovsdb import fetch_schema
t = time.monotonic()
try:
    out = {"ok": True, "name": fetch_schema(sys.argv[1], "Open_vSwitch",
                                            int(sys.argv[2]))["name"]}
except OSError as e:
    out = {"ok": False, "error": str(e.strerror or e)}
out["elapsed"] = time.monotonic() - t
print(json.dumps(out))
"""


# -- 1. bounded OVSDB connects ---------------------------------------------------
def test_api_node_gives_up_on_a_hung_server_within_its_timeout(hung):
    r = run_py(NODE, hung.remote, "2")
    assert not r["ok"] and r["type"] == "DatabaseUnavailable", r
    assert 1.5 <= r["elapsed"] < 3.5, r
    assert f"no answer from {hung.remote}" in r["error"], r


def test_one_deadline_for_all_remotes(netns, tmp_path):
    """Two hung servers, a dropped SYN and no route: DatabaseUnavailable in 2 s, not 2 s
    per remote (nor forever), naming each remote."""
    h1, h2 = HungServer(tmp_path / "h1.sock"), HungServer(tmp_path / "h2.sock")
    try:
        remotes = [BLACKHOLED, h1.remote, NO_ROUTE, h2.remote]
        r = run_py(NODE, ",".join(remotes), "2", netns=netns)
    finally:
        h1.close()
        h2.close()
    assert not r["ok"] and r["type"] == "DatabaseUnavailable", r
    assert 1.5 <= r["elapsed"] < 3.5, r
    for remote in remotes:
        assert remote in r["error"], (remote, r)
    assert "unreachable" in r["error"].lower(), r        # NO_ROUTE said why


def test_a_hung_or_unroutable_member_does_not_starve_the_others(netns, db, tmp_path):
    h = HungServer(tmp_path / "h.sock")
    try:
        r = run_py(SCHEMA, f"{BLACKHOLED},{h.remote},{NO_ROUTE},{db.remote}", "5000",
                   netns=netns)
    finally:
        h.close()
    assert r["ok"] and r["name"] == "Open_vSwitch", r
    assert r["elapsed"] < 1.5, r


def test_api_node_still_connects_to_a_real_server(db):
    r = run_py(NODE, db.remote, "2")
    assert r["ok"], r


def test_cni_add_passes_through_in_time_on_a_hung_db(hung, tmp_path):
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.99.9.5/24"}]}
    conf = {"cniVersion": "1.0.0", "name": "podnet", "type": "ovsfoot-cni",
            "ovsdb": hung.remote, "timeout": 1, "logFile": str(tmp_path / "cni.log"),
            "prevResult": prev}
    env = {**{k: os.environ[k] for k in ("PATH", "PYTHONPATH") if k in os.environ},
           "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee12",
           "CNI_NETNS": "/var/run/netns/whatever", "CNI_IFNAME": "eth0",
           "CNI_ARGS": "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0"}
    t = time.monotonic()
    p = subprocess.run([PLUGIN], input=json.dumps(conf), env=env, capture_output=True,
                       text=True, timeout=30)
    elapsed = time.monotonic() - t
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == prev
    assert elapsed < 5, elapsed                         # 1 s of OVSDB, and Python's start
    assert hung.path in (tmp_path / "cni.log").read_text()


def test_agent_says_it_waits_for_a_hung_db_and_starts_once_it_answers(tmp_path, netns):
    """The agent's own database may keep it waiting at start, but never silently, and
    each attempt is bounded: when the hung server gives way to a real one, it runs."""
    ovs = Ovs(tmp_path / "ovs")
    h = HungServer(ovs.db_sock)
    agent = AgentProcess(ovs, "--source=ctnetlink", f"--netns={netns}", "--interval=0.5")
    try:
        agent.spawn()
        wait_for(lambda: "waiting for ovsdb-server" in agent.log_text(), timeout=20,
                 what="the agent to say it waits for ovsdb-server")
        assert f"no answer from {h.remote}" in agent.log_text()
        assert agent.alive()
        h.close()
        ovs.start_db()
        agent.wait_ready(30)
        assert "answered after" in agent.log_text()
        assert agent.stop() == 0
    finally:
        h.close()
        agent.kill()
        ovs.stop_all()


# -- 3. thresholds: finite and in range --------------------------------------------
BAD_SETS = [["idle=nan"], ["seconds=inf"], ["seconds=nan"], ["idle=-inf"], ["idle=1e400"],
            [f"bytes={10**26}"], [f"bytes={2**64}"], ["seconds=1e11"], ["bytes=1e7"],
            ["bytes=5000", "seconds=nan"]]


@pytest.fixture(scope="module")
def agent(db, netns):
    a = AgentProcess(db, "--source=ctnetlink", f"--netns={netns}", "--interval=0.5",
                     "--elephant-bytes=5000000", "--elephant-seconds=2",
                     "--idle-seconds=7").start()
    yield a
    a.stop()
    a.kill()


def appctl(ovs: Ovs, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ovs-appctl", "-t", "ovsfoot", *args], env=ovs.env,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("args", BAD_SETS, ids=[" ".join(a) for a in BAD_SETS])
def test_threshold_set_refuses_non_finite_and_out_of_range(agent, args):
    before = agent.json("threshold/show")
    p = appctl(agent.ovs, "threshold/set", *args)
    assert p.returncode != 0, (args, p.stdout)
    assert "thresholds not changed" in p.stderr, p.stderr
    name = args[-1].split("=")[0]
    assert name in p.stderr
    assert "number" in p.stderr
    if "bad argument" not in p.stderr:                  # a number, but out of range
        assert {"bytes": f"to {MAX_BYTES}", "seconds": "to 1e+10",
                "idle": "<= 1e+10"}[name] in p.stderr, p.stderr
    assert agent.json("threshold/show") == before
    assert agent.alive()


def test_threshold_set_takes_the_limits_themselves(agent):
    before = agent.json("threshold/show")
    try:
        agent.appctl("threshold/set", f"bytes={MAX_BYTES}", "seconds=1e10", "idle=1e10",
                     "heavy-bps=1e15", "sensitive-flows=1e9",
                     f"sensitive-flow-bytes={MAX_BYTES}", "window=3600")
        assert agent.json("threshold/show") == {
            "bytes": MAX_BYTES, "seconds": 1e10, "idle_seconds": 1e10, "heavy_bps": 1e15,
            "sensitive_flows": 1e9, "sensitive_flow_bytes": MAX_BYTES, "window": 3600}
    finally:
        agent.appctl("threshold/set", f"bytes={before['bytes']}",
                     f"seconds={before['seconds']}", f"idle={before['idle_seconds']}",
                     f"heavy-bps={before['heavy_bps']}", f"window={before['window']}",
                     f"sensitive-flows={before['sensitive_flows']}",
                     f"sensitive-flow-bytes={before['sensitive_flow_bytes']}")


BAD_OPTIONS = [("agent", "--elephant-seconds=nan"), ("agent", "--idle-seconds=inf"),
               ("agent", f"--elephant-bytes={10**26}"), ("agent", "--elephant-seconds=1e11"),
               ("agent", "--idle-seconds=0"), ("agent", "--heavy-at=inf"),
               ("agent", "--half-life=nan"), ("agent", "--interval=nan"),
               ("record", "--duration=nan"), ("record", "--idle-seconds=nan"),
               ("agent", "--heavy-bps=nan"), ("agent", "--rate-window=1e5"),
               ("agent", "--sensitive-flows=inf"), ("agent", "--sensitive-flow-bytes=0")]


@pytest.mark.parametrize("command,option", BAD_OPTIONS, ids=[o for _, o in BAD_OPTIONS])
def test_command_line_refuses_non_finite_and_out_of_range(db, tmp_path, command, option):
    Recorder(str(tmp_path / "empty.msgpack"), "test").close()    # what record replays
    extra = (["-o", str(tmp_path / "rec.msgpack"), "--source=replay",
              f"--replay={tmp_path / 'empty.msgpack'}"] if command == "record"
             else [f"--db={db.remote}", f"--state={tmp_path / 'state'}",
                   f"--unixctl={tmp_path / 'ctl'}", "--source=ctnetlink"])
    p = subprocess.run([sys.executable, "-m", "ovsfoot", command, *extra, option],
                       env=db.env, capture_output=True, text=True, timeout=20, cwd=REPO)
    assert p.returncode != 0, (option, p.stdout, p.stderr)
    assert option.split("=")[0] in p.stderr and "out of range" in p.stderr, p.stderr
    assert "finite number" in p.stderr or "whole number" in p.stderr, p.stderr


def test_bpf_map_never_gets_a_truncated_threshold():
    """The kernel map holds u64 bytes and ns: ctypes would keep the low 64 bits of a
    larger number (2**64 bytes: 0, every flow an elephant). Such values are refused
    before the map is written; the limits themselves are written as they are."""
    from ovsfoot.sources.bpf import BpfSource

    class ConfigLeaf(ctypes.Structure):     # struct config in bpf/ovsfoot_ct.c
        _fields_ = [("bytes", ctypes.c_uint64), ("age_ns", ctypes.c_uint64),
                    ("netns", ctypes.c_uint32), ("zone0", ctypes.c_uint32)]

    class ConfigMap(dict):              # bcc's table: ctypes keys and leaves
        Leaf = ConfigLeaf
        Key = ctypes.c_int

        def __setitem__(self, key, leaf):
            super().__setitem__(key.value, leaf)

    class MapOnly(BpfSource):           # the map without the kernel: no bcc on this host
        bpf = {"config": ConfigMap()}
        netns_inode, include_zone0 = 4026531840, False

        def __init__(self):
            pass

    src = MapOnly()
    src.set_thresholds(Thresholds(MAX_BYTES, MAX_SECONDS, 1.0))
    (leaf,) = src.bpf["config"].values()
    assert (leaf.bytes, leaf.age_ns) == (MAX_BYTES, int(MAX_SECONDS * 1e9))
    for bad in (Thresholds(2**64, 1.0), Thresholds(10**26, 1.0), Thresholds(1, float("inf")),
                Thresholds(1, float("nan")), Thresholds(1, MAX_SECONDS * 2)):
        src.bpf["config"].clear()
        with pytest.raises(ValueError, match="must be a"):
            src.set_thresholds(bad)
        assert not src.bpf["config"]                   # nothing written


# -- 9. the state path ---------------------------------------------------------------
def agent_cmd(db: Ovs, tmp_path: Path, state: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovsfoot", "agent", f"--db={db.remote}",
                           f"--state={state}", f"--unixctl={tmp_path / 'ctl'}",
                           "--source=ctnetlink", "--detach", "--no-chdir",
                           f"--pidfile={tmp_path / 'agent.pid'}"],
                          env=db.env, capture_output=True, text=True, timeout=20, cwd=REPO)


def test_state_directory_is_refused_at_start_and_never_renamed(db, tmp_path):
    d = tmp_path / "state"
    d.mkdir()
    (d / "keep").write_text("mine")
    try:
        p = agent_cmd(db, tmp_path, str(d))
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert f"--state: state file {d} is a directory: name a file, e.g. " \
               f"{d / 'state.msgpack'}" in p.stderr, p.stderr
        assert (d / "keep").read_text() == "mine"
        assert [x.name for x in tmp_path.iterdir() if x.name.startswith("state")] == ["state"]
    finally:
        kill_pidfile(tmp_path / "agent.pid", signal.SIGKILL)


@pytest.mark.parametrize("kind", ["fifo", "trailing slash", "below a file"])
def test_other_state_paths_that_cannot_be_a_file_are_refused(db, tmp_path, kind):
    if kind == "fifo":              # opening it would block the agent for ever
        state = tmp_path / "state.fifo"
        os.mkfifo(state)
        state, expect = str(state), "is not a regular file"
    elif kind == "trailing slash":  # a directory is meant: not a file named after it
        state, expect = f"{tmp_path}/new-dir/", "is a directory"
    else:
        (tmp_path / "afile").write_text("x")
        state, expect = f"{tmp_path}/afile/state", f"{tmp_path}/afile is not a directory"
    try:
        p = agent_cmd(db, tmp_path, state)
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert expect in p.stderr, p.stderr
        assert not list(tmp_path.glob("*corrupt*")) and not (tmp_path / "new-dir").exists()
    finally:
        kill_pidfile(tmp_path / "agent.pid", signal.SIGKILL)


def test_state_file_that_became_a_directory_is_left_alone(tmp_path):
    path = tmp_path / "state.msgpack"
    sf = StateFile(str(path))
    sf.save({"shop/web": {"score": 3.0, "updated": 1, "heavy": True, "elephants": 3}})
    path.unlink()
    path.mkdir()                        # after the agent checked it
    assert sf.load() == {}
    assert path.is_dir() and not list(tmp_path.glob("*corrupt*"))
    sf.save({})                         # cannot replace a directory: logged, nothing left
    assert path.is_dir() and sorted(x.name for x in tmp_path.iterdir()) == ["state.msgpack"]

