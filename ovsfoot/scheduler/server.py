"""HTTP server of the kube-scheduler extender v1 API.

    POST <prefix>/filter       ExtenderArgs -> ExtenderFilterResult
    POST <prefix>/prioritize   ExtenderArgs -> HostPriorityList
    GET  /healthz              {"synced": ..., "connected": ..., "chassis": N, ...}:
                               200 once the cluster view is synced, 503 until then
    GET  /metrics              Prometheus metrics (ovsfoot/control/metrics.py)

The JSON keys are the Go field names of k8s.io/kube-scheduler/extender/v1
(`Pod`, `Nodes`, `NodeNames`, `FailedNodes`, `FailedAndUnresolvableNodes`, `Error`,
`Host`, `Score`). With `nodeCacheCapable: true` kube-scheduler sends and expects
`NodeNames`; otherwise a full v1 NodeList in `Nodes`, answered in kind. Malformed
requests get HTTP 400 and the reason as text; other paths 404.

Limits (kube-scheduler asks filter and prioritize for every pod, one pod at a time):
a listen backlog of `BACKLOG`, TCP_NODELAY and each answer in one write (no Nagle /
delayed-ACK stall on keep-alive connections); bodies up to `MAX_BODY` (413 above, not
read); at most `MAX_REQUESTS` requests and `MAX_INFLIGHT` body bytes being read or
answered at once, the others wait up to `QUEUE_WAIT` s, then 503; at most
`MAX_CONNECTIONS` open connections (503 and closed above); `BODY_TIMEOUT` s to send a
body once its headers are in, `IDLE_TIMEOUT` s idle on a keep-alive connection. One
INFO line per request, without the node list (DEBUG: the first scores).

HTTPS with `--tls-cert` (and `--tls-key`); with `--client-ca`, mutual TLS: a client
must present a certificate that CA signed (kube-scheduler's `tlsConfig.certFile`),
others are refused in the handshake. The handshake runs on the connection's worker
thread, within `BODY_TIMEOUT`, never in the accept loop.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ovsfoot import __version__
from ovsfoot.control.metrics import ExtenderMetrics
from ovsfoot.scheduler import scoring
from ovsfoot.scheduler.clusterview import ClusterDbView

log = logging.getLogger(__name__)

MAX_BODY = 16 << 20         # a full NodeList of a large cluster; names of a million nodes
MAX_REQUESTS = 8            # requests being read or answered at once
MAX_INFLIGHT = 2 * MAX_BODY  # body bytes held at once (a largest body + the small ones)
QUEUE_WAIT = 5.0            # s a request waits for its turn before 503
MAX_CONNECTIONS = 256       # open connections (one thread each)
BACKLOG = 1024              # listen(2) backlog (the kernel caps it at net.core.somaxconn)
BODY_TIMEOUT = 10.0         # s to send a body and read the answer, once the headers are in
IDLE_TIMEOUT = 120.0        # s a keep-alive connection may idle (Go's client: 90 s)
LOG_NAME = 120              # characters of a pod name or reason in a log line
DEBUG_SCORES = 20           # scores shown in a DEBUG line


def _short(text, n: int = LOG_NAME) -> str:
    """`text` for a log line: at most `n` characters, nothing unprintable (no forged lines)."""
    text = str(text)
    cut = text[:n]
    cut = "".join(c if c.isprintable() else "?" for c in cut)
    return cut + (f"...({len(text)} chars)" if len(text) > n else "")


def _parse(body: bytes):
    try:
        return scoring.parse_args(body)
    except RecursionError:
        raise scoring.BadRequest("body is nested too deeply") from None


class Admission:
    """At most `requests` requests and `nbytes` body bytes at once; a request whose body
    alone is larger than `nbytes` is let in when nothing else is."""

    def __init__(self, requests: int = MAX_REQUESTS, nbytes: int = MAX_INFLIGHT):
        self.requests, self.nbytes = requests, nbytes
        self._cond = threading.Condition()
        self.active = self.bytes = 0

    def acquire(self, size: int, timeout: float) -> bool:
        with self._cond:
            ok = self._cond.wait_for(lambda: self.active < self.requests and (
                self.active == 0 or self.bytes + size <= self.nbytes), timeout)
            if ok:
                self.active += 1
                self.bytes += size
            return ok

    def release(self, size: int) -> None:
        with self._cond:
            self.active -= 1
            self.bytes -= size
            self._cond.notify_all()


class Extender:
    """The two verbs over the current cluster view."""

    def __init__(self, view: ClusterDbView, filter_heavy: bool = False,
                 assume_seconds: float = scoring.ASSUME_S, stale_seconds: float = 30.0):
        self.cluster = view
        self.filter_heavy = filter_heavy
        self.stale_seconds = stale_seconds
        self.assumed = scoring.Assumptions(assume_seconds)

    def filter(self, body: bytes) -> dict:
        t = time.monotonic()
        pod, names, as_list, args = _parse(body)
        view = self.cluster.view
        kept, failed = scoring.filter_nodes(pod, names, view, self.filter_heavy,
                                            time.monotonic(), self.stale_seconds)
        klass, why = scoring.pod_class(pod, view)
        log.info("filter %s/%s (%s: %s): %d of %d nodes kept, %.1f ms", _short(pod.namespace),
                 _short(pod.name), klass, _short(why), len(kept), len(names),
                 (time.monotonic() - t) * 1000)
        result = {"Nodes": None, "NodeNames": None, "FailedNodes": failed,
                  "FailedAndUnresolvableNodes": {}, "Error": ""}
        if as_list:
            keep = set(kept)
            nodes = dict(args["Nodes"])
            nodes["items"] = [n for n in args["Nodes"].get("items") or []
                              if n["metadata"]["name"] in keep]
            result["Nodes"] = nodes
        else:
            result["NodeNames"] = kept
        return result

    def prioritize(self, body: bytes) -> list[dict]:
        t = time.monotonic()
        pod, names, _, _ = _parse(body)
        view = self.cluster.view
        out = scoring.prioritize(pod, names, view, self.assumed, time.monotonic(),
                                 self.stale_seconds)
        klass, why = scoring.pod_class(pod, view)
        top = max((p["Score"] for p in out), default=None)
        log.info("prioritize %s/%s (%s: %s): %d nodes, best score %s on %d, %.1f ms",
                 _short(pod.namespace), _short(pod.name), klass, _short(why), len(out), top,
                 sum(p["Score"] == top for p in out), (time.monotonic() - t) * 1000)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("prioritize %s/%s: %s%s", _short(pod.namespace), _short(pod.name),
                      " ".join(f"{_short(p['Host'], 64)}={p['Score']}"
                               for p in out[:DEBUG_SCORES]),
                      f" ... ({len(out) - DEBUG_SCORES} more)" if len(out) > DEBUG_SCORES
                      else "")
        return out


class Workers:
    """Threads that serve one connection each, kept for the next one: no thread is
    started per connection (the accept loop would wait for each to take the GIL)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.threads = self.idle = self.busy = 0

    def submit(self, fn, *args) -> bool:
        """Runs fn(*args) on a worker; False if `limit` are busy."""
        with self._lock:
            if self.busy >= self.limit:
                return False
            self.busy += 1
            if self.idle:
                self.idle -= 1
                spawn = False
            else:
                self.threads += 1
                spawn = True
        self._jobs.put((fn, args))
        if spawn:
            threading.Thread(target=self._work, name="extender-conn", daemon=True).start()
        return True

    def _work(self) -> None:
        while True:
            fn, args = self._jobs.get()
            try:
                fn(*args)
            finally:
                with self._lock:
                    self.busy -= 1
                    self.idle += 1


class Handler(BaseHTTPRequestHandler):
    server_version = f"ovsfoot-scheduler-extender/{__version__}"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True      # TCP_NODELAY
    wbufsize = 1 << 16                  # status, headers and body leave in one write
    timeout = IDLE_TIMEOUT
    extender: Extender      # set on the subclass made by make_server
    metrics: ExtenderMetrics    # likewise
    _t0: float | None = None
    _code: int | None = None

    def handle_one_request(self):
        self._t0 = None
        try:
            super().handle_one_request()
        finally:
            if self._t0 is not None:
                self.metrics.request(self._label(), self._code, time.monotonic() - self._t0)

    def parse_request(self):
        self._t0, self._code = time.monotonic(), None      # the request line is in
        return super().parse_request()

    def send_response(self, code, message=None):
        self._code = code
        super().send_response(code, message)

    def _label(self) -> str:
        """The verb for metrics: one of a fixed few, never the path as sent."""
        path = getattr(self, "path", "").split("?", 1)[0]
        if self.command == "POST" and self._verb() in ("filter", "prioritize"):
            return self._verb()
        if self.command == "GET" and path in ("/healthz", "/metrics"):
            return path[1:]
        return "other"

    def log_message(self, fmt, *args):
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), _short(fmt % args, 300))

    def _send(self, code: int, body, content_type="application/json", close=False,
              headers=()) -> None:
        data = body if isinstance(body, bytes) else (
            body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        if close:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _verb(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]

    def do_GET(self):
        if self.path.split("?", 1)[0] == "/healthz":     # 503 until the view is synced
            status = self.extender.cluster.status()
            self._send(200 if status["synced"] else 503,
                       {**status, "assumed_heavy_pods": self.extender.assumed.pending()})
        elif self.path.split("?", 1)[0] == "/metrics":
            self._send(200, *self.metrics.render(self.headers.get("Accept")))
        else:
            self._send(404, f"no such path {_short(self.path)}: GET /healthz, GET /metrics, "
                       f"POST <prefix>/filter or <prefix>/prioritize\n", "text/plain")

    def do_POST(self):
        verb = self._verb()
        length = self.headers.get("Content-Length")
        try:
            n = int(length) if length is not None else -1
        except ValueError:
            n = -1
        if n < 0 or n > MAX_BODY:
            self._send(400 if n < 0 else 413,
                       "a Content-Length header is needed\n" if n < 0 else
                       f"body larger than {MAX_BODY} bytes\n", "text/plain", close=True)
            if n > MAX_BODY:
                log.warning("%s: a body of %d bytes from %s refused (limit %d)",
                            _short(verb), n, self.address_string(), MAX_BODY)
            return
        if verb not in ("filter", "prioritize"):
            self._send(404, f"no such verb {_short(self.path)}: POST <prefix>/filter or "
                       f"<prefix>/prioritize\n", "text/plain", close=True)   # body unread
            return
        admission: Admission = self.server.admission
        if not admission.acquire(n, QUEUE_WAIT):
            log.warning("%s from %s: busy (%d requests, %d body bytes in progress): 503",
                        verb, self.address_string(), admission.active, admission.bytes)
            self._send(503, "busy, try again\n", "text/plain", close=True,
                       headers=[("Retry-After", "1")])
            return
        try:
            self.connection.settimeout(BODY_TIMEOUT)
            body = self.rfile.read(n)
            if len(body) < n:               # the client went away mid-body
                self.close_connection = True
                return
            self._answer(verb, body)
            self.connection.settimeout(self.timeout)
        finally:
            admission.release(n)

    def _answer(self, verb: str, body: bytes) -> None:
        try:
            result = getattr(self.extender, verb)(body)
            data = json.dumps(result)
        except scoring.BadRequest as e:
            log.warning("%s: bad request from %s: %s", verb, self.address_string(), _short(e))
            self._send(400, f"bad ExtenderArgs: {e}\n", "text/plain")
            return
        except Exception as e:      # a bug: tell kube-scheduler (ignorable) and log it
            log.exception("%s failed", verb)
            if verb == "filter":
                self._send(200, {"Nodes": None, "NodeNames": None, "FailedNodes": {},
                                 "FailedAndUnresolvableNodes": {}, "Error": str(e)})
            else:
                self._send(500, f"internal error: {e}\n", "text/plain")
            return
        self._send(200, data)


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT or :PORT (all addresses)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT")
    host = host.strip("[]")
    try:
        p = int(port)
        if not 0 <= p < 65536:
            raise ValueError
    except ValueError:
        raise ValueError(f"--listen {text!r}: bad port") from None
    return host, p


def tls_context(cert: str, key: str | None = None, client_ca: str | None = None
                ) -> ssl.SSLContext:
    """A server context with the certificate `cert` (its key in `key`, or in `cert`);
    with `client_ca`, clients must present a certificate that CA signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except OSError as e:            # ssl.SSLError too
        raise ValueError(f"--tls-cert {cert}" + (f" / --tls-key {key}" if key else "")
                         + f": cannot load the certificate and its key: {e}") from None
    if client_ca:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except OSError as e:
            raise ValueError(f"--client-ca {client_ca}: cannot load it: {e}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def make_server(listen: str, extender: Extender, tls: ssl.SSLContext | None = None
                ) -> ThreadingHTTPServer:
    """The extender's server; HTTPS with `tls` (`tls_context`)."""
    host, port = parse_listen(listen)
    metrics = ExtenderMetrics(extender)
    handler = type("ExtenderHandler", (Handler,), {"extender": extender, "metrics": metrics})

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        request_queue_size = BACKLOG        # http.server's 5 resets connections under load
        admission = Admission()
        workers = Workers(MAX_CONNECTIONS)

        def process_request(self, request, client_address):
            if not self.workers.submit(self._connection, request, client_address):
                log.warning("%d connections open: refusing one from %s", MAX_CONNECTIONS,
                            client_address[0])
                metrics.refused.inc()
                try:
                    request.settimeout(1)
                    if tls is None:     # a TLS client would not read a plain answer
                        request.sendall(b"HTTP/1.1 503 Service Unavailable\r\n"
                                        b"Retry-After: 1\r\nContent-Type: text/plain\r\n"
                                        b"Content-Length: 5\r\nConnection: close\r\n\r\n"
                                        b"busy\n")
                except OSError:
                    pass
                self.shutdown_request(request)

        def _handshake(self, request, client_address):
            """The TLS handshake, on this worker; None if it failed."""
            try:
                request.settimeout(BODY_TIMEOUT)
                return tls.wrap_socket(request, server_side=True)
            except (OSError, ValueError) as e:      # ssl.SSLError is an OSError
                metrics.tls_failures.inc()
                refused = "CERTIFICATE" in str(getattr(e, "reason", "") or "").upper()
                log.log(logging.WARNING if refused else logging.INFO,
                        "TLS handshake with %s failed%s: %s", client_address[0],
                        " (client certificate refused)" if refused else "", _short(e))
                return None

        def _connection(self, request, client_address):
            try:
                if tls is not None:
                    wrapped = self._handshake(request, client_address)
                    if wrapped is None:
                        return
                    request = wrapped
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)
    return Server((host, port), handler)


class TimedView(ClusterDbView):
    """The cluster view, and when it last changed (`changed`, monotonic): the metrics'
    view age."""

    changed: float | None = None

    @property
    def view(self):
        return self._view

    @view.setter
    def view(self, view):
        self._view, self.changed = view, time.monotonic()


def serve(args) -> int:
    cert, key, client_ca = (getattr(args, n, None) for n in ("tls_cert", "tls_key",
                                                              "client_ca"))
    if (key or client_ca) and not cert:
        raise ValueError("--tls-key and --client-ca need --tls-cert")
    tls = tls_context(cert, key, client_ca) if cert else None
    view = TimedView(args.cluster_db, args.node_key).start()
    extender = Extender(view, args.filter_heavy, args.assume_seconds, args.stale_seconds)
    server = make_server(args.listen, extender, tls)
    host, port = server.server_address[:2]
    log.info("scheduler extender on %s:%d (%s), cluster view from %s (nodes by %s)%s",
             host, port, "HTTP" if tls is None else "HTTPS, mutual TLS" if client_ca
             else "HTTPS", args.cluster_db, args.node_key,
             ", filtering heavy nodes for light pods" if args.filter_heavy else "")
    shown = f"[{host}]" if ":" in host else host
    print(f"ovsfoot scheduler-extender listening on {'http' if tls is None else 'https'}://"
          f"{shown}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        view.stop()
    return 0
