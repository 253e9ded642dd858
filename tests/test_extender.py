"""The kube-scheduler extender over real HTTP, against a real OVN Southbound ovsdb-server.

The chassis rows and their `ovsfoot-*` keys are written with ovn-sbctl, as the
agents would publish them; the extender runs as a real `ovsfoot
scheduler-extender` process; requests have the shape kube-scheduler sends
(ExtenderArgs with a v1.Pod and a full v1.NodeList in `Nodes`, or `NodeNames`
with nodeCacheCapable).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from integration.sandbox import SB_SCHEMA, Daemons, sh, wait_for

# chassis name -> (hostname, ovsfoot keys on Chassis_Private); None: no agent publishes
CHASSIS = {
    "hv-a": ("node-a", {"ovsfoot-footprint": "light", "ovsfoot-elephants": "0",
                        "ovsfoot-heavy-ports": "0", "ovsfoot-class-shop/api": "light"}),
    "hv-b": ("node-b", {"ovsfoot-footprint": "heavy", "ovsfoot-elephants": "2",
                        "ovsfoot-heavy-ports": "1", "ovsfoot-class-shop/web": "heavy"}),
    "hv-c": ("node-c", {"ovsfoot-footprint": "heavy", "ovsfoot-elephants": "0",
                        "ovsfoot-heavy-ports": "1"}),
    "hv-d": ("node-d", None),
}
NODES = ["node-a", "node-b", "node-c", "node-d", "node-x"]     # node-x: no chassis


class Sb(Daemons):
    def __init__(self, workdir: Path):
        super().__init__(workdir, {"OVS_RUNDIR": str(workdir), "OVS_LOGDIR": str(workdir),
                                   "OVN_RUNDIR": str(workdir)})
        self.remote = f"unix:{self.dir / 'sb.sock'}"

    def start_db(self) -> "Sb":
        sh("ovsdb-tool", "create", str(self.dir / "sb.db"), SB_SCHEMA)
        self.start("sb", "ovsdb-server", str(self.dir / "sb.db"),
                   f"--remote=punix:{self.dir / 'sb.sock'}", f"--unixctl={self.dir / 'sb.ctl'}")
        wait_for(lambda: (self.dir / "sb.sock").exists(), what="SB socket")
        return self

    def sbctl(self, *args: str) -> str:
        return sh("ovn-sbctl", f"--db={self.remote}", *args, env=self.env)

    def set_keys(self, chassis: str, keys: dict[str, str]) -> None:
        self.sbctl("set", "Chassis_Private", chassis,
                   *[f'external_ids:"{k}"="{v}"' for k, v in keys.items()])


class Extender:
    def __init__(self, sb: Sb, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ovsfoot", "scheduler-extender", "--listen=127.0.0.1:0",
             f"--sb={sb.remote}", "-v", f"--log-file={sb.dir}/extender{len(args)}.log", *args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        self.url = line.split()[-1]
        wait_for(lambda: self.get("/healthz")["synced"], what="extender synced with SB")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

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
def sb(tmp_path_factory):
    s = Sb(tmp_path_factory.mktemp("sb"))
    try:
        s.start_db()
        for i, (name, (hostname, keys)) in enumerate(CHASSIS.items(), start=1):
            s.sbctl("chassis-add", name, "geneve", f"192.0.2.{i}")
            s.sbctl("set", "Chassis", name, f"hostname={hostname}")
            uuid = s.sbctl("--bare", "--columns=_uuid", "find", "Chassis", f"name={name}")
            s.sbctl("create", "Chassis_Private", f"name={name}", f"chassis={uuid}")
            if keys:
                s.set_keys(name, keys)
        yield s
    finally:
        s.stop_all()


@pytest.fixture(scope="module")
def ext(sb):
    e = Extender(sb)
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


def test_heavy_pods_spread_and_sb_changes_show_in_the_next_answer(ext, sb):
    batch = pod("etl-0", namespace="data", annotations={"ovsfoot.io/footprint": "heavy"},
                owner=("StatefulSet", "etl"))
    nodes = ["node-a", "node-b", "node-c"]
    scores = ext.scores(batch, nodes)
    assert best(scores) == ["node-a", "node-c", "node-b"]
    try:
        # etl-0 runs on node-a now: its agent publishes a heavy port there
        sb.set_keys("hv-a", {"ovsfoot-footprint": "heavy", "ovsfoot-heavy-ports": "2",
                             "ovsfoot-elephants": "1", "ovsfoot-ts": "1700000000000"})
        after = wait_for(lambda: (s := ext.scores(batch, nodes)) != scores and s,
                         timeout=5, interval=0.05, what="the SB change in an answer")
        assert best(after)[0] == "node-c"                   # the next heavy pod goes elsewhere
        assert after["node-a"] < scores["node-a"]
        # a workload learned heavy somewhere shows up as heavy for its next pod
        sb.set_keys("hv-c", {"ovsfoot-class-data/loader": "heavy"})
        loader = pod("loader-5f6d7c8b9d-zz2wq", namespace="data")
        wait_for(lambda: ext.scores(loader, nodes) == ext.scores(batch, nodes), timeout=5,
                 interval=0.05, what="learned class from SB")
    finally:
        sb.set_keys("hv-a", CHASSIS["hv-a"][1])
        sb.sbctl("remove", "Chassis_Private", "hv-c", "external_ids",
                 '"ovsfoot-class-data/loader"')
    wait_for(lambda: ext.scores(batch, nodes) == scores, timeout=5, interval=0.05,
             what="the view back to what it was")


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
    health = ext.get("/healthz")
    assert health["synced"] and health["connected"] and health["chassis"] == len(CHASSIS)
    assert ext.proc.poll() is None
    assert ext.scores(pod("a-0"), ["node-a"]) == {"node-a": 10}


def test_filter_heavy_by_system_id(sb):
    """--node-key name: node names are chassis names; --filter-heavy drops heavy nodes
    for light pods, but never all of them."""
    e = Extender(sb, "--node-key=name", "--filter-heavy")
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


def test_sb_down_at_start_then_up_with_several_remotes(tmp_path):
    """No SB yet: every node scores 5 and nothing is filtered (the extender is never a
    reason not to schedule); once a listed SB member comes up, its view is used."""
    late = Sb(tmp_path / "late")
    late.remote = f"unix:{tmp_path}/dead.sock,{late.remote}"
    e = Extender.__new__(Extender)
    e.proc = subprocess.Popen(
        [sys.executable, "-m", "ovsfoot", "scheduler-extender", "--listen=127.0.0.1:0",
         f"--sb={late.remote}", "--filter-heavy"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        e.url = e.proc.stdout.readline().split()[-1]
        assert e.get("/healthz")["synced"] is False
        assert e.scores(pod("a-0"), ["node-a", "node-b"]) == {"node-a": 5, "node-b": 5}
        status, out = e.post("/filter", args(pod("a-0"), ["node-a"], cache=True))
        assert status == 200 and out["NodeNames"] == ["node-a"]
        late.remote = f"unix:{late.dir / 'sb.sock'}"
        late.start_db()
        late.sbctl("chassis-add", "hv-a", "geneve", "192.0.2.1")
        late.sbctl("set", "Chassis", "hv-a", "hostname=node-a")
        late.sbctl("create", "Chassis_Private", "name=hv-a")
        late.set_keys("hv-a", {"ovsfoot-footprint": "heavy", "ovsfoot-elephants": "3",
                               "ovsfoot-heavy-ports": "1"})
        wait_for(lambda: e.scores(pod("a-0"), ["node-a", "node-b"]) ==
                 {"node-a": 3, "node-b": 5}, timeout=15, what="the late SB's view")
        assert e.get("/healthz")["connected"]
    finally:
        e.stop()
        late.stop_all()
