"""Issue 11, items 1 and 3: SSL on every OVSDB connection, logging through ovs.vlog.

A PKI made with ovs-pki (and a second one, whose CA nobody trusts), real
ovsdb-servers on pssl:, real `ovsfoot agent` and `ovsfoot scheduler-extender`
processes, and the real logrotate on the shipped vagrant/systemd/ovsfoot.logrotate.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import pytest

from integration.agentproc import AgentProcess
from integration.programs import require
from integration.sandbox import OVS_SCHEMA, Daemons, Ovs, free_port, sh, wait_for
from ovsfoot.contract import cluster_schema_path
from ovsfoot.sources.replay import Recorder

ROOT = Path(__file__).resolve().parent.parent
LOGROTATE = ROOT / "vagrant" / "systemd" / "ovsfoot.logrotate"


class Pki:
    """ovs-pki's switch CA and certificates it signed: NAME-privkey.pem, NAME-cert.pem."""

    def __init__(self, d: Path):
        require("ovs-pki")
        self.dir = d
        sh("ovs-pki", f"--dir={d / 'pki'}", "--force", "init", timeout=120)
        self.ca = d / "pki" / "switchca" / "cacert.pem"

    def sign(self, name: str) -> tuple[Path, Path]:
        key, cert = self.dir / f"{name}-privkey.pem", self.dir / f"{name}-cert.pem"
        if not cert.exists():
            subprocess.run(["ovs-pki", f"--dir={self.dir / 'pki'}", "--force", "req+sign", name,
                            "switch"], cwd=self.dir, check=True,
                           capture_output=True, timeout=120)
        return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory):
    """A CA that signed nothing the servers trust, nor their certificates."""
    return Pki(tmp_path_factory.mktemp("other-pki"))


def ssl_server(d: Daemons, name: str, schema: str, pki: Pki) -> str:
    """An ovsdb-server on punix:NAME.sock and pssl:PORT (with --peer-ca-cert, so that
    clients may bootstrap its CA); returns the ssl: remote."""
    db = d.dir / f"{name}.db"
    if not db.exists():
        sh("ovsdb-tool", "create", str(db), schema)
    key, cert = pki.sign(f"{name}-server")
    port = free_port()
    d.start(name, "ovsdb-server", str(db), f"--remote=punix:{d.dir / name}.sock",
            f"--remote=pssl:{port}:127.0.0.1", f"--unixctl={d.dir / name}.ctl",
            f"--private-key={key}", f"--certificate={cert}", f"--ca-cert={pki.ca}",
            f"--peer-ca-cert={pki.ca}")
    wait_for(lambda: (d.dir / f"{name}.sock").exists(), what=f"{name} socket")
    return f"ssl:127.0.0.1:{port}"


class SslOvs(Ovs):
    """The local Open_vSwitch database, also on pssl: (no ovs-vswitchd: not needed)."""

    def __init__(self, workdir: Path, pki: Pki):
        super().__init__(workdir)
        require("ovsdb-tool", "ovsdb-server", "ovs-vsctl", "ovs-appctl")
        self.ssl_remote = ssl_server(self, "ovsdb-server", OVS_SCHEMA, pki)
        self.remote = f"unix:{self.dir / 'ovsdb-server.sock'}"
        self.vsctl("init")
        self.create_bridge()


def empty_replay(tmp_path: Path) -> Path:
    replay = tmp_path / "empty.msgpack"
    Recorder(str(replay), "ctnetlink").close()
    return replay


def agent_args(tmp_path: Path, *more: str) -> list[str]:
    return ["--source=replay", f"--replay={empty_replay(tmp_path)}", "--speed=0", *more]


def der(pem: Path) -> bytes:
    text = pem.read_text()      # ovs-pki's files have the certificate as text first
    return ssl.PEM_cert_to_DER_cert(text[text.index("-----BEGIN CERTIFICATE-----"):])


def test_local_db_over_ssl_with_bootstrapped_ca(pki, tmp_path):
    """`--db ssl:` with -p/-c and --bootstrap-ca-cert of a file that does not exist:
    the agent saves the CA the server sent, reconnects checking the server with it,
    and reads and writes the local database over SSL."""
    ovs = SslOvs(tmp_path / "ovs", pki)
    key, cert = pki.sign("hv1")
    ca = tmp_path / "bootstrapped-ca.pem"
    agent = AgentProcess(ovs, *agent_args(tmp_path, f"--db={ovs.ssl_remote}", f"-p{key}",
                                          f"--certificate={cert}",
                                          f"--bootstrap-ca-cert={ca}"))
    try:
        agent.start()
        assert der(ca) == der(pki.ca)
        assert f"{ovs.ssl_remote}: bootstrapped the CA certificate" in agent.log_text()
        assert json.loads(agent.appctl("footprint/show", "json"))["node"]["class"] == "light"
        wait_for(lambda: ovs.external_ids("Bridge", ovs.bridge).get("ovsfoot-footprint"),
                 what="the node summary written over SSL")
        assert agent.alive()
    finally:
        agent.stop()
        ovs.stop_all()


def test_bad_credentials_are_a_log_line_and_retries_never_a_crash(pki, other_pki, tmp_path):
    """A missing private key, then a CA that did not sign the server's certificate:
    each is one clear log line while the agent keeps retrying, not ready (no control
    socket) and alive; fixing the files on disk is enough, no restart."""
    ovs = SslOvs(tmp_path / "ovs", pki)
    good_key, cert = pki.sign("hv1")
    key, ca = tmp_path / "hv1-privkey.pem", tmp_path / "ca.pem"
    shutil.copy(other_pki.ca, ca)
    agent = AgentProcess(ovs, *agent_args(tmp_path, f"--db={ovs.ssl_remote}",
                                          f"--private-key={key}", f"-c{cert}", f"-C{ca}"))
    agent.spawn()
    try:
        wait_for(lambda: f"cannot read --private-key {key}" in agent.log_text(),
                 timeout=30, what="the missing key in the log")
        shutil.copy(good_key, key)
        wait_for(lambda: "the server's certificate is not trusted" in agent.log_text(),
                 timeout=30, what="the untrusted server in the log")
        assert agent.alive() and not agent.control_socket_exists()
        text = agent.log_text()
        assert "Traceback" not in text and "TypeError" not in text
        # said once (and in the agent's "waiting for ovsdb-server"), not at each retry
        assert text.count(f"{ovs.ssl_remote}: cannot read --private-key {key}: No such file "
                          "or directory; retrying") == 1
        shutil.copy(pki.ca, ca)
        agent.wait_ready(60)
        assert agent.log_text().count(f"{ovs.ssl_remote}: SSL connection established") >= 1
        assert json.loads(agent.appctl("footprint/show", "json"))["node"]["class"] == "light"
    finally:
        agent.stop()
        ovs.stop_all()


def test_ssl_ovn_remote_without_or_with_wrong_credentials(pki, other_pki, tmp_path):
    """An ssl: ovn-remote used to crash the agent (python-ovs's TypeError: cafile,
    capath and cadata cannot be all omitted). Without SSL options it is skipped with
    a reason; with a CA that does not trust the server, a log line and retries. (Each
    agent starts from a state file of version 1, as an upgraded agent does: only
    those connect to OVN Southbound.)"""
    ovs = SslOvs(tmp_path / "ovs", pki)
    sb = Daemons(tmp_path / "sb", {})
    remote = ssl_server(sb, "sb", "/usr/share/ovn/ovn-sb.ovsschema", pki)
    ovs.vsctl("set", "Open_vSwitch", ".", "external_ids:system-id=hv1",
              f"external_ids:ovn-remote={remote}")
    key, cert = pki.sign("hv1")
    plain = AgentProcess(ovs, *agent_args(tmp_path))
    wrong = AgentProcess(ovs, *agent_args(tmp_path, f"-p{key}", f"-c{cert}",
                                          f"-C{other_pki.ca}"), name="wrong",
                         state=tmp_path / "wrong.state")
    for agent in (plain, wrong):
        agent.state.write_bytes(msgpack.packb({"version": 1, "workloads": {}}))
    try:
        plain.start()
        wait_for(lambda: "not checking OVN Southbound" in plain.log_text(), timeout=20,
                 what="the skipped Southbound in the log")
        plain.stop()
        wrong.start()
        wait_for(lambda: f"{remote}: the server's certificate is not trusted"
                 in wrong.log_text(), timeout=30, what="the untrusted Southbound")
        time.sleep(2)       # more retries
        assert wrong.alive() and "Traceback" not in wrong.log_text()
        assert json.loads(wrong.appctl("footprint/show", "json"))["node"]["class"] == "light"
    finally:
        for a in (plain, wrong):
            a.stop()
        sb.stop_all()
        ovs.stop_all()


def _healthz(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_extender_healthz_is_503_until_synced_over_ssl(pki, tmp_path):
    """The extender on an ssl: cluster database with a private key that is not there
    yet: /healthz answers 503 with the reason, the process stays up and retries; once
    the key is in place it syncs and /healthz answers 200."""
    db = Daemons(tmp_path / "db", {})
    remote = ssl_server(db, "cluster", cluster_schema_path(), pki)
    good_key, cert = pki.sign("extender")
    key = tmp_path / "extender-privkey.pem"
    log = tmp_path / "extender.log"
    ext = subprocess.Popen(
        [sys.executable, "-m", "ovsfoot", "scheduler-extender", "--listen=127.0.0.1:0",
         f"--cluster-db={remote}", f"-p{key}", f"-c{cert}", f"-C{pki.ca}",
         f"--log-file={log}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = ext.stdout.readline().split()[-1]
        status, health = wait_for(lambda: (h := _healthz(url))[1].get("problem") and h,
                                  timeout=20, what="the extender's reason on /healthz")
        assert status == 503 and health["synced"] is False
        assert f"cannot read --private-key {key}" in health["problem"]
        assert f"cannot read --private-key {key}" in log.read_text()
        time.sleep(1.5)
        assert ext.poll() is None and _healthz(url)[0] == 503
        shutil.copy(good_key, key)
        status, health = wait_for(lambda: (h := _healthz(url))[0] == 200 and h, timeout=30,
                                  what="the extender synced")
        assert health["synced"] and health["connected"] and "problem" not in health
        assert "Traceback" not in log.read_text()
    finally:
        ext.terminate()
        ext.wait(10)
        db.stop_all()


# -- logging -----------------------------------------------------------------------
def test_readme_command_line_parses():
    from ovsfoot.cli import parser
    args = parser().parse_args("agent --source auto --bridge br-int --detach "
                               "--log-file".split())
    assert args.log_file == "default" and args.verbose is None
    args = parser().parse_args(["agent", "-vagent:file:dbg", "-vconsole:off", "-v"])
    assert args.verbose == ["agent:file:dbg", "console:off", "dbg"]


def test_vlog_default_file_levels_and_vlog_set(tmp_path):
    """`--log-file` alone writes $OVS_LOGDIR/ovsfoot.log in OVS's format; -v specs name
    ovsfoot's modules; vlog/list shows them, vlog/set changes them live."""
    ovs = Ovs(tmp_path / "ovs").start_db().create_bridge()
    agent = AgentProcess(ovs, *agent_args(tmp_path, "--log-file", "-vagent:file:dbg",
                                          "-vsyslog:off"))
    assert agent.log == Path(ovs.env["OVS_LOGDIR"]) / "ovsfoot.log"
    try:
        agent.start()
        levels = {line.split()[0]: line.split()[1:] for line in
                  agent.appctl("vlog/list").splitlines()[2:]}
        assert levels["agent"] == ["off", "off", "dbg"]     # console, syslog, file
        assert levels["ovsdb"] == ["off", "off", "info"]
        assert {"idl", "reconnect", "scheduler.server", "control.unixctl"} <= set(levels)
        # python-ovs's file format: %D{%Y-%m-%dT%H:%M:%S.###Z}|%05N|%c%T|%p|%m, padded
        line = wait_for(lambda: next((ln for ln in agent.log_text().splitlines()
                                      if "| cli | INFO | ovsfoot " in ln), None),
                        what="a line in python-ovs's format")
        assert line.split("|")[0].strip().endswith("Z")

        agent.appctl("vlog/set", "agent:file:warn")
        agent.appctl("threshold/set", "bytes=7000000", "seconds=1")
        agent.appctl("vlog/set", "agent:file:info")
        agent.appctl("threshold/set", "bytes=8000000", "seconds=1")
        wait_for(lambda: "thresholds now bytes=8000000" in agent.log_text(),
                 what="the line at info again")
        assert "thresholds now bytes=7000000" not in agent.log_text()
        bad = agent.appctl("vlog/set", "nosuch:file:dbg", check=False)
        assert agent.alive(), bad
    finally:
        agent.stop()
        ovs.stop_all()


def test_bad_verbose_spec_is_refused_at_start():
    p = subprocess.run([sys.executable, "-m", "ovsfoot", "agent", "-vnosuch:file:dbg"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 1 and 'no destination, level, or module "nosuch"' in p.stderr


def test_shipped_logrotate_file_makes_the_agent_write_the_new_file(tmp_path):
    """The real `logrotate -f` on vagrant/systemd/ovsfoot.logrotate (only its path
    moved into the test's directory): the old log is set aside, and the agent, told by
    the file's postrotate (ovs-appctl -t ovsfoot vlog/reopen), writes into the new one."""
    try:
        require("logrotate")
    except ValueError:      # integration/programs.py does not list it (yet): Debian's logrotate
        if not shutil.which("logrotate"):
            pytest.fail("logrotate is not installed (Debian package logrotate)")
    ovs = Ovs(tmp_path / "ovs").start_db().create_bridge()
    logdir = tmp_path / "log"
    logdir.mkdir(mode=0o755)
    log = logdir / "agent.log"
    shipped = LOGROTATE.read_text()
    assert "/var/log/ovsfoot/agent.log {" in shipped
    conf = tmp_path / "ovsfoot.logrotate"
    conf.write_text(shipped.replace("/var/log/ovsfoot/agent.log", str(log)))
    agent = AgentProcess(ovs, *agent_args(tmp_path, f"--log-file={log}"))
    try:
        agent.start()
        agent.appctl("threshold/set", "bytes=7000000", "seconds=1")
        wait_for(lambda: "thresholds now bytes=7000000" in log.read_text(),
                 what="a line before the rotation")
        p = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), "-v", str(conf)],
                           env=ovs.env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        rotated = logdir / "agent.log.1"       # delaycompress: the first one stays plain
        assert rotated.exists() and "thresholds now bytes=7000000" in rotated.read_text()
        agent.appctl("threshold/set", "bytes=8000000", "seconds=1")
        wait_for(lambda: log.exists() and "thresholds now bytes=8000000" in log.read_text(),
                 what="the agent writing into the new file")
        assert "thresholds now bytes=8000000" not in rotated.read_text()
        assert "thresholds now bytes=7000000" not in log.read_text()
        assert oct(log.stat().st_mode & 0o777) == "0o640"      # logrotate's create
    finally:
        agent.stop()
        ovs.stop_all()


def test_cni_plugin_over_ssl(pki, tmp_path):
    """ovsfoot-cni with an ssl: `ovsdb` and its three files in the network config tags the
    pod's Interface; without the files it passes the result through and tags nothing."""
    ovs = SslOvs(tmp_path / "cni-ovs", pki)
    try:
        ovs.vsctl("add-port", ovs.bridge, "vethpod1", "--", "set", "Interface", "vethpod1",
                  "type=internal", "external_ids:iface-id=shop_web-0")
        key, cert = pki.sign("cni")
        prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "vethpod1"}], "ips": []}
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
               "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
               "CNI_ARGS": "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0"}
        conf = {"cniVersion": "1.0.0", "name": "podnet", "type": "ovsfoot-cni",
                "ovsdb": ovs.ssl_remote, "timeout": 2, "prevResult": prev,
                "logFile": str(tmp_path / "cni.log")}
        plugin = str(Path(sys.executable).parent / "ovsfoot-cni")
        p = subprocess.run([plugin], input=json.dumps(conf), env=env, capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 0 and json.loads(p.stdout)["interfaces"] == prev["interfaces"]
        assert "ovsfoot-workload" not in ovs.external_ids("Interface", "vethpod1")
        assert "SSL" in (tmp_path / "cni.log").read_text()        # said why, in the log
        conf.update(sslPrivateKey=str(key), sslCertificate=str(cert), sslCaCert=str(pki.ca))
        p = subprocess.run([plugin], input=json.dumps(conf), env=env, capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 0, p.stdout + p.stderr
        ids = ovs.external_ids("Interface", "vethpod1")
        assert ids["ovsfoot-workload"] == "shop/web" and ids["ovsfoot-cni"] == "c1"
    finally:
        ovs.stop_all()
