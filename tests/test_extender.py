"""The kube-scheduler extender over real HTTP, against a real ovsfoot cluster database.

The Chassis and Workload_Class rows are written with ovsdb-client, as the agents
would publish them; the extender runs as a real `ovsfoot scheduler-extender`
process; requests have the shape kube-scheduler sends (ExtenderArgs with a
v1.Pod and a full v1.NodeList in `Nodes`, or `NodeNames` with nodeCacheCapable).
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from integration.clusterdb import ClusterDb
from integration.sandbox import wait_for

# chassis name -> (hostname, summary, learned classes); hv-d: no agent publishes
CHASSIS = {
    "hv-a": ("node-a", {"footprint": "light", "elephants": 0, "heavy_ports": 0},
             {"shop/api": "light"}),
    "hv-b": ("node-b", {"footprint": "heavy", "elephants": 2, "heavy_ports": 1},
             {"shop/web": "heavy"}),
    "hv-c": ("node-c", {"footprint": "heavy", "elephants": 0, "heavy_ports": 1}, {}),
}
NODES = ["node-a", "node-b", "node-c", "node-d", "node-x"]     # node-x: no chassis


class Extender:
    def __init__(self, db: ClusterDb, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ovsfoot", "scheduler-extender", "--listen=127.0.0.1:0",
             f"--cluster-db={db.remote}", f"--log-file={db.dir}/extender{len(args)}.log",
             *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        self.url = line.split()[-1]
        wait_for(lambda: self.get("/healthz")["synced"], what="extender synced with the DB")

    def get(self, path: str):
        """The JSON answer, also of a 503 (/healthz before the view is synced)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code != 503:
                raise
            return json.loads(e.read())

    def post(self, verb: str, body) -> tuple[int, object]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + verb, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def scores(self, pod, nodes=NODES, cache=False) -> dict[str, int]:
        status, out = self.post("/ovsfoot/prioritize", args(pod, nodes, cache))
        assert status == 200, out
        assert [h["Host"] for h in out] == list(nodes)
        assert all(isinstance(h["Score"], int) and 0 <= h["Score"] <= 10 for h in out)
        return {h["Host"]: h["Score"] for h in out}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def node_obj(name: str) -> dict:
    return {"metadata": {"name": name, "uid": f"uid-{name}",
                         "labels": {"kubernetes.io/hostname": name}},
            "spec": {"podCIDR": "10.244.0.0/24"},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def pod(name: str, namespace: str = "shop", labels=None, annotations=None,
        owner: tuple[str, str] | None = None) -> dict:
    meta = {"name": name, "namespace": namespace, "uid": f"uid-{name}",
            "labels": dict(labels or {}), "annotations": dict(annotations or {})}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0],
                                    "name": owner[1], "uid": "o-1", "controller": True,
                                    "blockOwnerDeletion": True}]
    return {"metadata": meta,
            "spec": {"containers": [{"name": "c", "image": "nginx"}],
                     "schedulerName": "default-scheduler"},
            "status": {"phase": "Pending"}}


def args(p: dict, nodes=NODES, cache=False) -> dict:
    if cache:
        return {"Pod": p, "Nodes": None, "NodeNames": list(nodes)}
    return {"Pod": p, "Nodes": {"kind": "NodeList", "apiVersion": "v1",
                                "metadata": {"resourceVersion": "1"},
                                "items": [node_obj(n) for n in nodes]},
            "NodeNames": None}


def best(scores: dict[str, int]) -> list[str]:
    return sorted(scores, key=lambda n: (-scores[n], n))


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    d = ClusterDb(tmp_path_factory.mktemp("clusterdb"))
    try:
        d.start_db()
        for name, (hostname, summary, classes) in CHASSIS.items():
            d.set_chassis(name, hostname, **summary)
            for workload, learned in classes.items():
                d.set_class(name, workload, learned)
        yield d
    finally:
        d.stop_all()


@pytest.fixture(scope="module")
def ext(db):
    e = Extender(db, "--assume-seconds=0")     # scores alone; assumed load has its own test
    yield e
    e.stop()


def test_light_pod_ranks_quiet_node_first_in_both_modes(ext):
    light = pod("frontend-6b8d9c7f5d-q2w4x", owner=("ReplicaSet", "frontend-6b8d9c7f5d"),
                labels={"pod-template-hash": "6b8d9c7f5d"})
    for cache in (False, True):
        scores = ext.scores(light, cache=cache)
        assert scores["node-a"] == 10                       # quiet
        assert best(scores)[0] == "node-a"
        assert scores["node-b"] < scores["node-c"] < scores["node-a"]
        assert scores["node-d"] == scores["node-x"] == 5    # no agent / no chassis: middle
    # nodeCacheCapable: a subset of names, answered for exactly those
    assert ext.scores(light, ["node-c", "node-b"], cache=True).keys() == {"node-c", "node-b"}


def test_filter_drops_nothing_by_default_and_answers_in_kind(ext):
    status, out = ext.post("/filter", args(pod("frontend-0"), NODES))
    assert status == 200
    assert [n["metadata"]["name"] for n in out["Nodes"]["items"]] == NODES
    assert out["Nodes"]["items"][0] == node_obj("node-a")     # nodes returned whole
    assert out["NodeNames"] is None and out["FailedNodes"] == {} and out["Error"] == ""
    assert out["FailedAndUnresolvableNodes"] == {}
    status, out = ext.post("/filter", args(pod("frontend-0"), NODES, cache=True))
    assert status == 200 and out["NodeNames"] == NODES and out["Nodes"] is None


def test_learned_heavy_workload_is_heavy_without_a_label(ext):
    """shop/web was learned heavy on hv-b; a new replica of it anywhere is heavy."""
    web = pod("web-7d9f8b6c5d-x2x4z", owner=("ReplicaSet", "web-7d9f8b6c5d"),
              labels={"pod-template-hash": "7d9f8b6c5d"})
    heavy = ext.scores(pod("x-1", labels={"ovsfoot.io/footprint": "heavy"}))
    light = ext.scores(pod("x-1"))
    assert heavy != light
    assert ext.scores(web) == heavy
    # with no ownerReferences the pod name's suffix is stripped the same way
    assert ext.scores(pod("web-7d9f8b6c5d-zk9wq")) == heavy
    # the annotation overrides what was learned; so does the label
    assert ext.scores(pod("web-7d9f8b6c5d-x2x4z", annotations={
        "ovsfoot.io/footprint": "light"}, owner=("ReplicaSet", "web-7d9f8b6c5d"))) == light
    assert ext.scores(pod("web-1", labels={"ovsfoot.io/footprint": "light"})) == light
    assert ext.scores(pod("web-1", labels={"ovsfoot.io/footprint": "light"},
                          annotations={"ovsfoot.io/footprint": "heavy"})) == heavy
    # a workload learned light, and one of another namespace, are light
    assert ext.scores(pod("api-0", owner=("StatefulSet", "api"))) == light
    assert ext.scores(pod("web-1", namespace="other")) == light


def test_heavy_pods_spread_and_db_changes_show_in_the_next_answer(ext, db):
    batch = pod("etl-0", namespace="data", annotations={"ovsfoot.io/footprint": "heavy"},
                owner=("StatefulSet", "etl"))
    nodes = ["node-a", "node-b", "node-c"]
    scores = ext.scores(batch, nodes)
    assert best(scores) == ["node-a", "node-c", "node-b"]
    try:
        # etl-0 runs on node-a now: its agent publishes a heavy port there
        db.set_chassis("hv-a", footprint="heavy", heavy_ports=2, elephants=1)
        after = wait_for(lambda: (s := ext.scores(batch, nodes)) != scores and s,
                         timeout=5, interval=0.05, what="the DB change in an answer")
        assert best(after)[0] == "node-c"                   # the next heavy pod goes elsewhere
        assert after["node-a"] < scores["node-a"]
        # a workload learned heavy somewhere shows up as heavy for its next pod
        db.set_class("hv-c", "data/loader", "heavy")
        loader = pod("loader-5f6d7c8b9d-zz2wq", namespace="data")
        wait_for(lambda: ext.scores(loader, nodes) == ext.scores(batch, nodes), timeout=5,
                 interval=0.05, what="learned class from the DB")
    finally:
        db.set_chassis("hv-a", **CHASSIS["hv-a"][1])
        db.set_class("hv-c", "data/loader", None)
    wait_for(lambda: ext.scores(batch, nodes) == scores, timeout=5, interval=0.05,
             what="the view back to what it was")


def test_a_burst_of_heavy_pods_spreads_before_the_agents_report(db):
    """Assumed load: 5 heavy pods prioritized back to back against 3 quiet nodes,
    before any agent reports them, are spread over the 3, not piled on one; a node's
    report settles its assumption."""
    quiet = {"hv-q1": "node-q1", "hv-q2": "node-q2", "hv-q3": "node-q3"}
    for name, host in quiet.items():
        db.set_chassis(name, host)
    e = Extender(db)
    try:
        nodes = list(quiet.values())
        wait_for(lambda: set(e.scores(pod("probe"), nodes).values()) == {10},
                 what="the quiet nodes in the view")
        picks = []
        for i in range(5):
            scores = e.scores(pod(f"etl-{i}", namespace="data",
                                  labels={"ovsfoot.io/footprint": "heavy"}), nodes)
            picks.append(best(scores)[0])
        assert sorted(picks[:3]) == nodes, picks            # one on each before any repeats
        assert max(picks.count(n) for n in nodes) == 2, picks
        assert e.get("/healthz")["assumed_heavy_pods"] == 5
        # the same pod asked again moves; it does not count twice
        e.scores(pod("etl-4", namespace="data", labels={"ovsfoot.io/footprint": "heavy"}),
                 nodes)
        assert e.get("/healthz")["assumed_heavy_pods"] == 5
        # node-q1's agent reports its two heavy ports: its assumptions settle (a light
        # pod scores 5 there before the report too: its two assumed pods count as heavy
        # ports, so wait for the settling itself, which a prioritize request does)
        db.set_chassis("hv-q1", footprint="heavy", heavy_ports=2)
        wait_for(lambda: e.scores(pod("x"), ["node-q1"]) == {"node-q1": 5}
                 and e.get("/healthz")["assumed_heavy_pods"] == 3,
                 what="node-q1's report to settle its two assumed pods")
    finally:
        e.stop()
        for name in quiet:
            db.transact({"op": "delete", "table": "Chassis", "where": [["name", "==", name]]})


MALFORMED = [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"Nodes": None, "NodeNames": ["node-a"]}).encode(), "no Pod"),
    (json.dumps({"Pod": "web", "NodeNames": ["node-a"]}).encode(), "Pod must be an object"),
    (json.dumps({"Pod": {"spec": {}}, "NodeNames": ["node-a"]}).encode(), "Pod.metadata"),
    (json.dumps({"Pod": pod("a"), "NodeNames": "node-a"}).encode(), "NodeNames must be"),
    (json.dumps({"Pod": pod("a"), "NodeNames": [1, 2]}).encode(), "NodeNames must be"),
    (json.dumps({"Pod": pod("a")}).encode(), "Nodes (a NodeList) or NodeNames"),
    (json.dumps({"Pod": pod("a"), "Nodes": {"items": [{"spec": {}}]}}).encode(),
     "metadata.name"),
    (json.dumps({"Pod": pod("a"), "Nodes": {"items": "node-a"}}).encode(), "items list"),
    (json.dumps({"Pod": pod("a", labels={"x": 1}), "NodeNames": []}).encode(),
     "labels must be"),
]


@pytest.mark.parametrize("body,reason", MALFORMED)
def test_malformed_requests_get_400_with_a_reason(ext, body, reason):
    for verb in ("/filter", "/prioritize"):
        status, text = ext.post(verb, body)
        assert status == 400, (verb, text)
        assert reason in text, (verb, text)


def test_unknown_paths_get_404_and_the_server_keeps_serving(ext):
    assert ext.post("/bind", args(pod("a")))[0] == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(ext.url + "/filter", timeout=5)
    assert e.value.code == 404
    health = wait_for(lambda: (h := ext.get("/healthz"))["chassis"] == len(CHASSIS) and h,
                      what="the view to hold the test's chassis")
    assert health["synced"] and health["connected"]
    assert ext.proc.poll() is None
    assert ext.scores(pod("a-0"), ["node-a"]) == {"node-a": 10}


def test_filter_heavy_by_system_id(db):
    """--node-key name: node names are chassis names; --filter-heavy drops heavy nodes
    for light pods, but never all of them."""
    e = Extender(db, "--node-key=name", "--filter-heavy")
    try:
        names = ["hv-a", "hv-b", "hv-c", "hv-d", "node-a"]
        status, out = e.post("/filter", args(pod("frontend-0"), names, cache=True))
        assert status == 200
        assert out["NodeNames"] == ["hv-a", "hv-d", "node-a"]
        assert set(out["FailedNodes"]) == {"hv-b", "hv-c"}
        assert "heavy" in out["FailedNodes"]["hv-b"]
        status, out = e.post("/filter", args(pod("frontend-0"), ["hv-b", "hv-c"]))
        assert [n["metadata"]["name"] for n in out["Nodes"]["items"]] == ["hv-b", "hv-c"]
        assert out["FailedNodes"] == {}
        heavy = pod("etl-0", labels={"ovsfoot.io/footprint": "heavy"})
        status, out = e.post("/filter", args(heavy, names, cache=True))
        assert out["NodeNames"] == names and out["FailedNodes"] == {}
        scores = e.scores(pod("frontend-0"), names, cache=True)
        assert scores["hv-a"] == 10 and scores["node-a"] == 5    # by name, node-a is unknown
    finally:
        e.stop()


def test_db_down_at_start_then_up_with_several_remotes(tmp_path):
    """No database yet: every node scores 5 and nothing is filtered (the extender is
    never a reason not to schedule); once a listed member comes up, its view is used."""
    late = ClusterDb(tmp_path / "late")
    e = Extender.__new__(Extender)
    e.proc = subprocess.Popen(
        [sys.executable, "-m", "ovsfoot", "scheduler-extender", "--listen=127.0.0.1:0",
         f"--cluster-db=unix:{tmp_path}/dead.sock,{late.remote}", "--filter-heavy"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        e.url = e.proc.stdout.readline().split()[-1]
        assert e.get("/healthz")["synced"] is False
        assert e.scores(pod("a-0"), ["node-a", "node-b"]) == {"node-a": 5, "node-b": 5}
        status, out = e.post("/filter", args(pod("a-0"), ["node-a"], cache=True))
        assert status == 200 and out["NodeNames"] == ["node-a"]
        late.start_db()
        late.set_chassis("hv-a", "node-a", footprint="heavy", elephants=3, heavy_ports=1)
        wait_for(lambda: e.scores(pod("a-0"), ["node-a", "node-b"]) ==
                 {"node-a": 3, "node-b": 5}, timeout=15, what="the late database's view")
        assert e.get("/healthz")["connected"]
    finally:
        e.stop()
        late.stop_all()


# -- limits (issue 12, item 5) ----------------------------------------------------
def _addr(e: Extender) -> tuple[str, int]:
    u = urllib.parse.urlsplit(e.url)
    return u.hostname, u.port


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    """Reads one HTTP answer: (status, body)."""
    return _read_answer(sock.makefile("rb"))


def _read_answer(f) -> tuple[int, bytes]:
    """Reads one HTTP answer from a buffered file: (status, body)."""
    status = int(f.readline().split()[1])
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    return status, f.read(length)


def _status(e: Extender, method: str = "GET", path: str = "/healthz", body=None) -> int:
    """The HTTP status of one request on a new connection; 0 if it failed."""
    try:
        conn = http.client.HTTPConnection(*_addr(e), timeout=10)
        conn.request(method, path, None if body is None else json.dumps(body))
        r = conn.getresponse()
        r.read()
        conn.close()
        return r.status
    except (OSError, http.client.HTTPException):
        return 0


def _wait_prioritizing(e: Extender, what: str) -> None:
    """Waits (5 s at most) until a prioritize is answered 200 again."""
    wait_for(lambda: _status(e, "POST", "/ovsfoot/prioritize",
                             args(pod("again-0"), ["node-a"])) == 200, timeout=5, what=what)


def _post_bytes(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_a_burst_of_connections_waits_in_the_listen_backlog(ext):
    """With the extender stopped, 100 clients connect at once: the kernel completes
    every handshake into the listen backlog (http.server's default backlog of 5 held
    6, the rest were dropped and retried 1 s later, or reset). Resumed, it answers all."""
    socks = []
    os.kill(ext.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(100):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(_addr(ext))
            socks.append(s)
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            _, w, _ = select.select([], socks, [], 0.1)
            if len(w) == len(socks):
                break
        established = [s for s in w if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0]
    finally:
        os.kill(ext.proc.pid, signal.SIGCONT)
    try:
        assert len(established) == 100
        body = _post_bytes("/ovsfoot/prioritize", json.dumps(args(pod("burst-0"), NODES,
                                                                     cache=True)).encode())
        for s in socks:
            s.setblocking(True)
            s.settimeout(10)
            s.sendall(body)
        assert [_answer(s)[0] for s in socks] == [200] * 100
    finally:
        for s in socks:
            s.close()


def test_keep_alive_answers_do_not_wait_for_a_delayed_ack(ext):
    """One connection, one request after another (kube-scheduler's pooled client):
    headers and body leave in one write with TCP_NODELAY; written apart, Nagle held
    the body until the client's delayed ACK, 40 ms on every request."""
    conn = http.client.HTTPConnection(*_addr(ext), timeout=10)
    body = json.dumps(args(pod("keep-0"), NODES, cache=True))
    took = []
    try:
        for _ in range(30):
            t = time.monotonic()
            conn.request("POST", "/ovsfoot/prioritize", body,
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            assert r.status == 200 and len(json.loads(r.read())) == len(NODES)
            took.append(time.monotonic() - t)
    finally:
        conn.close()
    assert sorted(took)[len(took) // 2] < 0.02, took


def test_a_body_over_16_mib_is_refused_unread(ext):
    """413 at once from the headers alone; the body is never read."""
    with socket.create_connection(_addr(ext), timeout=5) as s:
        s.sendall(f"POST /ovsfoot/prioritize HTTP/1.1\r\nHost: x\r\n"
                  f"Content-Length: {(16 << 20) + 1}\r\n\r\n".encode())
        status, text = _answer(s)
        assert status == 413 and b"larger than" in text
        assert s.recv(1) == b""                     # and closed
    # a real cluster's request is far below it: a NodeList of 1,000 full nodes (~300 kB)
    many = [f"n-{i:04d}" for i in range(1000)]
    status, out = ext.post("/ovsfoot/prioritize", args(pod("big-0"), many))
    assert status == 200 and len(out) == 1000


@pytest.mark.parametrize("body", [
    b'{"Pod": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"Pod": {"metadata": {"name": "a", "labels": ' + b'{"a":' * 50_000 + b"1"
    + b"}" * 50_000 + b"}}, \"NodeNames\": []}",
], ids=["arrays", "objects"])
def test_deeply_nested_json_is_a_400(ext, body):
    for verb in ("/filter", "/prioritize"):
        status, text = ext.post(verb, body)
        assert status == 400, (verb, status, text)
        assert "nested too deeply" in text
    assert ext.scores(pod("a-0"), ["node-a"]) == {"node-a": 10}


def test_one_info_line_per_request_without_the_node_list(ext, db):
    """At INFO (-v), one line per request: the pod, its class, how many nodes, the
    best score; not the 2,000 names and scores; a pod name of 100,000 characters is cut."""
    log = db.dir / "extender1.log"
    names = [f"many-node-{i:04d}" for i in range(2000)]
    before = log.stat().st_size
    ext.scores(pod("logged-0"), names, cache=True)
    status, _ = ext.post("/filter", args(pod("logged-0"), names, cache=True))
    assert status == 200
    long = "x" * 100_000
    ext.scores(pod(long), ["node-a"], cache=True)
    with log.open() as f:
        f.seek(before)
        new = f.read()
    lines = [line for line in new.splitlines() if "logged-0" in line]
    assert len(lines) == 2, lines
    assert "prioritize shop/logged-0" in lines[0] and "2000 nodes" in lines[0]
    assert "filter shop/logged-0" in lines[1] and "2000 of 2000" in lines[1]
    assert "many-node-" not in new
    assert len(new) < 2000, len(new)


def test_requests_beyond_the_bound_wait_then_get_503(ext):
    """8 requests whose bodies never come hold every slot: the 9th waits its turn for
    5 s, then gets 503 with Retry-After (GET /healthz still answers meanwhile); once
    the 8 go away, requests are served again."""
    holders = []
    try:
        for _ in range(8):
            s = socket.create_connection(_addr(ext), timeout=10)
            s.sendall(b"POST /ovsfoot/prioritize HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 100\r\n\r\n")
            holders.append(s)
        time.sleep(0.5)
        assert ext.get("/healthz")["synced"]
        t = time.monotonic()
        status, text = ext.post("/ovsfoot/prioritize", args(pod("ninth-0"), ["node-a"]))
        took = time.monotonic() - t
        assert status == 503 and "busy" in text, (status, text)
        assert 4 < took < 9, took
    finally:
        for s in holders:
            s.close()
    _wait_prioritizing(ext, "slots back")


def test_connections_beyond_the_cap_get_503(ext):
    """256 idle connections are the cap: the 257th gets 503 and is
    closed; as soon as one goes, a new one is served."""
    idle = []
    try:
        for _ in range(256):
            idle.append(socket.create_connection(_addr(ext), timeout=10))
        with socket.create_connection(_addr(ext), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, text = _answer(s)
            assert status == 503 and text == b"busy\n"
        idle.pop().close()
        wait_for(lambda: _status(ext) == 200, timeout=5, what="a free connection")
    finally:
        for s in idle:
            s.close()
    _wait_prioritizing(ext, "the extender back to normal")


def test_an_invalid_workload_in_the_database_is_ignored(ext, db):
    """A class written for a workload name off the contract (control characters)
    is not used: the pod is scored as if nothing was learned."""
    bad = "data/evil\x1b[2J"
    db.set_class("hv-c", bad, "heavy")
    db.set_class("hv-c", "data/fine", "heavy")
    try:
        fine = ext.scores(pod("fine-0", namespace="data",
                              annotations={"ovsfoot.io/footprint": "heavy"}))
        wait_for(lambda: ext.scores(pod("fine-5f6d7c8b9d-zz2wq", namespace="data")) == fine,
                 what="the valid class in the view")
        assert ext.scores(pod("x-1", namespace="data",
                              owner=("StatefulSet", "evil\x1b[2J"))) != fine
    finally:
        db.set_class("hv-c", bad, None)
        db.set_class("hv-c", "data/fine", None)


def test_a_slow_client_holds_up_no_one_and_pipelined_requests_are_answered_in_order(ext):
    """One thread serves every connection: a client that sends half its headers, and
    one that sends half its body, do not delay another's answer. Requests sent back to
    back on one connection are answered in order; a chunked body is refused with why."""
    body = json.dumps(args(pod("slow-0"), NODES, cache=True)).encode()
    half_head = socket.create_connection(_addr(ext), timeout=10)
    half_body = socket.create_connection(_addr(ext), timeout=10)
    try:
        half_head.sendall(b"POST /ovsfoot/prioritize HTTP/1.1\r\nHost: x\r\n")
        half_body.sendall(_post_bytes("/ovsfoot/prioritize", body)[:-len(body) // 2])
        t = time.monotonic()
        assert ext.scores(pod("quick-0"), ["node-a"], cache=True) == {"node-a": 10}
        assert time.monotonic() - t < 2
        half_body.sendall(body[-len(body) // 2:])
        assert _answer(half_body)[0] == 200
    finally:
        half_head.close()
        half_body.close()
    with socket.create_connection(_addr(ext), timeout=10) as s:
        s.sendall(_post_bytes("/ovsfoot/prioritize", body) + b"GET /healthz HTTP/1.1\r\n\r\n"
                  + _post_bytes("/ovsfoot/filter", body))
        f = s.makefile("rb")            # one buffer: the answers may come in one read
        answers = [_read_answer(f) for _ in range(3)]
        assert [a[0] for a in answers] == [200, 200, 200]
        assert [h["Host"] for h in json.loads(answers[0][1])] == NODES
        assert json.loads(answers[1][1])["synced"] is True
        assert json.loads(answers[2][1])["NodeNames"] == NODES
    with socket.create_connection(_addr(ext), timeout=10) as s:
        s.sendall(b"POST /ovsfoot/prioritize HTTP/1.1\r\nHost: x\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        status, text = _answer(s)
        assert status == 400 and b"Content-Length" in text
