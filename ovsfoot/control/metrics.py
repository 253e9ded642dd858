"""Prometheus metrics: the agent's on `--metrics ADDR:PORT`, the extender's on its /metrics.

The agent's poll loop is single-threaded and its state is not locked, so a scrape
never reads it directly: the HTTP server thread asks the loop for a snapshot (a byte
on a socketpair the loop polls), waits up to `SNAPSHOT_WAIT` s for it, and otherwise
serves the last one (`ovsfoot_metrics_snapshot_age_seconds` says how old). Taking a
snapshot costs the loop one pass over the bound ports and the active elephants.
Everything but two histograms is computed from that snapshot at scrape time:

    ovsfoot_elephants_active{role}               source, sink, unknown (attributed, no
                                                 direction), unattributed
    ovsfoot_elephants_detected_total, _ended_total, _unattributed_total
    ovsfoot_events_total                         flow events received from the source
    ovsfoot_source_dropped_total{source}         events the kernel could not hand over
    ovsfoot_source_map_full_total{source}        flows the kernel map had no room for
    ovsfoot_source_evictions_total{source}       flows that left the map undeleted
                                                 (the three are 0 where a source has no
                                                 buffer or map: ctnetlink, replay)
    ovsfoot_source_flows_tracked{source}
    ovsfoot_publish_transactions_total{target}   target: ovsdb (local), cluster
    ovsfoot_publish_failures_total{target}
    ovsfoot_port_elephants{port,interface}       per bound port (Interface with an
    ovsfoot_port_bytes{port,interface}           iface-id): the label set is the bound
    ovsfoot_port_heavy{port,interface}           ports, nothing a flow can add
    ovsfoot_port_sensitive{port,interface}
    ovsfoot_port_bits_per_second{port,interface}  over the rate window, not bucketed
    ovsfoot_port_new_flows_per_second{port,interface}
    ovsfoot_node_elephants, ovsfoot_node_heavy, ovsfoot_node_heavy_ports
    ovsfoot_ctnetlink_polls_total, ovsfoot_ctnetlink_entries (the ctnetlink source)
    ovsfoot_agent_info{version,source}, ovsfoot_metrics_snapshot_age_seconds

and the histograms, observed in the loop:

    ovsfoot_detection_latency_seconds   an elephant's crossing (the kernel's timestamp
                                        with bpf; with ctnetlink, the poll that saw
                                        it) to the commit of the OVSDB transaction that
                                        published it (`Committer.on_commit`)
    ovsfoot_ctnetlink_poll_seconds      one dump of the conntrack table

The extender's (`ExtenderMetrics`), served by its own HTTP(S) server on GET /metrics:

    ovsfoot_extender_requests_total{verb,code}   verb: filter, prioritize, healthz,
    ovsfoot_extender_request_seconds{verb}       metrics, other
    ovsfoot_extender_view_age_seconds            since the cluster view last changed (each
                                                 agent's heartbeat changes it)
    ovsfoot_extender_nodes, _nodes_stale         chassis known; those whose heartbeat
                                                 stopped for --stale-seconds
    ovsfoot_extender_view_synced, _cluster_connected, _assumed_heavy_pods
    ovsfoot_extender_tls_handshake_failures_total, _connections_refused_total
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer

import ovs.poller
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import MetricsHandler, choose_encoder

from ovsfoot import __version__, contract

log = logging.getLogger(__name__)

SNAPSHOT_WAIT = 1.0     # s a scrape waits for the loop's snapshot before serving the last
ROLES = ("source", "sink", "unknown", "unattributed")
LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
POLL_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
REQUEST_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)
SOURCE_LOSSES = (("dropped", "events the kernel could not hand over (buffer full)"),
                 ("map_full", "flows the kernel's flow map had no room for"),
                 ("evictions", "flows that left the kernel's flow map without being deleted"))
# per bound port (labels port, interface), in the order of a snapshot's `ports` values
PORT_GAUGES = (
    ("ovsfoot_port_elephants", "Active elephants in a bound port's zone"),
    ("ovsfoot_port_bytes", "Bytes of a bound port's active elephants"),
    ("ovsfoot_port_heavy", "1 if a bound port's footprint is heavy, else 0"),
    ("ovsfoot_port_sensitive", "1 if a bound port's footprint is sensitive, else 0"),
    ("ovsfoot_port_bits_per_second", "A bound port's throughput over the rate window"),
    ("ovsfoot_port_new_flows_per_second",
     "New flows per second in a bound port's zone over the rate window"),
)
VERBS = ("filter", "prioritize", "healthz", "metrics")


def parse_addr(text: str, what: str = "--metrics") -> tuple[str, int]:
    """ADDR:PORT, [V6]:PORT or :PORT (all addresses)."""
    host, sep, port = text.rpartition(":")
    try:
        p = int(port)
        if not sep or not 0 <= p < 65536:
            raise ValueError
    except ValueError:
        raise ValueError(f"{what} {text!r}: expected ADDR:PORT") from None
    return host.strip("[]"), p


# -- the agent ----------------------------------------------------------------
@dataclass
class Snapshot:
    """What a scrape reports, copied from the agent in its loop."""

    taken: float                                    # time.monotonic()
    counters: dict[str, int]
    roles: dict[str, int]
    # lport, interface, elephants, bytes, heavy, sensitive, bit/s, new flows/s
    ports: list[tuple[str, str, int, int, bool, bool, float, float]]
    node: tuple[int, bool, int]                     # elephants, heavy, heavy ports
    publishers: dict[str, tuple[int, int]]          # target: (transactions, failures)
    source: str
    source_stats: dict = field(default_factory=dict)


def snapshot(agent) -> Snapshot:
    """Reads the agent's state; runs in the agent's loop."""
    roles = dict.fromkeys(ROLES, 0)
    for e in agent.footprints.active.values():
        at = e.attribution
        role = at.role if at is not None and at.attributed else "unattributed"
        roles[role if role in roles else "unknown"] += 1
    interfaces, node = agent.desired()
    fps = agent.footprints.by("lport", agent.attributor.ports)
    ports = [(lport, port.interface, fps[lport].elephants, fps[lport].bytes,
              interfaces[port.interface][contract.FOOTPRINT] == contract.HEAVY,
              interfaces[port.interface][contract.FOOTPRINT] == contract.SENSITIVE,
              fps[lport].rate.bps, fps[lport].rate.flows_per_s)
             for lport, port in agent.attributor.ports.items()]
    pubs = {"ovsdb": (agent.publisher.transactions, agent.publisher.failures)}
    if agent.cluster is not None:
        pubs["cluster"] = (agent.cluster.transactions, agent.cluster.failures)
    try:
        stats = dict(agent.source.stats())
    except Exception as e:      # a source that cannot tell now: the rest still counts
        log.debug("source stats: %s", e)
        stats = {}
    return Snapshot(time.monotonic(),
                    {"events": agent.events, "detected": agent.detector.detected,
                     "ended": agent.detector.ended, "unattributed": agent.unattributed},
                    roles, ports,
                    (int(node[contract.ELEPHANTS]), node[contract.FOOTPRINT] == contract.HEAVY,
                     int(node[contract.HEAVY_PORTS])),
                    pubs, getattr(agent.source, "name", "?"), stats)


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _gauges(rows):
    """An unlabelled gauge for each (name, value, help) of `rows`."""
    for name, v, doc in rows:
        g = GaugeMetricFamily(name, doc)
        g.add_metric([], v)
        yield g


class AgentCollector:
    """The gauges and counters of the snapshot `metrics.current()` gives at each scrape."""

    def __init__(self, metrics: "AgentMetrics"):
        self.metrics = metrics

    def describe(self):
        return []       # collected at scrape time only

    def collect(self):
        s = self.metrics.current()
        if s is None:
            return
        g = GaugeMetricFamily("ovsfoot_metrics_snapshot_age_seconds",
                              "How old the agent state reported here is (the poll loop "
                              "takes a snapshot on each scrape; a busy loop leaves the last)")
        g.add_metric([], time.monotonic() - s.taken)
        yield g
        g = GaugeMetricFamily("ovsfoot_agent_info", "The agent's version and source",
                              labels=["version", "source"])
        g.add_metric([__version__, s.source], 1)
        yield g
        g = GaugeMetricFamily("ovsfoot_elephants_active", "Active elephants by the role of "
                              "their port (unattributed: no port of this node)",
                              labels=["role"])
        for role in ROLES:
            g.add_metric([role], s.roles[role])
        yield g
        for name, key, doc in (
                ("ovsfoot_elephants_detected", "detected", "Elephants detected"),
                ("ovsfoot_elephants_ended", "ended", "Elephants ended"),
                ("ovsfoot_elephants_unattributed", "unattributed",
                 "Elephants not attributed to a port of this node"),
                ("ovsfoot_events", "events", "Flow events received from the source")):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], s.counters[key])
            yield c
        st = s.source_stats
        for key, doc in SOURCE_LOSSES:
            c = CounterMetricFamily(f"ovsfoot_source_{key}", doc.capitalize() + " (0 for a "
                                    "source without a buffer or map)", labels=["source"])
            c.add_metric([s.source], _num(st.get(key)) or 0)
            yield c
        if _num(st.get("flows_tracked")) is not None:
            g = GaugeMetricFamily("ovsfoot_source_flows_tracked",
                                  "Flows the source tracks now", labels=["source"])
            g.add_metric([s.source], st["flows_tracked"])
            yield g
        if s.source == "ctnetlink":
            c = CounterMetricFamily("ovsfoot_ctnetlink_polls", "Dumps of the conntrack table")
            c.add_metric([], _num(st.get("polls")) or 0)
            yield c
            g = GaugeMetricFamily("ovsfoot_ctnetlink_entries",
                                  "Conntrack entries in the last dump")
            g.add_metric([], _num(st.get("entries_last_poll")) or 0)
            yield g
        tx = CounterMetricFamily("ovsfoot_publish_transactions", "OVSDB transactions sent",
                                 labels=["target"])
        fail = CounterMetricFamily("ovsfoot_publish_failures",
                                   "OVSDB transactions the server refused", labels=["target"])
        for target, (n, f) in s.publishers.items():
            tx.add_metric([target], n)
            fail.add_metric([target], f)
        yield tx
        yield fail
        per_port = [GaugeMetricFamily(name, doc, labels=["port", "interface"])
                    for name, doc in PORT_GAUGES]
        for lport, iface, *values in s.ports:
            for m, v in zip(per_port, values):
                m.add_metric([lport, iface], float(v))
        yield from per_port
        yield from _gauges((("ovsfoot_node_elephants", s.node[0], "Active elephants here"),
                            ("ovsfoot_node_heavy", int(s.node[1]),
                             "1 if the node's footprint is heavy, else 0"),
                            ("ovsfoot_node_heavy_ports", s.node[2], "Ports whose footprint "
                             "is heavy")))


class AgentMetrics:
    """The agent's metrics. Give it to the loop as an extra (run/wait), serve
    `registry`, close it at the end (`serve_agent` does the serving)."""

    def __init__(self, agent):
        self.agent = agent
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram(
            "ovsfoot_detection_latency_seconds", "An elephant's crossing of the thresholds "
            "(the kernel's timestamp with bpf, the poll that saw it with ctnetlink) to the "
            "commit of the OVSDB transaction that published it", buckets=LATENCY_BUCKETS,
            registry=self.registry)
        self.registry.register(AgentCollector(self))
        self._pending: dict = {}        # elephant key: detected_at, not yet seen committed
        self._live = getattr(agent.source, "clock", None) is time.time_ns   # not a replay
        agent.publisher.on_commit = self.on_publisher_commit
        self.poll_seconds = None
        if getattr(agent.source, "name", None) == "ctnetlink" and hasattr(agent.source,
                                                                            "on_poll"):
            self.poll_seconds = Histogram("ovsfoot_ctnetlink_poll_seconds", "One dump of the "
                                          "conntrack table, from request to its end (the "
                                          "agent's loop turns in between)",
                                          buckets=POLL_BUCKETS, registry=self.registry)
            agent.source.on_poll = lambda seconds, busy: self.poll_seconds.observe(seconds)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._cond = threading.Condition()
        self._snap: Snapshot | None = None
        self._gen = 0
        self.server: ThreadingHTTPServer | None = None

    # -- the loop's side --------------------------------------------------
    def on_publisher_commit(self, built_ns: int) -> None:
        """The publisher's transaction built at `built_ns` committed: each elephant
        detected before that is published now."""
        if not self._live:
            return
        now = time.time_ns()
        active = self.agent.footprints.active
        for key, e in active.items():
            if e.detected_at <= built_ns and self._pending.get(key) != e.detected_at:
                self._pending[key] = e.detected_at
                self.latency.observe(max(0, now - e.detected_at) / 1e9)
        self._pending = {k: t for k, t in self._pending.items() if k in active}

    def run(self) -> None:
        try:
            if not self._wake_r.recv(4096):
                return
        except BlockingIOError:
            return
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        snap = snapshot(self.agent)
        with self._cond:
            self._snap = snap
            self._gen += 1
            self._cond.notify_all()

    def wait(self, poller) -> None:
        poller.fd_wait(self._wake_r.fileno(), ovs.poller.POLLIN)

    # -- the scrape's side ------------------------------------------------
    def current(self, timeout: float = SNAPSHOT_WAIT) -> Snapshot | None:
        """A fresh snapshot from the loop, or the last one if the loop is busy."""
        with self._cond:
            gen = self._gen
            try:
                self._wake_w.send(b"x")
            except BlockingIOError:
                pass            # a wake-up is already pending
            self._cond.wait_for(lambda: self._gen != gen, timeout)
            return self._snap

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.agent.publisher.on_commit == self.on_publisher_commit:
            self.agent.publisher.on_commit = None
        self._wake_r.close()
        self._wake_w.close()


def serve_registry(registry, addr: str, what: str = "--metrics") -> ThreadingHTTPServer:
    """Serves `registry` on http://ADDR:PORT/ (any path) from a daemon thread."""
    host, port = parse_addr(addr, what)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        server = Server((host, port), MetricsHandler.factory(registry))
    except OSError as e:
        raise OSError(e.errno, f"{what} {addr}: {e.strerror}") from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def serve_agent(agent, addr: str) -> AgentMetrics:
    """Serves the agent's metrics on http://ADDR:PORT/metrics; add the returned object
    to the loop's extras (`agent.loop(extra=[control, m])`) and close it at the end."""
    m = AgentMetrics(agent)
    m.server = serve_registry(m.registry, addr)
    host, port = m.server.server_address[:2]
    log.info("Prometheus metrics on http://%s:%d/metrics",
             f"[{host}]" if ":" in host else host, port)
    return m


# -- the extender ---------------------------------------------------------------
class _ExtenderCollector:
    def __init__(self, extender):
        self.extender = extender

    def describe(self):
        return []

    def collect(self):
        ext = self.extender
        cluster = ext.cluster
        view = cluster.view
        now = time.monotonic()
        yield from _gauges((
                ("ovsfoot_extender_view_synced", int(view.synced),
                 "1 once the cluster database was read"),
                ("ovsfoot_extender_cluster_connected", int(bool(getattr(cluster, "connected",
                                                                         False))),
                 "1 while connected to the cluster database"),
                ("ovsfoot_extender_nodes", len(view.by_key), "Chassis (nodes) in the view"),
                ("ovsfoot_extender_nodes_stale",
                 sum(1 for f in view.by_key.values() if f.known and f.seen is not None
                     and ext.stale_seconds > 0 and now - f.seen > ext.stale_seconds),
                 "Chassis whose heartbeat stopped for --stale-seconds (scored as unknown)"),
                ("ovsfoot_extender_assumed_heavy_pods", ext.assumed.pending(),
                 "Heavy pods ranked best on a node and assumed there until its agent "
                 "reports them")))
        changed = getattr(cluster, "changed", None)
        if view.synced and changed is not None:
            g = GaugeMetricFamily("ovsfoot_extender_view_age_seconds",
                                  "Seconds since the cluster view last changed (every "
                                  "agent's heartbeat changes it)")
            g.add_metric([], now - changed)
            yield g


class ExtenderMetrics:
    """The extender's metrics: `request()` after each answer, `render()` for /metrics."""

    def __init__(self, extender):
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("ovsfoot_extender_requests", "Requests answered, by verb "
                                "and HTTP status (0: the client went away)",
                                ["verb", "code"], registry=self.registry)
        self.seconds = Histogram("ovsfoot_extender_request_seconds", "From the request's "
                                 "headers to its answer, by verb", ["verb"],
                                 buckets=REQUEST_BUCKETS, registry=self.registry)
        self.tls_failures = Counter("ovsfoot_extender_tls_handshake_failures", "TLS "
                                    "handshakes that failed (a refused client certificate, "
                                    "a client that is not TLS, a timeout)",
                                    registry=self.registry)
        self.refused = Counter("ovsfoot_extender_connections_refused", "Connections "
                               "refused at the connection cap", registry=self.registry)
        for verb in VERBS:          # the series exist from the start
            self.seconds.labels(verb)
        self.registry.register(_ExtenderCollector(extender))
        self._series: dict[tuple, tuple] = {}      # (verb, code): their two series

    @staticmethod
    def verb(name: str) -> str:
        return name if name in VERBS else "other"

    def request(self, verb: str, code: int | None, seconds: float) -> None:
        series = self._series.get((verb, code))
        if series is None:          # labels() takes a lock and builds a key each time
            v = self.verb(verb)
            series = self._series[verb, code] = (self.requests.labels(v, str(code or 0)),
                                                 self.seconds.labels(v))
        series[0].inc()
        series[1].observe(seconds)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
