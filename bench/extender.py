"""The scheduler extender over HTTP, on the host: latency under load, against 100 nodes.

A real ovsdb-server with ovsfoot's cluster schema holds 100 Chassis rows (node-000
.. node-099, a third of them heavy) and a few learned Workload_Class rows; a real
`ovsfoot scheduler-extender` (with --log-file, so INFO logging is on) reads them.
Requests are what kube-scheduler sends with `nodeCacheCapable: true` (see
examples/kube-scheduler-config.yaml): `POST /ovsfoot/prioritize` with a v1.Pod and
the 100 `NodeNames`.

* new connections: 2,000 prioritize requests from 20 concurrent clients (4 processes
  x 5 threads), each request on a connection of its own; p99 latency and errors
  (a reset, a refused or timed-out connection, any status but 200);
* keep-alive: 1,000 prioritize requests one after another on one connection, as
  kube-scheduler's pooled client sends them for one pod after another; p50;
* a 16 MB body of node names (the body limit): the extender's peak RSS after it,
  and the bytes its log got for it.

Baseline: `GET /healthz` on the same server, same clients, same pattern, run in
alternating halves with the prioritize requests: the HTTP floor of this server,
so the ratio is what the extender's work adds.

    python -m bench.extender client URL PATH N THREADS NEWCONN   (internal)
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from bench.common import REPO, Result, percentile, proc_cpu_s, ratio

NODES = [f"node-{i:03d}" for i in range(100)]
POD = {"metadata": {"name": "frontend-6b8d9c7f5d-q2w4x", "namespace": "shop",
                    "uid": "uid-frontend", "labels": {"pod-template-hash": "6b8d9c7f5d"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                         "name": "frontend-6b8d9c7f5d", "uid": "o-1",
                                         "controller": True}]},
       "spec": {"containers": [{"name": "c", "image": "nginx"}]},
       "status": {"phase": "Pending"}}
BODY = json.dumps({"Pod": POD, "Nodes": None, "NodeNames": NODES}).encode()
PROCS, THREADS = 4, 5


# -- the clients (child processes) -------------------------------------------------
# Raw sockets, a request made once: a client about as cheap as kube-scheduler's Go one,
# so that the clients' own CPU (on the same cores) stays out of the figures.
def request_bytes(host: str, port: int, path: str) -> bytes:
    if path == "/healthz":
        return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n"
            f"\r\n").encode() + BODY


def _recv(sock: socket.socket, where: str) -> bytes:
    """What the server sent next; ConnectionResetError if it closed (`where`)."""
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionResetError(f"closed {where}")
    return chunk


def exchange(sock: socket.socket, req: bytes) -> int:
    """Sends one request, reads its whole answer; the HTTP status."""
    sock.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += _recv(sock, "before the answer")
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        rest += _recv(sock, "in the body")
    return int(head.split(b" ", 2)[1])


def client(url: str, path: str, n: int, threads: int, newconn: bool) -> dict:
    """`n` requests over `threads` threads; latencies (s) and errors."""
    u = urllib.parse.urlsplit(url)
    addr = (u.hostname, u.port)
    req = request_bytes(u.hostname, u.port, path)
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    left = [n]

    def worker():
        sock = None
        while True:
            with lock:
                if left[0] <= 0:
                    break
                left[0] -= 1
            t = time.perf_counter()
            try:
                if sock is None:
                    sock = socket.create_connection(addr, timeout=10)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                status = exchange(sock, req)
                err = None if status == 200 else f"HTTP {status}"
            except (OSError, ValueError, IndexError) as e:
                err = type(e).__name__
                if sock is not None:
                    sock.close()
                sock = None
            dt = time.perf_counter() - t
            if newconn and sock is not None:
                sock.close()
                sock = None
            with lock:
                lat.append(dt)
                if err:
                    errors.append(err)
        if sock is not None:
            sock.close()

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return {"lat": lat, "errors": errors}


def load(url: str, path: str, n: int, newconn: bool, procs: int = PROCS,
         threads: int = THREADS) -> dict:
    """`n` requests from `procs` client processes of `threads` threads each."""
    share = [n // procs + (i < n % procs) for i in range(procs)]
    ps = [subprocess.Popen([sys.executable, "-m", "bench.extender", "client", url, path,
                            str(k), str(threads), "1" if newconn else "0"],
                           cwd=str(REPO), stdout=subprocess.PIPE, text=True)
          for k in share]
    lat, errors = [], []
    for p in ps:
        out, _ = p.communicate(timeout=600)
        if p.returncode:
            raise RuntimeError(f"bench client exited {p.returncode}")
        d = json.loads(out)
        lat += d["lat"]
        errors += d["errors"]
    return {"lat": lat, "errors": errors}


# -- the server side ------------------------------------------------------------
class Setup:
    def __init__(self):
        from integration.programs import require
        from ovsfoot.contract import cluster_schema_path
        require("ovsdb-tool", "ovsdb-server")     # ovsdb-client: same package
        self.dir = Path(tempfile.mkdtemp(prefix="ovsfoot-bench-ext-"))
        self.remote = f"unix:{self.dir}/db.sock"
        self.db = self.ext = None
        subprocess.run(["ovsdb-tool", "create", str(self.dir / "cluster.db"),
                        cluster_schema_path()], check=True, capture_output=True)
        self.db = subprocess.Popen(["ovsdb-server", str(self.dir / "cluster.db"),
                                    f"--remote=punix:{self.dir}/db.sock",
                                    f"--unixctl={self.dir}/db.ctl",
                                    f"--log-file={self.dir}/db.log"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait(lambda: (self.dir / "db.sock").exists(), "the cluster DB socket")
        now = time.time_ns() // 1_000_000
        ops = []
        for i, name in enumerate(NODES):
            heavy = i % 3 == 0
            ops.append({"op": "insert", "table": "Chassis", "row": {
                "name": f"hv-{i:03d}", "hostname": name,
                "footprint": "heavy" if heavy else "light", "elephants": i % 4,
                "heavy_ports": 1 if heavy else 0, "updated": now}})
        for i in range(10):
            ops.append({"op": "insert", "table": "Workload_Class", "row": {
                "chassis": f"hv-{i:03d}", "workload": f"shop/w{i}", "learned": "heavy",
                "score": 5.0, "updated": now}})
        out = subprocess.run(["ovsdb-client", "transact", self.remote,
                              json.dumps(["OVSFoot_Cluster", *ops])],
                             check=True, capture_output=True, text=True).stdout
        if "error" in out:
            raise RuntimeError(f"filling the cluster DB: {out[:300]}")
        self.log = self.dir / "extender.log"
        self.ext = subprocess.Popen(
            [sys.executable, "-m", "ovsfoot", "scheduler-extender", "--listen=127.0.0.1:0",
             f"--cluster-db={self.remote}", f"--log-file={self.log}"],
            cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.ext.stdout.readline()
        if "listening on http://" not in line:
            raise RuntimeError(f"the extender did not start: {line!r}")
        self.url = line.split()[-1]
        self._wait(lambda: self.health().get("chassis") == len(NODES),
                   "the extender's view of the 100 chassis")

    def health(self) -> dict:
        u = urllib.parse.urlsplit(self.url)
        try:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
            conn.request("GET", "/healthz")
            return json.loads(conn.getresponse().read())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _wait(pred, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def rss_kib(self, field: str = "VmHWM") -> int:
        for line in Path(f"/proc/{self.ext.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def close(self) -> None:
        from integration.sandbox import terminate
        for p in (self.ext, self.db):
            terminate(p)
        shutil.rmtree(self.dir, ignore_errors=True)


def big_body(mb: int = 16) -> bytes:
    """A prioritize body of node names just under `mb` MB."""
    head = json.dumps({"Pod": POD, "Nodes": None})[:-1].encode() + b', "NodeNames": ['
    per = len(b'"n-0000000",')
    k = ((mb << 20) - len(head) - 2) // per
    return head + b",".join(b'"n-%07d"' % i for i in range(k)) + b"]}"


def alternate(s: Setup, n: int, newconn: bool) -> tuple[dict, dict]:
    """prioritize and /healthz, `n` each, in alternating halves; with the extender's
    CPU time per request (`cpu_ms`: user + system, all its threads)."""
    runs = {"/ovsfoot/prioritize": {"lat": [], "errors": [], "cpu_s": 0.0},
            "/healthz": {"lat": [], "errors": [], "cpu_s": 0.0}}
    for half in range(2):
        order = list(runs) if half == 0 else list(runs)[::-1]
        for path in order:
            cpu = proc_cpu_s(s.ext.pid)
            if newconn:
                d = load(s.url, path, n // 2, True)
            else:
                d = client(s.url, path, n // 2, 1, False)
            runs[path]["cpu_s"] += proc_cpu_s(s.ext.pid) - cpu
            runs[path]["lat"] += d["lat"]
            runs[path]["errors"] += d["errors"]
    for r in runs.values():
        r["cpu_ms"] = round(r.pop("cpu_s") / max(1, len(r["lat"])) * 1000, 3)
    return runs["/ovsfoot/prioritize"], runs["/healthz"]


def run(quick: bool = False, log=print) -> list[Result]:
    n_new, n_keep = (1000, 500) if quick else (2000, 1000)
    s = Setup()
    try:
        ms = lambda xs, p: None if not xs else round(percentile(xs, p) * 1000, 2)  # noqa: E731
        # new connections, 20 concurrent clients
        pri, hz = alternate(s, n_new, True)
        p99, hz99 = ms(pri["lat"], 99), ms(hz["lat"], 99)
        errs = len(pri["errors"]) + len(hz["errors"])
        log(f"extender, new connections x20: prioritize p50 {ms(pri['lat'], 50)} ms, "
            f"p99 {p99} ms, {len(pri['errors'])} errors, CPU {pri['cpu_ms']} ms/request; "
            f"/healthz p99 {hz99} ms, {len(hz['errors'])} errors, CPU {hz['cpu_ms']} "
            f"ms/request")
        # keep-alive, one connection, one request after another
        kpri, khz = alternate(s, n_keep, False)
        k50, khz50 = ms(kpri["lat"], 50), ms(khz["lat"], 50)
        log(f"extender, keep-alive: prioritize p50 {k50} ms, p99 {ms(kpri['lat'], 99)} ms, "
            f"CPU {kpri['cpu_ms']} ms/request; /healthz p50 {khz50} ms, CPU {khz['cpu_ms']} "
            f"ms/request")
        # the largest body: RSS and log bytes
        rss0 = s.rss_kib()
        log_before = s.log.stat().st_size
        body = big_body(16)
        u = urllib.parse.urlsplit(s.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        t = time.perf_counter()
        try:
            conn.request("POST", "/ovsfoot/prioritize", body,
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            big_status = r.status
        except (OSError, http.client.HTTPException) as e:
            big_status = type(e).__name__
        big_s = time.perf_counter() - t
        conn.close()
        time.sleep(0.2)
        rss1 = s.rss_kib()
        log_bytes = s.log.stat().st_size - log_before
        log(f"extender, a {len(body) / 2**20:.1f} MB body: {big_status} in {big_s:.2f} s, "
            f"peak RSS {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB, {log_bytes:,} log bytes")
    finally:
        s.close()
    def errors(d):
        return {e: d["errors"].count(e) for e in sorted(set(d["errors"]))}
    return [
        Result("extender_newconn_p99", p99, "ms", hz99,
               "GET /healthz p99, same 20 clients, new connections, alternated",
               ratio(p99, hz99), "<= 20 ms, 0 errors",
               p99 is not None and p99 <= 20 and errs == 0,
               detail={"requests": len(pri["lat"]), "p50_ms": ms(pri["lat"], 50),
                       "max_ms": ms(pri["lat"], 100), "errors": errors(pri),
                       "healthz_errors": errors(hz), "clients": PROCS * THREADS,
                       "cpu_ms_per_request": pri["cpu_ms"],
                       "healthz_cpu_ms_per_request": hz["cpu_ms"],
                       "load_average": os.getloadavg()[0]}),
        Result("extender_newconn_errors", len(pri["errors"]), "requests", len(pri["lat"]),
               "prioritize requests sent (20 clients, new connections)",
               ratio(len(pri["errors"]), len(pri["lat"])), "0", not pri["errors"],
               detail={"errors": errors(pri), "healthz_errors": errors(hz)}),
        Result("extender_keepalive_p50", k50, "ms", khz50,
               "GET /healthz p50 on one keep-alive connection, alternated",
               ratio(k50, khz50), "<= 3 ms", k50 is not None and k50 <= 3 and
               not kpri["errors"],
               detail={"requests": len(kpri["lat"]), "p99_ms": ms(kpri["lat"], 99),
                       "errors": errors(kpri), "healthz_p99_ms": ms(khz["lat"], 99),
                       "cpu_ms_per_request": kpri["cpu_ms"],
                       "healthz_cpu_ms_per_request": khz["cpu_ms"]}),
        Result("extender_rss_16mb_body", round(rss1 / 1024, 1), "MiB", round(rss0 / 1024, 1),
               "peak RSS before the request (after the latency runs)", ratio(rss1, rss0),
               "informational", None,
               detail={"body_bytes": len(body), "status": big_status,
                       "seconds": round(big_s, 2), "log_bytes": log_bytes}),
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        url, path, n, threads, newconn = sys.argv[2:7]
        print(json.dumps(client(url, path, int(n), int(threads), newconn == "1")))
    else:
        for r in run(quick="--quick" in sys.argv, log=lambda m: print(m, file=sys.stderr)):
            print(r.name, r.value, r.unit, "baseline", r.baseline, r.goal, r.met, r.detail)
