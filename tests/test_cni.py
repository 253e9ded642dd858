"""`ovsfoot-cni` as a chained CNI plugin, and the `ovsfoot.api` library, on real OVS.

OVS: ovsdb-server + ovs-vswitchd (userspace datapath) in a network namespace that
plays the host, so that the CNI plugins' host-side changes (veths, routes,
ip_forward) stay out of the real host. The previous plugins are the real
containernetworking-plugins from /usr/lib/cni:

* `ptp` with `host-local` IPAM makes the pod's veth pair and the `prevResult`
  (host-side and pod-side interfaces, IPs); the test then plugs the host side
  into the OVS bridge with an iface-id, as ovn-kubernetes would;
* `host-local` alone gives an IPAM-only `prevResult` (no interfaces) for a veth
  the test creates itself, which `ovsfoot-cni` must then find by iface-id.

`ovsfoot-cni` runs as its installed console script, with the CNI environment
variables and the network config (with `prevResult`) on stdin, as a runtime
calls a chained plugin. The last test runs a real `ovsfoot agent` (replay source
with an empty recording, a state file where shop/web is learned heavy) and shows
that a port registered through `ovsfoot-cni` or `api.register_port` is published
heavy while its pod has not sent a single packet.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from integration.agentproc import AgentProcess
from integration.sandbox import Ovs, sh, wait_for
from ovsfoot import api
from ovsfoot.learning import StateFile
from ovsfoot.sources.replay import Recorder

CNI_BIN = "/usr/lib/cni"
PLUGIN = str(Path(sys.executable).parent / "ovsfoot-cni")
TAG = f"ofc{os.getpid() % 10000}"
HOSTNS = f"{TAG}h"
WEB = "web-7d9f8b6c5d-x2x4z"


class Host:
    """The host namespace with OVS, and pods made by real CNI plugins."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        sh("ip", "netns", "add", HOSTNS)
        sh("ip", "-n", HOSTNS, "link", "set", "lo", "up")
        self.ovs = Ovs(tmp / "ovs", bridge="br-cni", netns=HOSTNS)
        self.ovs.start_db().create_bridge().start_vswitchd()
        self.pods: list[str] = []
        self.log = tmp / "ovsfoot-cni.log"

    def close(self) -> None:
        self.ovs.stop_all()
        for ns in self.pods:
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "netns", "del", HOSTNS, check=False)

    def netns(self, name: str) -> str:
        ns = f"{TAG}{name}"
        sh("ip", "netns", "add", ns)
        # no IPv6: nothing (router solicitations, DAD) leaves the pod on its own
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
           "net.ipv6.conf.default.disable_ipv6=1")
        self.pods.append(ns)
        return ns

    def cni_env(self, command: str, cid: str, ns: str | None, ifname: str = "eth0",
                pod: str | None = None, namespace: str = "shop", **extra_args) -> dict:
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
               "CNI_IFNAME": ifname, "CNI_PATH": CNI_BIN}
        if ns:
            env["CNI_NETNS"] = f"/var/run/netns/{ns}"
        args = {"IgnoreUnknown": "1"}
        if pod:
            args.update(K8S_POD_NAMESPACE=namespace, K8S_POD_NAME=pod,
                        K8S_POD_INFRA_CONTAINER_ID=cid, K8S_POD_UID=f"uid-{cid}")
        args.update(extra_args)
        env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in args.items())
        return env

    def ipam(self, subnet: str) -> dict:
        return {"type": "host-local", "subnet": subnet, "dataDir": str(self.tmp / "ipam"),
                "routes": [{"dst": "0.0.0.0/0"}]}

    def real_plugin(self, plugin: str, conf: dict, env: dict) -> dict:
        """Runs a containernetworking plugin in the host namespace; its result."""
        p = subprocess.run(["ip", "netns", "exec", HOSTNS, f"{CNI_BIN}/{plugin}"],
                           input=json.dumps(conf), env=env, capture_output=True, text=True,
                           timeout=30)
        assert p.returncode == 0, (plugin, p.stdout, p.stderr)
        return json.loads(p.stdout) if p.stdout.strip() else {}

    def conf(self, prev: dict | None = None, **kw) -> dict:
        c = {"cniVersion": "1.0.0", "name": "podnet", "type": "ovsfoot-cni",
             "ovsdb": self.ovs.remote, "timeout": 2, "logFile": str(self.log), **kw}
        if prev is not None:
            c["prevResult"] = prev
        return c

    def attach(self, iface: str, iface_id: str, **ids: str) -> None:
        """Plugs a host-side veth into OVS, bound to `iface_id` (ovn-kubernetes' part)."""
        ids = {"iface-id": iface_id, **ids}
        self.ovs.vsctl("add-port", self.ovs.bridge, iface, "--", "set", "Interface", iface,
                       *[f'external_ids:{k}="{v}"' for k, v in ids.items()])

    def ids(self, iface: str) -> dict[str, str]:
        return self.ovs.external_ids("Interface", iface)


def cni(conf, env: dict) -> tuple[int, object, str]:
    """Runs ovsfoot-cni: (exit status, stdout as JSON or None, stderr)."""
    data = conf if isinstance(conf, (bytes, str)) else json.dumps(conf)
    p = subprocess.run([PLUGIN], input=data if isinstance(data, str) else data.decode(),
                       env=env, capture_output=True, text=True, timeout=30)
    out = json.loads(p.stdout) if p.stdout.strip() else None
    return p.returncode, out, p.stderr


def host_side(result: dict) -> dict:
    return next(i for i in result["interfaces"] if not i.get("sandbox"))


def tx_packets(ns: str, dev: str = "eth0") -> int:
    link = json.loads(sh("ip", "-n", ns, "-s", "-j", "link", "show", dev))[0]
    return link["stats64"]["tx"]["packets"]


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = None
    try:
        h = Host(tmp_path_factory.mktemp("cni"))
        yield h
    finally:
        if h:
            h.close()
        else:
            sh("ip", "netns", "del", HOSTNS, check=False)


def ptp_pod(host: Host, name: str, cid: str, pod: str, subnet: str) -> tuple[str, dict]:
    ns = host.netns(name)
    ptp = {"cniVersion": "1.0.0", "name": "podnet", "type": "ptp", "ipMasq": False,
           "ipam": host.ipam(subnet)}
    result = host.real_plugin("ptp", ptp, host.cni_env("ADD", cid, ns, pod=pod))
    return ns, result


# -- the plugin -------------------------------------------------------------------
def test_version():
    status, out, _ = cni({"cniVersion": "1.0.0"}, {"CNI_COMMAND": "VERSION"})
    assert status == 0
    assert out == {"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0",
                                                                "1.0.0", "1.1.0"]}


def test_add_check_del_after_ptp(host):
    cid = "c0ffee01" * 4
    ns, prev = ptp_pod(host, "p1", cid, WEB, "10.99.1.0/24")
    veth, pod_if = host_side(prev)["name"], prev["interfaces"][1]
    host.attach(veth, f"shop_{WEB}", attached_mac=pod_if["mac"], owner="ovn-k")

    status, out, err = cni(host.conf(prev), host.cni_env("ADD", cid, ns, pod=WEB))
    assert status == 0, err
    assert out == prev                                  # passed through unchanged
    ids = host.ids(veth)
    assert ids["ovsfoot-workload"] == "shop/web" and ids["ovsfoot-cni"] == cid
    assert ids["iface-id"] == f"shop_{WEB}" and ids["owner"] == "ovn-k"
    assert f"Interface {veth} (found by prevResult host interface)" in host.log.read_text()

    check = host.cni_env("CHECK", cid, ns, pod=WEB)
    assert cni(host.conf(prev), check)[:2] == (0, None)
    host.ovs.vsctl("set", "Interface", veth, 'external_ids:ovsfoot-workload="shop/other"')
    status, out, _ = cni(host.conf(prev), check)
    assert status == 1 and out["code"] == 100 and "shop/web" in out["details"]
    host.ovs.vsctl("set", "Interface", veth, 'external_ids:ovsfoot-workload="shop/web"')

    delete = host.cni_env("DEL", cid, ns, pod=WEB)
    assert cni(host.conf(prev), delete)[:2] == (0, None)
    ids = host.ids(veth)
    assert not any(k.startswith("ovsfoot-") for k in ids)
    assert ids == {"iface-id": f"shop_{WEB}", "attached_mac": pod_if["mac"], "owner": "ovn-k"}
    assert cni(host.conf(prev), delete)[:2] == (0, None)    # idempotent
    # after the runtime tore the pod down: the port is gone, DEL still succeeds
    host.real_plugin("ptp", {"cniVersion": "1.0.0", "name": "podnet", "type": "ptp",
                             "ipam": host.ipam("10.99.1.0/24")}, delete)
    host.ovs.vsctl("del-port", host.ovs.bridge, veth)
    assert cni(host.conf(), host.cni_env("DEL", cid, None))[:2] == (0, None)


def test_add_finds_the_port_by_iface_id_after_host_local(host):
    """An IPAM-only prevResult (no interfaces): the port is found by its iface-id;
    the owner comes from runtimeConfig, the StatefulSet ordinal would be stripped."""
    cid = "c0ffee02" * 4
    ns = host.netns("p2")
    prev = host.real_plugin("host-local", {"cniVersion": "1.0.0", "name": "podnet",
                                           "ipam": host.ipam("10.99.2.0/24")},
                            host.cni_env("ADD", cid, ns, pod="db-0"))
    assert prev["ips"] and "interfaces" not in prev
    sh("ip", "-n", HOSTNS, "link", "add", f"{TAG}v2", "type", "veth", "peer", "name", "eth0",
       "netns", ns)
    host.attach(f"{TAG}v2", "shop_db-0")
    env = host.cni_env("ADD", cid, ns, pod="db-0")
    status, out, err = cni(host.conf(prev), env)
    assert status == 0 and out == prev, err
    assert host.ids(f"{TAG}v2")["ovsfoot-workload"] == "shop/db"
    status, out, _ = cni(host.conf(prev, runtimeConfig={"ovsfoot": {"owner": "postgres"}}),
                         env)
    assert status == 0 and host.ids(f"{TAG}v2")["ovsfoot-workload"] == "shop/postgres"
    status, _, _ = cni(host.conf(prev), host.cni_env("ADD", cid, ns, pod="db-0",
                                                     OVSFOOT_WORKLOAD="team/db"))
    assert status == 0 and host.ids(f"{TAG}v2")["ovsfoot-workload"] == "team/db"
    assert cni(host.conf(prev), host.cni_env("DEL", cid, ns))[0] == 0
    assert "ovsfoot-workload" not in host.ids(f"{TAG}v2")


def test_ovsfoot_trouble_never_fails_a_pod(host, tmp_path):
    prev = {"cniVersion": "1.0.0",
            "interfaces": [{"name": "vethnothere", "mac": "02:00:00:00:00:01"}],
            "ips": [{"address": "10.99.9.5/24", "interface": 0}]}
    log = tmp_path / "cni.log"
    no_db = {**host.conf(prev, timeout=0.5), "ovsdb": f"unix:{tmp_path}/none.sock",
             "logFile": str(log)}
    t = time.monotonic()
    for command in ("ADD", "CHECK", "DEL"):
        status, out, err = cni(no_db, host.cni_env(command, "c0ffee03", "whatever", pod=WEB))
        assert status == 0, (command, out, err)
        assert out == (prev if command == "ADD" else None)
    assert time.monotonic() - t < 15
    text = log.read_text()
    assert "ADD c0ffee03 (pod shop/" + WEB + "): not tagged, passing the result through" \
        in text and "none.sock" in text
    assert "not tagged" in err or "could not clean up" in err     # and on stderr
    # OVSDB up, but no Interface is the pod's
    status, out, _ = cni(host.conf(prev), host.cni_env("ADD", "c0ffee04", "x", pod="nope-0"))
    assert status == 0 and out == prev
    assert "no OVS Interface found" in host.log.read_text()


GOOD = {"cniVersion": "1.0.0", "name": "podnet", "type": "ovsfoot-cni",
        "prevResult": {"cniVersion": "1.0.0", "ips": []}}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": CNI_BIN, "CNI_ARGS": "K8S_POD_NAMESPACE=shop"}
MALFORMED = [
    ("not json", b"{oops", ENV, 6),
    ("empty stdin", b"", ENV, 6),
    ("not an object", b"[1]", ENV, 6),
    ("no cniVersion", {k: v for k, v in GOOD.items() if k != "cniVersion"}, ENV, 7),
    ("no name", {k: v for k, v in GOOD.items() if k != "name"}, ENV, 7),
    ("bad name", {**GOOD, "name": "bad name"}, ENV, 7),
    ("unsupported version", {**GOOD, "cniVersion": "0.2.0"}, ENV, 1),
    ("ADD without prevResult", {k: v for k, v in GOOD.items() if k != "prevResult"}, ENV, 7),
    ("prevResult not an object", {**GOOD, "prevResult": "x"}, ENV, 7),
    ("timeout of the wrong type", {**GOOD, "timeout": "soon"}, ENV, 7),
    ("bad runtimeConfig", {**GOOD, "runtimeConfig": {"ovsfoot": {"owner": 5}}}, ENV, 7),
    ("no CNI_COMMAND", GOOD, {k: v for k, v in ENV.items() if k != "CNI_COMMAND"}, 4),
    ("unknown CNI_COMMAND", GOOD, {**ENV, "CNI_COMMAND": "UPDATE"}, 4),
    ("ADD without CNI_CONTAINERID", GOOD,
     {k: v for k, v in ENV.items() if k != "CNI_CONTAINERID"}, 4),
    ("ADD without CNI_IFNAME", GOOD, {k: v for k, v in ENV.items() if k != "CNI_IFNAME"}, 4),
    ("ADD without CNI_NETNS", GOOD, {k: v for k, v in ENV.items() if k != "CNI_NETNS"}, 4),
    ("DEL without CNI_CONTAINERID", GOOD,
     {k: v for k, v in {**ENV, "CNI_COMMAND": "DEL"}.items() if k != "CNI_CONTAINERID"}, 4),
    ("bad CNI_ARGS", GOOD, {**ENV, "CNI_ARGS": "K8S_POD_NAME"}, 4),
    ("bad workload in CNI_ARGS", GOOD, {**ENV, "CNI_ARGS": "OVSFOOT_WORKLOAD=a b"}, 4),
    # issue 12: never a traceback with an empty stdout
    ("stdin nested 100k deep", b"[" * 100_000 + b"]" * 100_000, ENV, 6),
    ("objects nested 100k deep", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, ENV, 6),
    ("timeout NaN", json.dumps({**GOOD, "timeout": float("nan")}).encode(), ENV, 7),
    ("timeout 1e309", json.dumps(GOOD)[:-1].encode() + b', "timeout": 1e309}', ENV, 7),
    ("timeout of 400 digits", json.dumps(GOOD)[:-1].encode() + b', "timeout": 1'
     + b"0" * 400 + b"}", ENV, 7),
    ("timeout 0", {**GOOD, "timeout": 0}, ENV, 7),
    ("timeout of an hour", {**GOOD, "timeout": 3600}, ENV, 7),
    ("waitForClass -Infinity", json.dumps({**GOOD, "waitForClass": float("-inf")}).encode(),
     ENV, 7),
    ("interfaces[].name a list", {**GOOD, "prevResult": {
        "cniVersion": "1.0.0", "interfaces": [{"name": ["a", "b"]}]}}, ENV, 7),
    ("interfaces not a list", {**GOOD, "prevResult": {"interfaces": {"name": "a"}}}, ENV, 7),
]


@pytest.mark.parametrize("what,stdin,env,code", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_gets_a_cni_error(what, stdin, env, code, tmp_path):
    env = {**env, "PATH": os.environ["PATH"], "OVSFOOT_CNI_LOG": str(tmp_path / "log")}
    status, out, err = cni(stdin, env)
    assert status != 0, what
    assert set(out) == {"cniVersion", "code", "msg", "details"}, out
    assert out["code"] == code and out["msg"], out
    assert out["cniVersion"] == "1.0.0"
    assert err.strip()                                  # and said on stderr


@contextlib.contextmanager
def veth_port(host: Host, n: int, iface_id: str):
    """A veth plugged into OVS with `iface_id`, and a prevResult naming its host side;
    both gone afterwards (the agent test counts the ports of shop/web)."""
    veth = f"{TAG}v{n}"
    sh("ip", "-n", HOSTNS, "link", "add", veth, "type", "veth", "peer", "name", f"{TAG}q{n}")
    try:
        host.attach(veth, iface_id)
        yield veth, {"cniVersion": "1.0.0", "interfaces": [{"name": veth}], "ips": []}
    finally:
        host.ovs.vsctl("--if-exists", "del-port", host.ovs.bridge, veth)
        sh("ip", "-n", HOSTNS, "link", "del", veth, check=False)


def test_check_edge_cases_get_an_error_object_before_anything_changes(host):
    """With OVSDB up and the pod's port there: CHECK with interfaces[].name a list, a NaN
    or 1e309 timeout, or stdin nested 100,000 deep gets a CNI error object (it was a
    Python traceback and an empty stdout); ADD with such a timeout changes nothing."""
    cid = "c0ffee07" * 4
    with veth_port(host, 7, "shop_web-0") as (veth, prev):
        env = {"ADD": host.cni_env("ADD", cid, "x", pod="web-0", OVSFOOT_WORKLOAD="x/y"),
               "CHECK": host.cni_env("CHECK", cid, "x", pod="web-0")}
        assert cni(host.conf(prev), host.cni_env("ADD", cid, "x", pod="web-0"))[0] == 0
        tagged = host.ids(veth)
        assert tagged["ovsfoot-workload"] == "shop/web"
        conf = json.dumps(host.conf(prev))[:-1]
        cases = [
            ("CHECK", json.dumps(host.conf({**prev, "interfaces": [{"name": [veth]}]})), 7),
            ("CHECK", json.dumps(host.conf(prev, timeout=float("nan"))), 7),
            ("CHECK", conf + ', "timeout": 1e309}', 7),
            ("CHECK", "[" * 100_000 + "]" * 100_000, 6),
            ("ADD", json.dumps(host.conf(prev, timeout=float("nan"))), 7),
            ("ADD", conf + ', "timeout": -1e309}', 7),
        ]
        for command, stdin, code in cases:
            status, out, err = cni(stdin, env[command])
            assert status == 1 and out is not None, (command, stdin[:80], err[-500:])
            assert set(out) == {"cniVersion", "code", "msg", "details"}, out
            assert out["code"] == code, out
            assert "Traceback" not in err, err
            assert host.ids(veth) == tagged                 # nothing changed
        assert cni(host.conf(prev), env["CHECK"])[:2] == (0, None)
        assert cni(host.conf(prev), host.cni_env("DEL", cid, "x", pod="web-0"))[0] == 0


def test_add_never_takes_over_and_del_never_removes_what_it_did_not_set(host):
    """Container B's ADD naming pod A's Interface (A's marker on it) leaves it as it
    is and passes the result through; B's CHECK accepts that, B's DEL removes nothing.
    The same for an identity an operator set (no marker). A's DEL after an operator
    changed the identity removes only A's marker."""
    a, b, c = "c0ffee08" * 4, "c0ffee09" * 4, "c0ffee0a" * 4
    with veth_port(host, 8, f"shop_{WEB}") as (veth, prev):
        env = lambda cmd, cid, pod: host.cni_env(cmd, cid, "x", pod=pod)  # noqa: E731
        assert cni(host.conf(prev), env("ADD", a, WEB))[0] == 0
        mine = host.ids(veth)
        assert mine["ovsfoot-workload"] == "shop/web" and mine["ovsfoot-cni"] == a

        status, out, err = cni(host.conf(prev), env("ADD", b, "db-0"))
        assert status == 0 and out == prev, err
        assert host.ids(veth) == mine                       # not taken over
        assert "another container's" in err and a in err
        assert cni(host.conf(prev), env("CHECK", b, "db-0"))[:2] == (0, None)
        assert cni(host.conf(prev), env("DEL", b, "db-0"))[:2] == (0, None)
        assert host.ids(veth) == mine                       # B's DEL removed nothing

        # A's own DEL, after an operator changed the identity: only A's marker goes
        host.ovs.vsctl("set", "Interface", veth, 'external_ids:ovsfoot-workload="ops/pinned"')
        status, _, err = cni(host.conf(prev), env("DEL", a, WEB))
        assert status == 0
        ids = host.ids(veth)
        assert ids["ovsfoot-workload"] == "ops/pinned" and "ovsfoot-cni" not in ids, ids
        assert "left ovsfoot-workload=ops/pinned" in err

        # an operator's identity (no marker): C's ADD leaves it, C's DEL too
        for command in ("ADD", "CHECK", "DEL"):
            status, out, err = cni(host.conf(prev), env(command, c, WEB))
            assert status == 0, (command, out, err)
            assert host.ids(veth) == ids, command
        assert "was set by someone else" in host.log.read_text()
        host.ovs.vsctl("remove", "Interface", veth, "external_ids", "ovsfoot-workload")

        # and a port nobody claimed is still tagged, re-tagged by its own container, removed
        assert cni(host.conf(prev), env("ADD", c, WEB))[0] == 0
        assert host.ids(veth)["ovsfoot-cni"] == c
        assert cni(host.conf(prev, workload="shop/other"),
                   host.cni_env("ADD", c, "x", OVSFOOT_WORKLOAD="shop/other"))[0] == 0
        assert host.ids(veth)["ovsfoot-workload"] == "shop/other"
        assert cni(host.conf(prev), host.cni_env("DEL", c, "x"))[0] == 0
        assert not any(k.startswith("ovsfoot-") for k in host.ids(veth))


def test_an_unexpected_failure_is_still_an_error_object(tmp_path):
    """A broken python-ovs (an `ovs` package that does not import): ADD's failure is a
    CNI error object (code 101) on stdout, the traceback in the log only."""
    broken = tmp_path / "ovs"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('a broken python-ovs')\n")
    env = {**ENV, "PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path),
           "CNI_ARGS": "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0",
           "OVSFOOT_CNI_LOG": str(tmp_path / "log")}
    status, out, err = cni(GOOD, env)
    assert status == 1 and out is not None, err[-500:]
    assert out["code"] == 101 and "broken python-ovs" in out["details"], out
    assert out["cniVersion"] == "1.0.0"
    assert "Traceback" in (tmp_path / "log").read_text()


# -- CNI 1.1.0: STATUS and GC --------------------------------------------------
# Debian's reference plugins (ptp, host-local) speak up to 1.0.0: the 1.1.0 prevResult
# here names a veth the test plugged in, as ovn-kubernetes would.
def gc_env(**extra) -> dict:
    return {"PATH": os.environ["PATH"], "CNI_COMMAND": "GC", "CNI_PATH": CNI_BIN, **extra}


def test_cni_1_1_add_check_status_gc_del(host):
    """cniVersion 1.1.0: ADD, CHECK and DEL as in 1.0.0; STATUS is ready; GC removes the
    marker and the tag of containers not in cni.dev/valid-attachments, and nothing else:
    not a valid container's, not an operator's identity, no other key."""
    a, b, c = "c0ffee11" * 4, "c0ffee12" * 4, "c0ffee13" * 4
    with veth_port(host, 11, f"shop_{WEB}") as (va, pa), \
            veth_port(host, 12, "shop_db-0") as (vb, pb), \
            veth_port(host, 13, "ops_pinned-0") as (vc, pc):
        pa, pb = {**pa, "cniVersion": "1.1.0"}, {**pb, "cniVersion": "1.1.0"}
        conf = lambda prev=None, **kw: {**host.conf(prev, **kw), "cniVersion": "1.1.0"}  # noqa
        status, out, err = cni(conf(pa), host.cni_env("ADD", a, "x", pod=WEB))
        assert status == 0 and out == pa, err
        status, out, err = cni(conf(pb), host.cni_env("ADD", b, "x", pod="db-0"))
        assert status == 0 and out == pb, err
        assert cni(conf(pa), host.cni_env("CHECK", a, "x", pod=WEB))[:2] == (0, None)
        host.ovs.vsctl("set", "Interface", vc, 'external_ids:ovsfoot-workload="ops/pinned"')
        before = {v: host.ids(v) for v in (va, vb, vc)}
        assert before[vb]["ovsfoot-cni"] == b and before[vb]["ovsfoot-workload"] == "shop/db"

        assert cni(conf(), gc_env(CNI_COMMAND="STATUS"))[:2] == (0, None)
        # no valid-attachments key: nothing removed
        assert cni(conf(), gc_env())[:2] == (0, None)
        assert {v: host.ids(v) for v in (va, vb, vc)} == before
        assert "no cni.dev/valid-attachments given" in host.log.read_text()

        valid = [{"containerID": a, "ifname": "eth0"}, {"containerID": c, "ifname": "net1"}]
        status, out, err = cni(conf(**{"cni.dev/valid-attachments": valid}), gc_env())
        assert (status, out) == (0, None), err
        assert host.ids(va) == before[va]                   # valid: untouched
        assert host.ids(vc) == before[vc]                   # an operator's: untouched
        assert host.ids(vb) == {"iface-id": "shop_db-0"}    # stale: marker and tag gone
        assert f"marker of container {b}" in host.log.read_text()
        # again: nothing left to do
        assert cni(conf(**{"cni.dev/valid-attachments": valid}), gc_env())[:2] == (0, None)
        assert {v: host.ids(v) for v in (va, vc)} == {va: before[va], vc: before[vc]}

        assert cni(conf(pa), host.cni_env("DEL", a, "x", pod=WEB))[:2] == (0, None)
        assert host.ids(va) == {"iface-id": f"shop_{WEB}"}
        # an empty list: every marker is stale, an operator's identity still is not ours
        assert cni(conf(pb), host.cni_env("ADD", b, "x", pod="db-0"))[0] == 0
        assert cni(conf(**{"cni.dev/valid-attachments": []}), gc_env())[:2] == (0, None)
        assert host.ids(vb) == {"iface-id": "shop_db-0"} and host.ids(vc) == before[vc]


def test_cni_1_1_status_and_gc_never_fail_on_ovsfoot_trouble(host, tmp_path):
    """No OVSDB: STATUS is still ready (it does not ask), GC exits 0 and says why."""
    log = tmp_path / "cni.log"
    no_db = {**host.conf(timeout=0.5), "cniVersion": "1.1.0", "logFile": str(log),
             "ovsdb": f"unix:{tmp_path}/none.sock",
             "cni.dev/valid-attachments": [{"containerID": "c0ffee14", "ifname": "eth0"}]}
    t = time.monotonic()
    assert cni(no_db, gc_env(CNI_COMMAND="STATUS"))[:2] == (0, None)
    assert time.monotonic() - t < 5
    status, out, err = cni(no_db, gc_env())
    assert (status, out) == (0, None), err
    assert "GC: stopped after 0 Interface(s)" in log.read_text() and "none.sock" in err


GOOD11 = {**GOOD, "cniVersion": "1.1.0", "prevResult": {"cniVersion": "1.1.0", "ips": []}}
MALFORMED11 = [
    ("STATUS with cniVersion 1.0.0", GOOD, "STATUS", 1, "1.0.0"),
    ("GC with cniVersion 1.0.0", {**GOOD, "cni.dev/valid-attachments": []}, "GC", 1, "1.0.0"),
    ("GC with cniVersion 0.4.0", {**GOOD, "cniVersion": "0.4.0"}, "GC", 1, "0.4.0"),
    ("valid-attachments not a list", {**GOOD11, "cni.dev/valid-attachments": {}}, "GC", 7,
     "1.1.0"),
    ("a containerID not a string", {**GOOD11, "cni.dev/valid-attachments": [
        {"containerID": 5, "ifname": "eth0"}]}, "GC", 7, "1.1.0"),
    ("an attachment not an object", {**GOOD11, "cni.dev/valid-attachments": ["abc"]}, "GC",
     7, "1.1.0"),
    ("cniVersion 1.2.0", {**GOOD11, "cniVersion": "1.2.0"}, "ADD", 1, "1.0.0"),
]


@pytest.mark.parametrize("what,stdin,command,code,version", MALFORMED11,
                         ids=[m[0] for m in MALFORMED11])
def test_cni_1_1_malformed_input_gets_a_cni_error(what, stdin, command, code, version,
                                                  tmp_path):
    """A verb the request's cniVersion does not have is code 1 (as CHECK with 0.3.x), a
    malformed valid-attachments code 7, before anything changes (no OVSDB here)."""
    env = {**ENV, "CNI_COMMAND": command, "PATH": os.environ["PATH"],
           "OVSFOOT_CNI_LOG": str(tmp_path / "log")}
    status, out, err = cni(stdin, env)
    assert status == 1 and set(out) == {"cniVersion", "code", "msg", "details"}, (out, err)
    assert (out["code"], out["cniVersion"]) == (code, version), out
    assert "Traceback" not in err


def test_older_versions_keep_working(host):
    """0.3.1 and 0.4.0: ADD and DEL as before (CHECK too with 0.4.0)."""
    cid = "c0ffee15" * 4
    with veth_port(host, 15, "shop_web-1") as (veth, prev):
        for version in ("0.3.1", "0.4.0"):
            p = {**prev, "cniVersion": version}
            conf = {**host.conf(p), "cniVersion": version}
            status, out, err = cni(conf, host.cni_env("ADD", cid, "x", pod="web-1"))
            assert status == 0 and out == p, err
            assert host.ids(veth)["ovsfoot-cni"] == cid
            if version == "0.4.0":
                assert cni(conf, host.cni_env("CHECK", cid, "x", pod="web-1"))[:2] == (0, None)
            assert cni(conf, host.cni_env("DEL", cid, "x", pod="web-1"))[:2] == (0, None)
            assert host.ids(veth) == {"iface-id": "shop_web-1"}


# -- the library, and the agent -------------------------------------------------
def test_api_errors(host, tmp_path):
    with pytest.raises(api.DatabaseUnavailable):
        api.Node(f"unix:{tmp_path}/none.sock", timeout=0.3)
    host.ovs.vsctl("add-port", host.ovs.bridge, "lonely", "--", "set", "Interface", "lonely",
                   "type=internal", "external_ids:ovsfoot-elephants=lots")
    try:
        with api.Node(host.ovs.remote) as node:
            with pytest.raises(api.UnknownInterface):
                node.tag_port("nope", "shop/web")
            with pytest.raises(api.UnknownInterface):
                node.find_interface(iface_id="nobody")
            with pytest.raises(api.MalformedValue):
                node.tag_port("lonely", "two words")
            with pytest.raises(api.MalformedValue):
                node.port_footprint("lonely")           # ovsfoot-elephants=lots
            with pytest.raises(api.MalformedValue):
                node.set_keys("lonely", {"ct-zone-x": "5"})     # only ovsfoot- inputs
            with pytest.raises(api.Error):
                node.register_port(None, "shop/web")
            node.tag_port("lonely", "shop/lonely")
            assert node.interface("lonely").external_ids["ovsfoot-workload"] == "shop/lonely"
            assert node.find_interface(name="lonely") == "lonely"
            node.untag_port("lonely")
            node.untag_port("lonely")                   # no error when absent
    finally:
        host.ovs.vsctl("del-port", host.ovs.bridge, "lonely")


def test_registered_port_is_classed_heavy_before_it_sends_a_byte(host, tmp_path):
    replay = tmp_path / "empty.msgpack"
    Recorder(str(replay), "ctnetlink").close()
    state = tmp_path / "state.msgpack"
    StateFile(str(state)).save({"shop/web": {"score": 10.0, "updated": time.time_ns(),
                                             "heavy": True, "elephants": 12}})
    agent = AgentProcess(host.ovs, "--source=replay", f"--replay={replay}", "--speed=0",
                         state=state).start()
    try:
        # A pod of shop/web whose port name says nothing about its workload (iface-id
        # by container, as ovs-cni or Multus would bind it)
        cid = "c0ffee05" * 4
        ns, prev = ptp_pod(host, "p5", cid, "web-7d9f8b6c5d-q2w4x", "10.99.5.0/24")
        veth = host_side(prev)["name"]
        host.attach(veth, f"{cid}_eth0")
        ids = wait_for(lambda: "ovsfoot-footprint" in (i := host.ids(veth)) and i,
                       what="the agent to publish the new port")
        assert ids["ovsfoot-footprint"] == "light" and "ovsfoot-workload-class" not in ids

        t = time.monotonic()
        status, out, err = cni(host.conf(prev, waitForClass=5),
                               host.cni_env("ADD", cid, ns, pod="web-7d9f8b6c5d-q2w4x"))
        assert status == 0 and out == prev, err
        ids = wait_for(lambda: (i := host.ids(veth)).get("ovsfoot-workload-class") and i,
                       timeout=5, interval=0.02, what="the learned class on the port")
        took = time.monotonic() - t
        assert ids["ovsfoot-workload-class"] == "heavy", ids
        assert ids["ovsfoot-footprint"] == "heavy" and ids["ovsfoot-elephants"] == "0"
        assert tx_packets(ns) == 0                      # not a byte sent yet
        assert "learned class heavy" in host.log.read_text()
        assert took < 5

        # The library does the same for a port plugged in by other means
        ns6 = host.netns("p6")
        sh("ip", "-n", HOSTNS, "link", "add", f"{TAG}v6", "type", "veth", "peer", "name",
           "eth0", "netns", ns6)
        sh("ip", "-n", HOSTNS, "link", "set", f"{TAG}v6", "up")
        host.attach(f"{TAG}v6", "port-6")
        with api.Node(host.ovs.remote) as node:
            assert node.find_interface(iface_id="port-6") == f"{TAG}v6"
            fp = node.register_port(None, "shop/web", iface_id="port-6", wait=5)
            assert fp.workload == "shop/web" and fp.workload_class == "heavy" and fp.heavy
            assert fp.elephants == 0 and fp.updated_ms
            wl = node.workload_footprint("shop/web")
            assert {p.interface for p in wl.ports} == {veth, f"{TAG}v6"}
            assert wl.heavy and wl.workload_class == "heavy" and wl.elephants == 0
            nf = wait_for(lambda: (n := node.node_footprint(host.ovs.bridge)).heavy_ports == 2
                          and n,
                          what="node footprint")
            assert nf.heavy and nf.elephants == 0 and nf.published
            # a workload nothing was learned about: light, no class
            fp = node.register_port(f"{TAG}v6", "shop/new", wait=0.5)
            assert fp.workload_class is None
            fp = node.wait_port(f"{TAG}v6", lambda p: p.footprint == "light", 5)
            assert fp.workload == "shop/new"
        assert tx_packets(ns) == 0
        assert cni(host.conf(prev), host.cni_env("DEL", cid, ns))[0] == 0
        ids = wait_for(lambda: "ovsfoot-workload-class" not in (i := host.ids(veth)) and i,
                       what="the class gone with the tag")
        assert ids["ovsfoot-footprint"] == "light"
    finally:
        assert agent.stop() == 0
