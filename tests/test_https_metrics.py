"""HTTPS for the scheduler extender and Prometheus metrics (issue 11, items 2 and 4).

All for real: a PKI made with openssl (a CA, the extender's certificate, a client
certificate of that CA and one of a rogue CA with the same subject); the extender as
a process over a real ovsfoot cluster database; TLS clients that are not ours (curl,
and Debian's prometheus, whose Go TLS stack is the one kube-scheduler uses); the agent
as a process on the OVN node of conftest.py with an iperf3 elephant; Debian's
prometheus server scraping the agent and the extender (with the client certificate,
the rogue one and none), its HTTP API asked for the series.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from unittest import mock

import pytest

from conftest import THRESHOLDS
from integration.agentproc import AgentProcess
from integration.clusterdb import ClusterDb
from integration.programs import require
from integration.sandbox import free_port, sh, terminate, text_or_empty, wait_for

OVSFOOT = [sys.executable, "-m", "ovsfoot"]

# -- the PKI ------------------------------------------------------------------
def _openssl(d: Path, *args: str) -> None:
    sh("openssl", *args, timeout=60)


def _key_and_csr(d: Path, name: str, cn: str) -> None:
    _openssl(d, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"),
             "-subj", f"/CN={cn}")


def _ca(d: Path, name: str) -> None:
    _openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.pem"),
             "-days", "2", "-subj", f"/CN={name}")


def _sign(d: Path, name: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl(d, "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / f"{ca}.pem"),
             "-CAkey", str(d / f"{ca}.key"), "-CAcreateserial", "-CAserial",
             str(d / f"{ca}.srl"), "-out", str(d / f"{name}.pem"), "-days", "2",
             "-extfile", str(d / f"{name}.ext"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """ca: signs `server` (127.0.0.1, localhost) and `client`; `rogue` is a client
    certificate with the same subject from `rogue-ca`."""
    require("openssl", "curl")
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _key_and_csr(d, "server", "ovsfoot-extender")
    _sign(d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                             "extendedKeyUsage=serverAuth\n")
    for name, ca in (("client", "ca"), ("rogue", "rogue-ca")):
        _key_and_csr(d, name, "kube-scheduler")
        _sign(d, name, ca, "extendedKeyUsage=clientAuth\n")
    return d


def client_context(pki: Path, cert: str | None = "client") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert:
        ctx.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
    return ctx


def curl(url: str, pki: Path, cert: str | None = "client", *args: str,
         cacert: bool = True) -> subprocess.CompletedProcess:
    cmd = ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args]
    if cacert:
        cmd += ["--cacert", str(pki / "ca.pem")]
    if cert:
        cmd += ["--cert", str(pki / f"{cert}.pem"), "--key", str(pki / f"{cert}.key")]
    return subprocess.run([*cmd, url], capture_output=True, text=True, timeout=30)


# -- the cluster database and the extender -------------------------------------
@pytest.fixture(scope="module")
def db(tmp_path_factory):
    d = ClusterDb(tmp_path_factory.mktemp("clusterdb")).start_db()
    yield d
    d.stop_all()


class Extender:
    """`ovsfoot scheduler-extender` over HTTPS."""

    def __init__(self, db: ClusterDb, pki: Path, *args: str, client_ca: bool = True):
        self.pki = pki
        self.log = db.dir / f"extender-{time.monotonic_ns()}.log"
        tls = [f"--tls-cert={pki / 'server.pem'}", f"--tls-key={pki / 'server.key'}"]
        if client_ca:
            tls.append(f"--client-ca={pki / 'ca.pem'}")
        self.proc = subprocess.Popen(
            [*OVSFOOT, "scheduler-extender", "--listen=127.0.0.1:0", f"--cluster-db={db.remote}",
             f"--log-file={self.log}", *tls, *args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        assert "listening on https://127.0.0.1:" in line, (line, self.log_text())
        self.url = line.split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])
        self.ctx = client_context(pki)
        wait_for(lambda: self.request("GET", "/healthz")[1].get("synced"),
                 what="extender synced with the DB")

    def request(self, method: str, path: str, body=None, ctx=None):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10,
                                           context=ctx or self.ctx)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            text = r.read().decode()
            return r.status, json.loads(text) if "json" in (r.getheader("Content-Type") or "") \
                else text
        finally:
            conn.close()

    def metrics(self) -> dict[str, float]:
        """The extender's /metrics as {sample name and labels: value}."""
        from prometheus_client.parser import text_string_to_metric_families
        status, text = self.request("GET", "/metrics")
        assert status == 200, text
        return {s.name + json.dumps(s.labels, sort_keys=True): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    def log_text(self) -> str:
        return text_or_empty(self.log)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def pod_args(nodes) -> dict:
    pod = {"metadata": {"name": "web-0", "namespace": "shop", "uid": "uid-web-0"},
           "spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    return {"Pod": pod, "Nodes": None, "NodeNames": list(nodes)}


# -- HTTPS --------------------------------------------------------------------
def test_mutual_tls_serves_the_ca_s_clients_and_refuses_a_wrong_certificate(db, pki):
    """curl and Python's ssl with the CA's client certificate get answers; curl with a
    certificate of another CA (same subject), or none, is refused in the handshake, and
    so is plain HTTP; the extender keeps serving and counts the failures."""
    db.set_chassis("hv-tls", "node-tls")
    ext = Extender(db, pki)
    try:
        ok = curl(ext.url + "/healthz", pki)
        assert ok.returncode == 0, ok.stderr
        body, code = ok.stdout.rsplit("\n", 1)
        assert code == "200" and json.loads(body)["chassis"] == 1

        status, scores = ext.request("POST", "/ovsfoot/prioritize",
                                     pod_args(["node-tls", "node-x"]))
        assert status == 200 and {h["Host"] for h in scores} == {"node-tls", "node-x"}

        for cert in ("rogue", None):
            bad = curl(ext.url + "/healthz", pki, cert)
            assert bad.returncode != 0 and bad.stdout.strip() in ("", "000"), bad
            assert bad.stderr, bad          # curl says why (an alert from the server)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            ext.request("GET", "/healthz", ctx=client_context(pki, "rogue"))
        plain = curl(f"http://127.0.0.1:{ext.port}/healthz", pki, None, cacert=False)
        assert plain.stdout.strip() in ("", "000"), plain     # no HTTP answer in clear

        again = curl(ext.url + "/healthz", pki)
        assert again.returncode == 0 and again.stdout.endswith("200"), again
        m = ext.metrics()
        assert m["ovsfoot_extender_tls_handshake_failures_total{}"] >= 4
        assert m['ovsfoot_extender_requests_total{"code": "200", "verb": "prioritize"}'] == 1
        assert "client certificate refused" in ext.log_text()
    finally:
        ext.stop()


def test_https_without_client_ca_needs_no_client_certificate(db, pki):
    """Server TLS alone: any client that trusts the CA is served; one that does not
    trust it refuses the extender (the certificate served is --tls-cert's)."""
    ext = Extender(db, pki, client_ca=False)
    try:
        r = curl(ext.url + "/healthz", pki, None)
        assert r.returncode == 0 and r.stdout.endswith("200"), r
        untrusted = curl(ext.url + "/healthz", pki, None, cacert=False)
        assert untrusted.returncode == 60, untrusted      # curl: peer certificate not trusted
    finally:
        ext.stop()


@pytest.mark.parametrize("args, said", [
    (["--client-ca={pki}/ca.pem"], "--tls-key and --client-ca need --tls-cert"),
    (["--tls-cert={pki}/missing.pem"], "--tls-cert {pki}/missing.pem"),
    (["--tls-cert={pki}/server.pem", "--tls-key={pki}/client.key"], "cannot load"),
    (["--tls-cert={pki}/server.pem", "--tls-key={pki}/server.key",
      "--client-ca={pki}/server.key"], "--client-ca"),
])
def test_unusable_tls_options_exit_1_with_the_reason(db, pki, args, said):
    p = subprocess.run([*OVSFOOT, "scheduler-extender", "--listen=127.0.0.1:0",
                        f"--cluster-db={db.remote}", *[a.format(pki=pki) for a in args]],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and said.format(pki=pki) in p.stderr, p


# -- metrics through a real prometheus ------------------------------------------
class Prometheus:
    """Debian's prometheus with its own config and storage, on 127.0.0.1."""

    def __init__(self, workdir: Path, scrape_configs: list[dict]):
        require("prometheus")
        self.dir = workdir
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                             "evaluation_interval": "1s"},
                  "scrape_configs": scrape_configs}
        (workdir / "prometheus.yml").write_text(json.dumps(config, indent=1))  # JSON is YAML
        self.log = open(workdir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._ready, timeout=60, interval=0.5, what="prometheus ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {(self.dir / 'prometheus.log').read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            out = json.loads(r.read())
        assert out["status"] == "success", out
        return out["data"]

    def query(self, q: str) -> list[tuple[dict, float]]:
        """An instant query: (labels, value) of each series."""
        return [(r["metric"], float(r["value"][1])) for r in self.api("query", query=q)["result"]]

    def value(self, q: str) -> float | None:
        rows = self.query(q)
        assert len(rows) <= 1, rows
        return rows[0][1] if rows else None

    def wait(self, q: str, pred=lambda v: v is not None, timeout=60.0):
        """Waits until the query's single value satisfies `pred`; returns it."""
        seen = []

        def check():
            v = self.value(q)
            seen[:] = [v]
            return (v,) if pred(v) else None
        try:
            return wait_for(check, timeout=timeout, interval=0.5, what=q)[0]
        except TimeoutError:
            raise AssertionError(f"{q}: last value {seen}") from None

    def targets(self) -> dict[str, dict]:
        return {t["labels"]["job"]: t for t in self.api("targets")["activeTargets"]}

    def stop(self) -> None:
        terminate(self.proc, 20)
        self.log.close()


def extender_job(name: str, ext: Extender, cert: str | None) -> dict:
    """A Prometheus scrape of `ext` over HTTPS, with the client certificate `cert`
    (pki/CERT.pem and .key) or none."""
    tls = {"ca_file": str(ext.pki / "ca.pem")}
    if cert:
        tls.update(cert_file=str(ext.pki / f"{cert}.pem"), key_file=str(ext.pki / f"{cert}.key"))
    return {"job_name": name, "scheme": "https", "tls_config": tls,
            "static_configs": [{"targets": [f"127.0.0.1:{ext.port}"]}]}


def test_prometheus_scrapes_the_agent_and_the_extender(node, db, pki, tmp_path):
    """The agent (ctnetlink, publishing into the cluster database) and the extender over
    mutual TLS, scraped by prometheus every second while an iperf3 elephant runs p1 ->
    p2; a job with the rogue client certificate and one with none are refused. The
    series are read back from prometheus' HTTP API."""
    metrics_port = free_port()
    node.flush_conntrack()
    agent = AgentProcess(node.ovs, "--source=ctnetlink", f"--netns={node.kp.netns}",
                         "--interval=0.2", *THRESHOLDS, f"--cluster-db={db.remote}",
                         "--heartbeat=1", f"--metrics=127.0.0.1:{metrics_port}",
                         state=tmp_path / "state").start()
    ext = prom = None
    try:
        ext = Extender(db, pki, "--stale-seconds=30")
        prom = Prometheus(tmp_path, [
            {"job_name": "agent", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]},
            extender_job("extender", ext, "client"),
            extender_job("extender-rogue-cert", ext, "rogue"),
            extender_job("extender-no-cert", ext, None),
        ])
        prom.wait('up{job="agent"}', lambda v: v == 1)
        prom.wait('up{job="extender"}', lambda v: v == 1)
        for job in ("extender-rogue-cert", "extender-no-cert"):
            prom.wait(f'up{{job="{job}"}}', lambda v: v == 0)
            t = wait_for(lambda: prom.targets()[job].get("lastError") and prom.targets()[job],
                         what=f"{job}'s scrape error")
            # refused in the handshake: Go reports the TLS alert, or the reset that closed
            # the connection before it arrived (up is 0 either way, checked above)
            assert any(w in t["lastError"].lower() for w in ("tls", "certificate", "reset")), t

        # the agent: an elephant p1 -> p2 counts in p1's zone (source) and p2's (sink)
        p1, p2 = node.pods["p1"], node.pods["p2"]
        a = '{job="agent"}'

        def scraped():      # while the flow runs: an elephant ends when its connection closes
            for role in ("source", "sink"):
                prom.wait(f'max_over_time(ovsfoot_elephants_active{{job="agent",role="{role}"}}'
                          f'[5m])', lambda v: v and v >= 1)
            for p in (p1, p2):
                prom.wait(f'max_over_time(ovsfoot_port_heavy{{job="agent",port="{p.lport}"}}'
                          f'[5m])', lambda v: v == 1)
            prom.wait(f"max_over_time(ovsfoot_node_elephants{a}[5m])", lambda v: v and v >= 2)
        node.iperf("p1", "p2", seconds=30, during=scraped)
        assert prom.wait(f"ovsfoot_elephants_detected_total{a}", lambda v: v and v >= 2) >= 2
        assert prom.value('ovsfoot_elephants_active{job="agent",role="unattributed"}') \
            is not None
        count = prom.wait(f"ovsfoot_detection_latency_seconds_count{a}", lambda v: v and v >= 2)
        mean = prom.value(f"ovsfoot_detection_latency_seconds_sum{a}") / count
        assert 0 < mean < 5, mean       # a 0.2 s poll, 0.1 s publish interval
        assert prom.value('ovsfoot_detection_latency_seconds_bucket{job="agent",'
                          'le="+Inf"}') == count
        assert prom.value(f"ovsfoot_events_total{a}") > 0
        assert prom.wait(f"ovsfoot_ctnetlink_poll_seconds_count{a}", lambda v: v and v > 5)
        assert prom.value(f"ovsfoot_ctnetlink_polls_total{a}") > 5
        for loss in ("dropped", "map_full", "evictions"):
            assert prom.value(f'ovsfoot_source_{loss}_total{{job="agent",'
                              f'source="ctnetlink"}}') == 0
        assert prom.value('ovsfoot_publish_transactions_total{job="agent",target="ovsdb"}') > 0
        prom.wait('ovsfoot_publish_transactions_total{job="agent",target="cluster"}',
                  lambda v: v and v > 0)
        assert prom.value(f'sum(ovsfoot_publish_failures_total{a})') == 0
        # per port: the bound ports and nothing else, p1 and p2 heavy during the elephant
        ports = {m["port"]: m["interface"] for m, _ in prom.query(f"ovsfoot_port_elephants{a}")}
        assert ports == {p.lport: p.interface for p in node.pods.values()}, ports
        for p in (p1, p2):
            assert prom.value(f'max_over_time(ovsfoot_port_heavy{{job="agent",port="{p.lport}"}}'
                              f'[5m])') == 1
            assert prom.value(f'max_over_time(ovsfoot_port_bytes{{job="agent",'
                              f'port="{p.lport}"}}[5m])') > 5_000_000
        assert prom.value(f'max_over_time(ovsfoot_port_heavy{{job="agent",'
                          f'port="{node.pods["p3"].lport}"}}[5m])') == 0
        assert prom.value(f"max_over_time(ovsfoot_node_elephants{a}[5m])") >= 2
        assert prom.value(f"ovsfoot_metrics_snapshot_age_seconds{a}") < 1

        # the extender: requests by verb, its view (the agent's chassis), its age
        for _ in range(3):
            assert ext.request("POST", "/ovsfoot/prioritize", pod_args(["n1", "n2"]))[0] == 200
        for _ in range(2):
            assert ext.request("POST", "/ovsfoot/filter", pod_args(["n1"]))[0] == 200
        assert ext.request("POST", "/ovsfoot/nothing", pod_args(["n1"]))[0] == 404
        x = '{job="extender"'
        prom.wait(f'ovsfoot_extender_requests_total{x},verb="prioritize",code="200"}}',
                  lambda v: v == 3)
        prom.wait(f'ovsfoot_extender_requests_total{x},verb="filter",code="200"}}',
                  lambda v: v == 2)
        prom.wait(f'ovsfoot_extender_requests_total{x},verb="other",code="404"}}',
                  lambda v: v == 1)         # counted as its answer goes: maybe a scrape later
        assert prom.value(f'ovsfoot_extender_request_seconds_count{x},verb="prioritize"}}') == 3
        assert prom.value(f'ovsfoot_extender_requests_total{x},verb="metrics",code="200"}}') > 0
        # every chassis in the database: the agent's (and the first test's hv-tls)
        chassis = db.chassis()
        assert node.ovs.vsctl("get", "open_vswitch", ".", "external_ids:system-id").strip('"') \
            in chassis, chassis
        prom.wait(f"ovsfoot_extender_nodes{x}}}", lambda v: v == len(chassis))
        prom.wait(f"ovsfoot_extender_view_age_seconds{x}}}", lambda v: v is not None and v < 5)
        assert prom.value(f"ovsfoot_extender_view_synced{x}}}") == 1
        assert prom.value(f"ovsfoot_extender_tls_handshake_failures_total{x}}}") >= 2
    finally:
        if prom:
            prom.stop()
        if ext:
            ext.stop()
        agent.stop()
        node.flush_conntrack()


# -- the parts the host cannot run for real ----------------------------------------
def _samples(registry) -> dict[str, float]:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    return {s.name + json.dumps(s.labels, sort_keys=True): s.value
            for f in text_string_to_metric_families(generate_latest(registry).decode())
            for s in f.samples}


def test_bpf_source_losses_are_exported_from_its_stats():
    """The bpf source runs in the VM only (tests/test_bpf_vm.py): its stats(), as it
    returns them, become the loss counters (ctnetlink's run above shows them at 0)."""
    from prometheus_client import CollectorRegistry
    from ovsfoot.control import metrics
    stats = {"source": "bpf", "probe": "fentry", "events": 12, "flows_tracked": 7,
             "evictions": 3, "started": 10, "late_starts": 0, "ended": 0, "elephants": 2,
             "dropped": 5, "map_full": 4}
    snap = metrics.Snapshot(time.monotonic(), {"events": 12, "detected": 2, "ended": 0,
                                               "unattributed": 0},
                            dict.fromkeys(metrics.ROLES, 0), [], (0, False, 0),
                            {"ovsdb": (1, 0)}, "bpf", stats)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.AgentCollector(mock.Mock(current=lambda: snap)))
    s = _samples(registry)
    assert s['ovsfoot_source_dropped_total{"source": "bpf"}'] == 5
    assert s['ovsfoot_source_map_full_total{"source": "bpf"}'] == 4
    assert s['ovsfoot_source_evictions_total{"source": "bpf"}'] == 3
    assert s['ovsfoot_source_flows_tracked{"source": "bpf"}'] == 7
    assert not any("ctnetlink" in k for k in s)


def test_detection_latency_counts_an_elephant_at_the_commit_that_carried_it():
    """An elephant detected after the transaction in flight was built is observed at
    the next commit, not this one; each elephant once; a replay observes nothing."""
    import types
    from ovsfoot.control import metrics
    active = {}
    agent = types.SimpleNamespace(
        footprints=types.SimpleNamespace(active=active), publisher=types.SimpleNamespace(),
        source=types.SimpleNamespace(name="bpf", clock=time.time_ns))
    m = metrics.AgentMetrics(agent)
    try:
        assert agent.publisher.on_commit == m.on_publisher_commit
        now = time.time_ns()
        active["a"] = types.SimpleNamespace(detected_at=now - 300_000_000)   # 0.3 s ago
        active["b"] = types.SimpleNamespace(detected_at=now + 10**9)         # after `built`
        m.on_publisher_commit(now)
        s = _samples(m.latency)
        assert s["ovsfoot_detection_latency_seconds_count{}"] == 1
        assert 0.3 <= s["ovsfoot_detection_latency_seconds_sum{}"] < 1
        m.on_publisher_commit(now + 2 * 10**9)          # the next transaction carries b
        m.on_publisher_commit(now + 3 * 10**9)          # nothing new
        assert _samples(m.latency)["ovsfoot_detection_latency_seconds_count{}"] == 2
    finally:
        m.close()
    agent.source.clock = lambda: 0               # a replay's clock
    m = metrics.AgentMetrics(agent)
    try:
        m.on_publisher_commit(time.time_ns() + 10**9)
        assert _samples(m.latency)["ovsfoot_detection_latency_seconds_count{}"] == 0
    finally:
        m.close()
