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

One thread serves every connection: an asyncio event loop reads, parses and answers
HTTP/1.1 requests (keep-alive, pipelined ones in order) as they arrive, with no
thread hand-off per connection or request (thread-per-connection cost ~0.2 ms more
CPU and 20-30 context switches per request in hand-offs, locks and the GIL:
bench/README.md). Scoring 100 nodes takes ~0.1 ms, and an answer is kept per view,
pod class and node list (`scoring.Ranker`: the next pod with the same inputs costs a
lookup), so it runs on the loop; a body over `INLINE_BODY` is scored on a worker
thread, so that a large request does not hold up the others.

Limits (kube-scheduler asks filter and prioritize for every pod, one pod at a time):
a listen backlog of `BACKLOG`, TCP_NODELAY and each answer in one write; a request
line and headers up to `MAX_HEAD` (431 above); bodies up to `MAX_BODY` (413 above,
not read); at most `MAX_REQUESTS` requests and `MAX_INFLIGHT` body bytes being read
or answered at once, the others wait up to `QUEUE_WAIT` s in turn, then 503; at most
`MAX_CONNECTIONS` open connections (503 and closed above); `BODY_TIMEOUT` s to send
a body once admitted, and to take its answer; `IDLE_TIMEOUT` s for the next request's
headers on a keep-alive connection. One INFO line per request, without the node list
(DEBUG: the first scores, and each request line with its status).

HTTPS with `--tls-cert` (and `--tls-key`); with `--client-ca`, mutual TLS: a client
must present a certificate that CA signed (kube-scheduler's `tlsConfig.certFile`),
others are refused in the handshake. The handshake runs on the loop, without
blocking it (memory BIOs), within `BODY_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import email.utils
import json
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from http import HTTPStatus

from ovsfoot import __version__
from ovsfoot.control.metrics import ExtenderMetrics
from ovsfoot.scheduler import scoring
from ovsfoot.scheduler.clusterview import ClusterDbView

log = logging.getLogger(__name__)

SERVER = f"ovsfoot-scheduler-extender/{__version__}"
MAX_HEAD = 64 << 10         # request line and headers
MAX_BODY = 16 << 20         # a full NodeList of a large cluster; names of a million nodes
INLINE_BODY = 64 << 10      # bodies up to this are scored on the loop, larger on a thread
MAX_REQUESTS = 8            # requests being read or answered at once
MAX_INFLIGHT = 2 * MAX_BODY  # body bytes held at once (a largest body + the small ones)
QUEUE_WAIT = 5.0            # s a request waits for its turn before 503
MAX_CONNECTIONS = 256       # open connections
BACKLOG = 1024              # listen(2) backlog (the kernel caps it at net.core.somaxconn)
BODY_TIMEOUT = 10.0         # s to send a body and to take the answer; a TLS handshake
IDLE_TIMEOUT = 120.0        # s a keep-alive connection may idle (Go's client: 90 s)
LOG_NAME = 120              # characters of a pod name or reason in a log line
DEBUG_SCORES = 20           # scores shown in a DEBUG line
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n")


def _short(text, n: int = LOG_NAME) -> str:
    """`text` for a log line: at most `n` characters, nothing unprintable (no forged lines)."""
    text = str(text)
    cut = text[:n]
    if not cut.isprintable():
        cut = "".join(c if c.isprintable() else "?" for c in cut)
    return cut + (f"...({len(text)} chars)" if len(text) > n else "")


def _parse(body: bytes):
    try:
        return scoring.parse_args(body)
    except RecursionError:
        raise scoring.BadRequest("body is nested too deeply") from None



class Extender:
    """The two verbs over the current cluster view."""

    def __init__(self, view: ClusterDbView, filter_heavy: bool = False,
                 assume_seconds: float = scoring.ASSUME_S, stale_seconds: float = 30.0):
        self.cluster = view
        self.filter_heavy = filter_heavy
        self.stale_seconds = stale_seconds
        self.assumed = scoring.Assumptions(assume_seconds)
        self.ranker = scoring.Ranker(self.assumed, stale_seconds)

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

    def prioritize(self, body: bytes) -> str:
        """The HostPriorityList as JSON; the same node list in the same view is scored
        once (`scoring.Ranker`)."""
        t = time.monotonic()
        pod, names = _parse(body)[:2]
        view = self.cluster.view
        klass, why = scoring.pod_class(pod, view)
        r = self.ranker.rank(pod, klass, names, view, time.monotonic())
        del names                   # before the answer's text is made (a large one's)
        out = r.out
        if log.isEnabledFor(logging.INFO):
            log.info("prioritize %s/%s (%s: %s): %d nodes, best score %s on %d, %.1f ms",
                     _short(pod.namespace), _short(pod.name), klass, _short(why),
                     len(out), r.top, r.at_top, (time.monotonic() - t) * 1000)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("prioritize %s/%s: %s%s", _short(pod.namespace), _short(pod.name),
                      " ".join(f"{_short(p['Host'], 64)}={p['Score']}"
                               for p in out[:DEBUG_SCORES]),
                      f" ... ({len(out) - DEBUG_SCORES} more)" if len(out) > DEBUG_SCORES
                      else "")
        return r.answer()


@dataclass(eq=False)
class Waiter:
    """A request waiting for its turn (`Admission.wait`)."""

    size: int
    granted: object             # called on the loop once admitted
    timer: asyncio.TimerHandle | None = None


class Admission:
    """At most `requests` requests and `nbytes` body bytes at once, in the order they
    came; a request whose body alone is larger than `nbytes` is let in when nothing
    else is. Used on the event loop's thread only."""

    def __init__(self, loop: asyncio.AbstractEventLoop, requests: int = MAX_REQUESTS,
                 nbytes: int = MAX_INFLIGHT):
        self.loop = loop
        self.requests, self.nbytes = requests, nbytes
        self.active = self.bytes = 0
        self._queue: collections.deque[Waiter] = collections.deque()

    def _fits(self, size: int) -> bool:
        return self.active < self.requests and (self.active == 0 or
                                                self.bytes + size <= self.nbytes)

    def _take(self, size: int) -> None:
        self.active += 1
        self.bytes += size

    def try_acquire(self, size: int) -> bool:
        if self._queue or not self._fits(size):
            return False
        self._take(size)
        return True

    def wait(self, size: int, timeout: float, granted, refused) -> Waiter:
        """Queues a request: `granted()` once it is admitted, or `refused()` after
        `timeout` s (then it is no longer queued)."""
        w = Waiter(size, granted)

        def expire():
            self._queue.remove(w)
            refused()
            self._admit()           # a large one at the head no longer blocks the rest
        w.timer = self.loop.call_later(timeout, expire)
        self._queue.append(w)
        return w

    def withdraw(self, w: Waiter) -> bool:
        """A queued request whose client went away; False if it was admitted already."""
        if w not in self._queue:
            return False
        self._queue.remove(w)
        w.timer.cancel()
        self._admit()
        return True

    def release(self, size: int) -> None:
        self.active -= 1
        self.bytes -= size
        self._admit()

    def _admit(self) -> None:
        while self._queue and self._fits(self._queue[0].size):
            w = self._queue.popleft()
            w.timer.cancel()
            self._take(w.size)
            self.loop.call_soon(w.granted)


class BadHead(ValueError):
    """A request line or headers that cannot be served: `code` and the reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class Head:
    """A request's line and headers (names in lower case)."""

    method: str
    path: str                   # without the query
    close: bool                 # the client asked to close after it (or HTTP/1.0)
    length: int                 # of the body; -1: none announced, or not one we can use
    headers: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> "Head":
        line, *fields = text.split("\r\n")
        parts = line.split(" ")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
            code = 505 if len(parts) == 3 and parts[2].startswith("HTTP/") else 400
            raise BadHead(code, f"bad request line {_short(line)}: expected METHOD PATH "
                             "HTTP/1.1")
        method, target, version = parts
        headers: dict[str, str] = {}
        for field in fields:
            name, sep, value = field.partition(":")
            if not sep or not name or name != name.strip():
                raise BadHead(400, f"bad header line {_short(field)}")
            name, value = name.lower(), value.strip()
            if name in headers:         # a repeated length makes the framing ambiguous
                value = "?" if name in ("content-length", "transfer-encoding") else \
                    f"{headers[name]}, {value}"
            headers[name] = value
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        length = headers.get("content-length")
        if "transfer-encoding" in headers or (length is not None and not (
                length.isascii() and length.isdigit())):
            n = -1
        else:
            n = int(length) if length is not None else -1 if method == "POST" else 0
        return cls(method, target.split("?", 1)[0], "close" in tokens or (
            version == "HTTP/1.0" and "keep-alive" not in tokens), n, headers)


@dataclass(eq=False)
class Request:
    """A request whose headers are in."""

    t0: float                   # monotonic, when its headers were complete
    line: str                   # the request line, for the DEBUG log
    path: str                   # without the query
    close: bool                 # close after it: the client asked (or HTTP/1.0), or an error
    length: int = 0             # its body's; -1: no usable Content-Length
    label: str = "other"        # its verb for the metrics
    waiter: Waiter | None = None
    admitted: bool = False      # holds an Admission slot
    answered: bool = False


def _label(method: str, path: str) -> str:
    """The verb for metrics: one of a fixed few, never the path as sent."""
    verb = path.rstrip("/").rsplit("/", 1)[-1]
    if method == "POST" and verb in ("filter", "prioritize"):
        return verb
    if method == "GET" and path in ("/healthz", "/metrics"):
        return path[1:]
    return "other"


class Connection(asyncio.Protocol):
    """One client connection: its requests one after another, each read, parsed and
    answered on the loop (a large body's scoring on a worker thread)."""

    def __init__(self, server: "Server"):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.buf = bytearray()
        self.req: Request | None = None     # the request being read or answered
        self.tls: ssl.SSLObject | None = None      # with HTTPS, over these buffers:
        self.tls_in, self.tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.ready = False          # its TLS handshake (if any) is done
        self.waiting = False        # for admission or a worker thread: read nothing more
        self.writing_paused = False
        self.closed = False
        self.counted = False        # in `server.connections`
        self.timer: asyncio.TimerHandle | None = None

    # -- the connection ------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "?"
        server = self.server
        if server.connections >= MAX_CONNECTIONS:
            log.warning("%d connections open: refusing one from %s", MAX_CONNECTIONS,
                        self.peer)
            server.metrics.refused.inc()
            if server.tls is None:      # a TLS client would not read a plain answer
                transport.write(BUSY)
            self.closed = True
            transport.close()
            return
        server.connections += 1
        self.counted = True
        if server.tls is None:
            self.ready = True
            self._deadline(IDLE_TIMEOUT)
        else:       # the handshake through memory buffers: no blocking, and its alerts sent
            self.tls = server.tls.wrap_bio(self.tls_in, self.tls_out, server_side=True)
            self._deadline(BODY_TIMEOUT)

    def _handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (OSError, ValueError) as e:      # ssl.SSLError is an OSError
            self._tls_failed(e)
            return
        self._flush()
        self.ready = True
        self._deadline(IDLE_TIMEOUT)

    def _tls_failed(self, e: Exception) -> None:
        self.server.metrics.tls_failures.inc()
        refused = "CERTIFICATE" in str(getattr(e, "reason", "") or "").upper()
        log.log(logging.WARNING if refused else logging.INFO,
                "TLS handshake with %s failed%s: %s", self.peer,
                " (client certificate refused)" if refused else "", _short(e))
        self._flush()               # the alert that tells the client why
        self._close()

    def _flush(self) -> None:
        """Sends what TLS has to send."""
        data = self.tls_out.read()
        if data:
            self.transport.write(data)

    def _write(self, data: bytes) -> None:
        if self.tls is None:
            self.transport.write(data)
        else:
            self.tls.write(data)
            self._flush()

    def connection_lost(self, exc) -> None:
        if self.closed and not self.counted:
            return
        self.closed = True
        if self.counted:
            self.server.connections -= 1
            self.counted = False
        if self.timer is not None:
            self.timer.cancel()
        req = self.req
        if req is None:
            return
        if req.waiter is not None:      # queued for admission
            if self.server.admission.withdraw(req.waiter):
                self._done(req, 0)      # (else admitted just now: `admitted` cleans up)
        elif not self.waiting:          # (else a worker thread scores it: `scored` does)
            self._done(req, 0)

    def data_received(self, data: bytes) -> None:
        if self.tls is None:
            self.buf += data
        else:
            self.tls_in.write(data)
            if not self.ready:
                self._handshake()
            if not self.ready or self.closed:
                return
            try:
                while chunk := self.tls.read(1 << 16):
                    self.buf += chunk
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, OSError) as e:   # close_notify, or a bad record
                log.debug("%s: TLS: %s: closing", self.peer, _short(e))
                self.transport.abort()
                return
            self._flush()
        if self.ready:
            self._process()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._deadline(BODY_TIMEOUT)        # to take the answer

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.req is None:
            self._deadline(IDLE_TIMEOUT)
        self._process()

    def _deadline(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.server.loop.call_later(seconds, self._expired, seconds)

    def _expired(self, seconds: float) -> None:
        if self.tls is not None and not self.ready:
            self._tls_failed(TimeoutError(f"not done within {seconds:g} s"))
            return
        log.debug("%s: nothing for %.0f s: closing", self.peer, seconds)
        self.transport.abort()

    def _close(self) -> None:
        """Closes once the last answer has gone out (if the client takes it in time)."""
        self.closed = True
        self._deadline(BODY_TIMEOUT)
        self.transport.close()

    # -- requests --------------------------------------------------------------
    def _process(self) -> None:
        """Reads and answers the requests whose bytes are in, while nothing holds it."""
        try:
            while not (self.closed or self.waiting or self.writing_paused):
                if self.req is None:
                    if not self._head():
                        return
                elif len(self.buf) >= self.req.length:
                    n = self.req.length
                    if len(self.buf) == n:          # no copy; nor a large buffer kept
                        body, self.buf = self.buf, bytearray()
                    else:
                        body = bytes(self.buf[:n])
                        del self.buf[:n]
                    self._score(self.req, body)
                else:
                    return
        except Exception:           # a bug: this connection only
            log.exception("serving %s", self.peer)
            self.transport.abort()

    def _head(self) -> bool:
        """Takes the next request's line and headers from the buffer, if they are all in;
        answers it unless it is a POST whose body is to come. False: wait for more."""
        while self.buf[:2] == b"\r\n":      # a client's extra CRLF after a body
            del self.buf[:2]
        end = self.buf.find(b"\r\n\r\n", 0, MAX_HEAD)
        if end < 0:
            if len(self.buf) >= MAX_HEAD:
                self.req = Request(time.monotonic(), "(too long)", "", True)
                self._send(self.req, 431, f"request line and headers over {MAX_HEAD} "
                           "bytes\n", "text/plain", close=True)
            return False
        text = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[:end + 4]
        self.timer.cancel()
        line = text.split("\r\n", 1)[0]
        req = self.req = Request(time.monotonic(), line, "", True)
        try:
            head = Head.parse(text)
        except BadHead as e:
            self._send(req, e.code, f"{e}\n", "text/plain", close=True)
            return True
        req.path, req.close, req.length = head.path, head.close, head.length
        req.label = _label(head.method, head.path)
        if head.method == "GET":
            if req.length:              # a body we will not read: close after the answer
                req.close = True
            self._get(req, head.headers)
        elif head.method == "POST":
            self._post(req, head.headers.get("expect", "").lower() == "100-continue")
        else:
            self._send(req, 501, f"method {_short(head.method)} not supported: GET /healthz, "
                       "GET /metrics, POST <prefix>/filter or <prefix>/prioritize\n",
                       "text/plain", close=True)
        return True

    def _get(self, req: Request, headers: dict[str, str]) -> None:
        ext = self.server.extender
        if req.path == "/healthz":      # 503 until the view is synced
            status = ext.cluster.status()
            self._send(req, 200 if status["synced"] else 503,
                       {**status, "assumed_heavy_pods": ext.assumed.pending()})
        elif req.path == "/metrics":
            self._send(req, 200, *self.server.metrics.render(headers.get("accept")))
        else:
            self._send(req, 404, f"no such path {_short(req.path)}: GET /healthz, GET "
                       "/metrics, POST <prefix>/filter or <prefix>/prioritize\n",
                       "text/plain")

    def _post(self, req: Request, expect_continue: bool) -> None:
        n, verb = req.length, req.label
        if n < 0 or n > MAX_BODY:
            self._send(req, 400 if n < 0 else 413,
                       "a body needs one Content-Length header (no chunked bodies)\n" if n < 0
                       else f"body larger than {MAX_BODY} bytes\n", "text/plain", close=True)
            if n > MAX_BODY:
                log.warning("%s: a body of %d bytes from %s refused (limit %d)",
                            _short(req.path), n, self.peer, MAX_BODY)
            return
        if verb not in ("filter", "prioritize"):
            self._send(req, 404, f"no such verb {_short(req.path)}: POST <prefix>/filter or "
                       "<prefix>/prioritize\n", "text/plain", close=True)     # body unread
            return
        admission = self.server.admission

        def admitted():
            req.waiter, req.admitted = None, True
            if self.closed:             # went away while it waited
                self._done(req, 0)
                return
            if expect_continue:
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._deadline(BODY_TIMEOUT)
            if self.waiting:
                self.waiting = False
                self.transport.resume_reading()
                self._process()

        def refused():
            req.waiter = None
            self.waiting = False
            log.warning("%s from %s: busy (%d requests, %d body bytes in progress): 503",
                        verb, self.peer, admission.active, admission.bytes)
            self._send(req, 503, "busy, try again\n", "text/plain", close=True,
                       headers=(("Retry-After", "1"),))
        if admission.try_acquire(n):
            admitted()
        else:
            self.waiting = True
            self.transport.pause_reading()
            req.waiter = admission.wait(n, QUEUE_WAIT, admitted, refused)

    def _score(self, req: Request, body: bytes | bytearray) -> None:
        """The body is in: the answer, here or (a large body) on a worker thread."""
        self.timer.cancel()
        if req.length <= INLINE_BODY:
            self._send(req, *self.server.answer(req.label, body, self.peer))
            return
        self.waiting = True
        self.transport.pause_reading()
        work = self.server.loop.run_in_executor(self.server.workers, self.server.answer,
                                                req.label, body, self.peer)

        def scored(f: asyncio.Future):
            self.waiting = False
            if self.closed:
                self._done(req, 0)
                return
            self.transport.resume_reading()
            self._send(req, *f.result())
            self._process()
        work.add_done_callback(scored)

    def _send(self, req: Request, code: int, body, content_type="application/json",
              close: bool = False, headers=()) -> None:
        """Answers `req` in one write; with `close` (or the client's wish) closes after."""
        data = body if isinstance(body, bytes) else (
            body if isinstance(body, str) else json.dumps(body)).encode()
        close = close or req.close
        head = [f"HTTP/1.1 {code} {HTTPStatus(code).phrase}", f"Server: {SERVER}",
                f"Date: {self.server.date()}", f"Content-Type: {content_type}",
                f"Content-Length: {len(data)}", *(f"{k}: {v}" for k, v in headers)]
        if close:
            head.append("Connection: close")
        self._write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
        self._done(req, code)
        if close:
            self._close()
        elif not self.writing_paused:
            self._deadline(IDLE_TIMEOUT)

    def _done(self, req: Request, code: int) -> None:
        """`req` is answered (`code`; 0: its client went away): its slot and metrics."""
        if req.answered:
            return
        req.answered = True
        if self.req is req:
            self.req = None
        if req.admitted:
            req.admitted = False
            self.server.admission.release(req.length)
        self.server.metrics.request(req.label, code, time.monotonic() - req.t0)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s", self.peer, _short(req.line, 300), code)


class Server:
    """The extender's HTTP(S) server: an asyncio event loop, run by `serve_forever`
    in the calling thread."""

    def __init__(self, host: str, port: int, extender: Extender,
                 tls: ssl.SSLContext | None = None):
        self.extender, self.tls = extender, tls
        self.metrics = ExtenderMetrics(extender)
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.admission = Admission(self.loop)
        self.workers = concurrent.futures.ThreadPoolExecutor(
            MAX_REQUESTS, thread_name_prefix="extender-large")
        self._date = (0, "")
        sock = socket.create_server((host, port), backlog=BACKLOG, family=(
            socket.AF_INET6 if ":" in host else socket.AF_INET))
        self.server_address = sock.getsockname()
        self._server = self.loop.run_until_complete(self.loop.create_server(
            lambda: Connection(self), sock=sock, backlog=BACKLOG))

    def date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        return self._date[1]

    def answer(self, verb: str, body: bytes, peer: str) -> tuple:
        """(status, body[, content type]) of a filter or prioritize request; runs on the
        loop or on a worker thread."""
        try:
            answer = getattr(self.extender, verb)(body)
            return 200, answer if isinstance(answer, str) else json.dumps(answer)
        except scoring.BadRequest as e:
            log.warning("%s: bad request from %s: %s", verb, peer, _short(e))
            return 400, f"bad ExtenderArgs: {e}\n", "text/plain"
        except Exception as e:      # a bug: tell kube-scheduler (ignorable) and log it
            log.exception("%s failed", verb)
            if verb == "filter":
                return 200, {"Nodes": None, "NodeNames": None, "FailedNodes": {},
                             "FailedAndUnresolvableNodes": {}, "Error": str(e)}
            return 500, f"internal error: {e}\n", "text/plain"

    def serve_forever(self) -> None:
        self.loop.run_forever()

    def server_close(self) -> None:
        self._server.close()
        self.workers.shutdown(wait=False, cancel_futures=True)
        self.loop.close()


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
                ) -> Server:
    """The extender's server; HTTPS with `tls` (`tls_context`)."""
    return Server(*parse_listen(listen), extender, tls)


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
