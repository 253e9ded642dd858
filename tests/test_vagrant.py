"""The Vagrant lab (vagrant/).

Machine mode: the box is built for real from Debian packages
(vagrant/box/build.sh) and cached. CI boots VMs from it after these tests
(`make vagrant-lab` in .ci/run: vagrant/lab.sh fails unless every VM's services run,
each agent has the eBPF source and experiment.sh measures every row).

Without booting: `vagrant validate` for both providers (VirtualBox and the public
box cannot run here), `systemd-analyze verify` for the agent's and the cluster database's units,
shellcheck on the scripts, and a real lab-mode run of the provisioning scripts:
OVN central, ovsfoot's cluster database (three raft members) and two chassis
(netdev datapath), each in its own network namespace on an underlay bridge,
two pods, the agents publishing into the cluster database; then every script a
second time, which must change nothing; then teardown, which must leave nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from integration.sandbox import wait_for
from ovsfoot.cli import parser as ovsfoot_parser

VAGRANT = Path(__file__).resolve().parents[1] / "vagrant"
PROVISION = VAGRANT / "provision"
UNIT = VAGRANT / "systemd" / "ovsfoot-agent.service"
CLUSTER_UNIT = VAGRANT / "systemd" / "ovsfoot-cluster-db.service"
OVSFOOT = Path(sys.executable).with_name("ovsfoot")


def run(*cmd, env=None, cwd=None, timeout=120, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode:
        raise AssertionError(f"{shlex.join(p.args)} failed ({p.returncode}):\n"
                             f"{p.stdout}\n{p.stderr}")
    return p


# -- Vagrantfile, unit, scripts ------------------------------------------------

def vagrant_validate(tmp_path: Path, *args: str, **env_extra: str) -> str:
    """`vagrant validate` offline, with Vagrant's state in tmp_path."""
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "home"),
           "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"), "VAGRANT_CHECKPOINT_DISABLE": "1",
           **env_extra}
    return run("vagrant", "validate", *args, env=env, cwd=VAGRANT, timeout=120).stdout


def test_vagrant_validate_libvirt(tmp_path):
    out = vagrant_validate(tmp_path, VAGRANT_DEFAULT_PROVIDER="libvirt")
    assert "validated successfully" in out


def test_vagrant_validate_virtualbox(tmp_path):
    # VirtualBox is not in Debian: a stand-in VBoxManage that only reports its
    # version makes the provider usable enough for its settings to be validated.
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "VBoxManage").write_text("#!/bin/sh\necho 7.0.14r161095\n")
    (stub / "VBoxManage").chmod(0o755)
    out = vagrant_validate(tmp_path, VAGRANT_DEFAULT_PROVIDER="virtualbox",
                           PATH=f"{stub}:{os.environ['PATH']}")
    assert "validated successfully" in out


def test_vagrant_chassis_count(tmp_path):
    out = vagrant_validate(tmp_path, "--ignore-provider", OVSFOOT_CHASSIS="3")
    machines = [line.split()[1].rstrip(":") for line in out.splitlines()
                if line.startswith("==>")]
    assert machines == ["central", "hv1", "hv2", "hv3"]


def unit_settings(unit: Path = UNIT) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    text = unit.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(" ".join(value.split()))
    return settings


@pytest.mark.parametrize("source", [UNIT, CLUSTER_UNIT], ids=lambda u: u.stem)
def test_unit_verifies(tmp_path, source):
    # systemd-analyze checks that ExecStart exists: point it at this venv's ovsfoot.
    unit = tmp_path / source.name
    unit.write_text(source.read_text().replace("/opt/ovsfoot/bin/ovsfoot", str(OVSFOOT)))
    p = run("systemd-analyze", "verify", "--man=no", unit, check=False)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), p.stderr


def test_unit_runs_the_agent_right():
    s = unit_settings()
    assert "OVS_RUNDIR=/var/run/openvswitch" in s["Environment"]
    assert s["Restart"] == ["on-failure"]
    assert s["Type"] == ["forking"]
    assert "ovsdb-server.service" in s["Requires"][0].split()
    assert {"ovsdb-server.service", "ovn-controller.service"} <= set(s["After"][0].split())
    # The agent accepts the command line, with the default options expanded.
    opts = next(e.split("=", 1)[1] for e in s["Environment"] if e.startswith("OVSFOOT_OPTS="))
    argv = s["ExecStart"][0].replace("$OVSFOOT_OPTS", opts).split()
    assert argv[:2] == ["/opt/ovsfoot/bin/ovsfoot", "agent"]
    args = ovsfoot_parser().parse_args(argv[1:])
    assert args.source == "auto" and args.detach
    assert args.pidfile == s["PIDFile"][0] == "/run/openvswitch/ovsfoot.pid"
    # its own log directory: openvswitch-switch's logrotate entry takes /var/log/openvswitch/*.log
    assert args.log_file == "/var/log/ovsfoot/agent.log" and s["LogsDirectory"] == ["ovsfoot"]


def test_cluster_db_unit_runs_a_member_right():
    s = unit_settings(CLUSTER_UNIT)
    assert s["Type"] == ["simple"] and s["Restart"] == ["on-failure"]
    assert s["EnvironmentFile"] == ["/etc/default/ovsfoot-cluster-db"]
    assert s["StateDirectory"] == ["ovsfoot"]
    # What provision/cluster-db.sh writes into /etc/default/ovsfoot-cluster-db, expanded.
    opts = "--local=tcp:192.168.56.10 --join=tcp:192.168.56.11:6648"
    argv = s["ExecStart"][0].replace("$OVSFOOT_CLUSTER_DB_OPTS", opts).split()
    assert argv[:4] == ["/opt/ovsfoot/bin/ovsfoot", "cluster-db", "start",
                        "--dir=/var/lib/ovsfoot/cluster-db"]
    args = ovsfoot_parser().parse_args(argv[1:])
    assert args.local == "tcp:192.168.56.10" and args.join == ["tcp:192.168.56.11:6648"]
    assert not args.detach          # in the foreground: systemd's SIGTERM stops it


def test_scripts_shellcheck():
    scripts = [*sorted(PROVISION.glob("*.sh")), *sorted((VAGRANT / "box").glob("*.sh")),
               VAGRANT / "experiment.sh", VAGRANT / "lab.sh"]
    for script in scripts:
        run("bash", "-n", script)
    run("shellcheck", "-x", *scripts)


# -- a real lab-mode run ---------------------------------------------------------

TAG = f"v{os.getpid()}"            # names unique to this test run (<= 15-char links)
CENTRAL_IP = "10.77.0.10"
HOST_IP = "10.77.0.254"             # this machine on the underlay, where the agents run
CHASSIS = {"h1": "10.77.0.11", "h2": "10.77.0.12"}
PODS = {"h1": ("p1", "shop_web-0", "10.0.0.11/24"), "h2": ("p2", "shop_db-0", "10.0.0.12/24")}
# ovsfoot's cluster database: three members, each a node of its own on the underlay,
# over SSL with a certificate each, as each chassis (provision/pki.sh).
MEMBERS = {"d1": "10.77.0.21", "d2": "10.77.0.22", "d3": "10.77.0.23"}
CLUSTER_DB = ",".join(f"ssl:{ip}:6647" for ip in MEMBERS.values())


class LabRun:
    """The lab-mode nodes, built by calling the provisioning scripts."""

    def __init__(self, work: Path):
        self.work = work
        self.underlay = f"{TAG}ul"
        self.pki = work / "pki"
        self.log: list[str] = []

    def ns(self, node: str) -> str:
        return f"{TAG}-{node}"

    def rundir(self, node: str) -> Path:
        return self.work / node

    def script(self, name: str, node: str, *args: str) -> str:
        out = run(PROVISION / name, "--rundir", self.rundir(node), "--netns", self.ns(node),
                  *args, timeout=90).stdout
        self.log.append(out)
        return out

    def creds(self, name: str) -> list[str]:
        return ["--private-key", str(self.pki / f"{name}-privkey.pem"),
                "--certificate", str(self.pki / f"{name}-cert.pem"),
                "--ca-cert", str(self.pki / "cacert.pem")]

    def build(self) -> None:
        self.log.append(run(PROVISION / "pki.sh", "--dir", self.pki, *MEMBERS, *CHASSIS,
                            "reader").stdout)
        for node, ip in {"c": CENTRAL_IP, **MEMBERS, **CHASSIS}.items():
            self.script("underlay.sh", node, "--link", self.underlay, f"{ip}/24")
        run("ip", "addr", "replace", f"{HOST_IP}/24", "dev", self.underlay)
        self.script("central.sh", "c", CENTRAL_IP)
        joined: list[str] = []
        for node, ip in MEMBERS.items():
            join = ("--join", ",".join(joined)) if joined else ()
            self.script("cluster-db.sh", node, "--ovsfoot", OVSFOOT, *self.creds(node), *join,
                        ip)
            joined.append(f"ssl:{ip}:6648")
        for hv, ip in CHASSIS.items():
            self.script("chassis.sh", hv, "--datapath", "netdev", hv, ip, CENTRAL_IP)
        for hv, (pod, lport, cidr) in PODS.items():
            self.script("workloads.sh", hv, "--lport", lport, CENTRAL_IP, f"{TAG}-{pod}", cidr)
        for hv in CHASSIS:
            self.script("agent.sh", hv, "--source", "ctnetlink", "--cluster-db", CLUSTER_DB,
                        *self.creds(hv), "--ovsfoot", OVSFOOT)

    def teardown(self) -> None:
        for node in (*CHASSIS, *MEMBERS, "c"):
            self.script("teardown.sh", node)

    def env(self, node: str) -> dict[str, str]:
        d = str(self.rundir(node))
        return {**os.environ, "OVS_RUNDIR": d, "OVN_RUNDIR": d}

    def vsctl(self, hv: str, *args: str) -> str:
        return run("ovs-vsctl", "--timeout=10", *args, env=self.env(hv)).stdout.strip()

    def ids(self, hv: str, table: str, record: str) -> dict[str, str]:
        out = self.vsctl(hv, "--format=json", "--columns=external_ids", "list", table, record)
        return dict(json.loads(out)["data"][0][0][1])

    def sbctl(self, *args: str) -> str:
        """ovn-sbctl from chassis h1, over the underlay to the central's TCP port."""
        return run("ip", "netns", "exec", self.ns("h1"), "ovn-sbctl",
                   f"--db=tcp:{CENTRAL_IP}:6642", "--timeout=10", *args).stdout.strip()

    def cluster(self, table: str) -> list[dict]:
        """Rows of `table` in ovsfoot's cluster database, read over SSL like the extender."""
        out = run("ovsdb-client", "--timeout=10", *self.creds("reader"), "query", CLUSTER_DB,
                  json.dumps(["OVSFoot_Cluster", {"op": "select", "table": table,
                                                  "where": []}])).stdout
        return json.loads(out)[0]["rows"]

    def cluster_status(self, node: str) -> str:
        return run(OVSFOOT, "cluster-db", "status", "--dir", self.rundir(node)).stdout

    def pids(self) -> dict[str, str]:
        return {f"{p.parent.name}/{p.stem}": p.read_text().strip()
                for p in sorted(self.work.glob("*/*.pid"))}

    def alive(self) -> list[str]:
        return [name for name, pid in self.pids().items() if Path(f"/proc/{pid}").exists()]

    def namespaces(self) -> list[str]:
        return sorted(line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines()
                      if line.startswith(TAG))

    def snapshot(self) -> dict:
        """What a second run of the scripts must leave as it was."""
        snap = {"pids": self.pids(), "netns": self.namespaces(),
                "nb": run("ovn-nbctl", "show", env=self.env("c")).stdout,
                "acls": run("ovn-nbctl", "acl-list", "demo", env=self.env("c")).stdout,
                "sb": run("ovn-sbctl", "show", env=self.env("c")).stdout}
        for hv, (pod, _, _) in PODS.items():
            snap[hv] = {"show": self.vsctl(hv, "show"),
                        "node": self.ids(hv, "Open_vSwitch", "."),
                        "bridge": self.ids(hv, "Bridge", "br-int"),
                        "port": self.ids(hv, "Interface", f"{TAG}-{pod}"),
                        "pod": run("ip", "-n", f"{TAG}-{pod}", "-o", "-4", "addr", "show",
                                   "eth0").stdout,
                        "link": run("ip", "-n", f"{TAG}-{pod}", "-o", "link", "show",
                                    "eth0").stdout}
        return snap


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = LabRun(tmp_path_factory.mktemp("vagrant-lab"))
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()


def test_lab_chassis_register_in_southbound(lab):
    names = wait_for(lambda: sorted(lab.sbctl("--bare", "--columns=name", "list",
                                              "Chassis").split()) == sorted(CHASSIS),
                     what="both chassis in the southbound database")
    assert names
    for hv, ip in CHASSIS.items():
        node = lab.ids(hv, "Open_vSwitch", ".")
        assert node["system-id"] == hv and node["ovn-encap-type"] == "geneve"
        assert node["ovn-encap-ip"] == ip
        assert node["ovn-remote"] == f"tcp:{CENTRAL_IP}:6642"


def test_lab_pods_bound_with_conntrack_zones(lab):
    for hv, (pod, lport, cidr) in PODS.items():
        zones = wait_for(lambda: {k: v for k, v in lab.ids(hv, "Bridge", "br-int").items()
                                  if k.startswith("ct-zone-")}, what=f"zones on {hv}")
        assert f"ct-zone-{lport}" in zones, zones
        port = lab.ids(hv, "Interface", f"{TAG}-{pod}")
        assert port["iface-id"] == lport and port["ip_addresses"] == cidr
        assert port["ovn-installed"] == "true"
        addr = run("ip", "-n", f"{TAG}-{pod}", "-o", "-4", "addr", "show", "eth0").stdout
        assert cidr in addr
    assert "allow-related" in run("ovn-nbctl", "acl-list", "demo", env=lab.env("c")).stdout


def test_lab_geneve_tunnels(lab):
    for hv in CHASSIS:
        other = next(ip for h, ip in CHASSIS.items() if h != hv)
        remotes = wait_for(lambda: lab.vsctl(hv, "--bare", "--columns=options", "find",
                                             "Interface", "type=geneve"),
                           what=f"a Geneve port on {hv}")
        assert f"remote_ip={other}" in remotes


def test_lab_agents_answer(lab):
    for hv in CHASSIS:
        out = run("ovs-appctl", "-t", "ovsfoot", "footprint/show", env=lab.env(hv)).stdout
        assert out.startswith("node: light")
        wait_for(lambda: lab.ids(hv, "Bridge", "br-int").get("ovsfoot-footprint") == "light",
                 what=f"ovsfoot's node key on {hv}'s integration bridge")
        # never on the Open_vSwitch row: every change of it costs a full recompute
        root = lab.ids(hv, "Open_vSwitch", ".")
        assert not [k for k in root if k.startswith("ovsfoot-")], root


def test_lab_cluster_db_has_three_members_and_a_leader(lab):
    status = {node: lab.cluster_status(node) for node in MEMBERS}
    assert sum("Role: leader" in st for st in status.values()) == 1, status
    for node, st in status.items():
        assert f"Address: ssl:{MEMBERS[node]}:6648" in st
        servers = st.split("Servers:", 1)[1]
        assert all(f"ssl:{ip}:6648" in servers for ip in MEMBERS.values()), st


def test_lab_agents_publish_into_the_cluster_db(lab):
    rows = wait_for(lambda: (r := lab.cluster("Chassis")) and len(r) == len(CHASSIS) and r,
                    what="both chassis' rows in the cluster database")
    by_name = {r["name"]: r for r in rows}
    assert sorted(by_name) == sorted(CHASSIS)
    for hv in CHASSIS:
        assert by_name[hv]["hostname"] == hv
        assert by_name[hv]["footprint"] == "light" and by_name[hv]["elephants"] == 0
    # nothing of ovsfoot's in OVN Southbound
    assert "ovsfoot" not in lab.sbctl("list", "Chassis_Private")


def test_lab_pki_names_each_certificate(lab):
    for name in (*MEMBERS, *CHASSIS):
        subject = run("openssl", "x509", "-noout", "-subject", "-in",
                      lab.pki / f"{name}-cert.pem").stdout
        assert subject.strip().endswith(f"CN = {name}"), subject
        run("openssl", "verify", "-CAfile", lab.pki / "cacert.pem", lab.pki / f"{name}-cert.pem")
    assert oct((lab.pki / "h1-privkey.pem").stat().st_mode & 0o777) == "0o600"


def test_pki_run_in_parallel_makes_one_ca(tmp_path):
    """`vagrant up` runs the PKI trigger once per machine, at the same time (libvirt)."""
    names = ("central", "hv1", "hv2")
    runs = [subprocess.Popen([str(PROVISION / "pki.sh"), "--dir", str(tmp_path), *names],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in names]
    out = [p.communicate(timeout=120)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0, 0], out
    assert sum("creating the CA" in o for o in out) == 1, out
    for name in names:
        run("openssl", "verify", "-CAfile", tmp_path / "cacert.pem", tmp_path / f"{name}-cert.pem")


def test_lab_a_chassis_writes_only_its_own_rows(lab):
    """RBAC: h1's certificate may not write h2's row (and the agents' own writes passed)."""
    h2 = next(r for r in lab.cluster("Chassis") if r["name"] == "h2")
    out = run("ovsdb-client", "--timeout=10", *lab.creds("h1"), "transact", CLUSTER_DB,
              json.dumps(["OVSFoot_Cluster", {"op": "update", "table": "Chassis",
                                              "where": [["_uuid", "==", h2["_uuid"]]],
                                              "row": {"footprint": "heavy"}}])).stdout
    assert "permission error" in out, out
    assert next(r for r in lab.cluster("Chassis") if r["name"] == "h2")["footprint"] == "light"


def test_lab_scripts_are_idempotent(lab):
    wait_for(lambda: lab.vsctl("h1", "--bare", "--columns=name", "find", "Interface",
                               "type=geneve") and lab.vsctl("h2", "--bare", "--columns=name",
                                                            "find", "Interface", "type=geneve"),
             what="tunnels, before the snapshot")
    before = lab.snapshot()
    lab.build()
    assert lab.snapshot() == before
    assert "starting" not in lab.log[-1] and "already running" in lab.log[-1]


def test_lab_teardown_leaves_nothing(lab):
    running = lab.pids()
    assert len(running) == 14           # 3 on the central node, 1 per member, 4 per chassis
    lab.teardown()
    assert lab.alive() == []
    assert lab.namespaces() == []
    assert run("ip", "link", "show", lab.underlay, check=False).returncode != 0
    lab.teardown()                      # a second time: nothing left to do, no error


# -- machine mode: the box, and VMs booted from it on libvirt ---------------------

BOX = Path(os.environ.get("OVSFOOT_CACHE", "/var/cache/ovsfoot")) / "box" / \
    "ovsfoot-bookworm-libvirt.box"


@pytest.fixture(scope="module")
def box() -> Path:
    """`make vagrant-box`: built the first time (8 minutes here), then cached."""
    run("bash", VAGRANT / "box" / "build.sh", timeout=3600)
    return BOX


def test_box_is_cached_and_complete(box):
    assert "is up to date" in run("bash", VAGRANT / "box" / "build.sh").stdout
    with tarfile.open(box) as tar:
        assert sorted(tar.getnames()) == ["Vagrantfile", "box.img", "metadata.json"]
        meta = json.load(tar.extractfile("metadata.json"))
    assert meta == {"provider": "libvirt", "format": "qcow2", "virtual_size": 10}

