"""HTTP server of the kube-scheduler extender v1 API.

    POST <prefix>/filter       ExtenderArgs -> ExtenderFilterResult
    POST <prefix>/prioritize   ExtenderArgs -> HostPriorityList
    GET  /healthz              {"synced": ..., "connected": ..., "chassis": N, ...}

The JSON keys are the Go field names of k8s.io/kube-scheduler/extender/v1
(`Pod`, `Nodes`, `NodeNames`, `FailedNodes`, `FailedAndUnresolvableNodes`, `Error`,
`Host`, `Score`). With `nodeCacheCapable: true` kube-scheduler sends and expects
`NodeNames`; otherwise a full v1 NodeList in `Nodes`, answered in kind. Malformed
requests get HTTP 400 and the reason as text; other paths 404.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ovsfoot import __version__
from ovsfoot.scheduler import scoring
from ovsfoot.scheduler.clusterview import ClusterDbView

log = logging.getLogger(__name__)

MAX_BODY = 64 << 20


class Extender:
    """The two verbs over the current cluster view."""

    def __init__(self, view: ClusterDbView, filter_heavy: bool = False,
                 assume_seconds: float = scoring.ASSUME_S):
        self.cluster = view
        self.filter_heavy = filter_heavy
        self.assumed = scoring.Assumptions(assume_seconds)

    def filter(self, body: bytes) -> dict:
        pod, names, as_list, args = scoring.parse_args(body)
        view = self.cluster.view
        kept, failed = scoring.filter_nodes(pod, names, view, self.filter_heavy)
        klass, why = scoring.pod_class(pod, view)
        log.info("filter %s/%s (%s: %s): %d of %d nodes kept", pod.namespace, pod.name,
                 klass, why, len(kept), len(names))
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
        pod, names, _, _ = scoring.parse_args(body)
        view = self.cluster.view
        out = scoring.prioritize(pod, names, view, self.assumed, time.monotonic())
        klass, why = scoring.pod_class(pod, view)
        log.info("prioritize %s/%s (%s: %s): %s", pod.namespace, pod.name, klass, why,
                 " ".join(f"{p['Host']}={p['Score']}" for p in out))
        return out


class Handler(BaseHTTPRequestHandler):
    server_version = f"ovsfoot-scheduler-extender/{__version__}"
    protocol_version = "HTTP/1.1"
    extender: Extender      # set on the subclass made by make_server

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, code: int, body, content_type="application/json") -> None:
        data = (json.dumps(body) if content_type == "application/json" else body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _verb(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]

    def do_GET(self):
        if self.path.split("?", 1)[0] == "/healthz":
            self._send(200, {**self.extender.cluster.status(),
                             "assumed_heavy_pods": self.extender.assumed.pending()})
        else:
            self._send(404, f"no such path {self.path}: GET /healthz, POST "
                       f"<prefix>/filter or <prefix>/prioritize\n", "text/plain")

    def do_POST(self):
        verb = self._verb()
        length = self.headers.get("Content-Length")
        try:
            n = int(length) if length is not None else -1
        except ValueError:
            n = -1
        if n < 0 or n > MAX_BODY:
            self.close_connection = True
            self._send(400 if n < 0 else 413,
                       "a Content-Length header is needed\n" if n < 0 else
                       f"body larger than {MAX_BODY} bytes\n", "text/plain")
            return
        body = self.rfile.read(n)
        if verb not in ("filter", "prioritize"):
            self._send(404, f"no such verb {self.path}: POST <prefix>/filter or "
                       f"<prefix>/prioritize\n", "text/plain")
            return
        try:
            result = getattr(self.extender, verb)(body)
        except scoring.BadRequest as e:
            log.warning("%s: bad request from %s: %s", verb, self.address_string(), e)
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
        self._send(200, result)


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


def make_server(listen: str, extender: Extender) -> ThreadingHTTPServer:
    host, port = parse_listen(listen)
    handler = type("ExtenderHandler", (Handler,), {"extender": extender})

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return Server((host, port), handler)


def serve(args) -> int:
    view = ClusterDbView(args.cluster_db, args.node_key).start()
    extender = Extender(view, args.filter_heavy, args.assume_seconds)
    server = make_server(args.listen, extender)
    host, port = server.server_address[:2]
    log.info("scheduler extender on %s:%d, cluster view from %s (nodes by %s)%s", host, port,
             args.cluster_db, args.node_key, ", filtering heavy nodes for light pods"
             if args.filter_heavy else "")
    shown = f"[{host}]" if ":" in host else host
    print(f"ovsfoot scheduler-extender listening on http://{shown}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        view.stop()
    return 0
