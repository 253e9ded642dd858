"""The per-node agent: one poll loop for the source, the IDL, the publisher and unixctl.

Data flows one way: source -> detector -> attributor -> footprints -> publisher.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from dataclasses import dataclass, field

import ovs.poller

from ovsfoot import contract
from ovsfoot.attribution import Attributor, Port, port_addresses
from ovsfoot.detection import Detector
from ovsfoot.events import FlowEvent, Kind, Thresholds
from ovsfoot.footprints import Footprints
from ovsfoot.isolation import Isolator
from ovsfoot.learning import Learner, StateFile
from ovsfoot.ovsdb import LocalDb, ssl_ready
from ovsfoot.publishers.cluster import ClusterPublisher, Lesson
from ovsfoot.publishers.legacy import SouthboundCleanup
from ovsfoot.publishers.vswitch import BURST, RATE, VswitchPublisher
from ovsfoot.rates import ZoneRates
from ovsfoot.sources import Source

log = logging.getLogger(__name__)

SAVE_EVERY_S = 5.0
TICK_EVERY_S = 60.0
RATE_EVERY_S = 1.0      # the source's zone counters are read this often


@dataclass
class Config:
    db: str | None = None               # OVSDB remote; None: OVS run dir's db.sock
    bridge: str = "br-int"
    thresholds: Thresholds = field(default_factory=Thresholds)
    state: str | None = None            # state file of learned classes
    heavy_at: float = 3.0
    half_life: float = 6 * 3600
    publish_rate: float = RATE          # local OVSDB transactions/s, sustained,
    publish_burst: int = BURST          # after a burst of this many
    cluster_db: str | None = None       # ovsfoot's cluster database; None: no cluster view
    cluster_interval: float = 1.0       # at most one cluster transaction this often
    heartbeat: float = 10.0             # and one at least this often (liveness)


def _key(ev: FlowEvent) -> str:
    """A flow's tuple for the log (a replayed recording's addresses are any strings)."""
    return contract.printable(str(ev.key), 160)


class WorkloadIdentities:
    """The workload identities of the bridge's ports; what is wrong with one is logged once."""

    def __init__(self):
        self._warned: dict[str, tuple[str | None, str]] = {}   # lport: (explicit, workload)

    def of(self, lport: str, ids: dict[str, str]) -> str:
        """The port's workload identity, validated: an invalid `ovsfoot-workload` is
        ignored (with a warning, once) for the identity derived from the port; a
        derived one that is not valid either (a hostile iface-id or vm-id) is replaced
        by one made from a hash of the iface-id."""
        problems = []
        explicit = ids.get(contract.WORKLOAD)
        if explicit is not None and explicit.strip():
            try:
                return contract.validate_workload(explicit)
            except contract.ContractError as e:
                problems.append(f"ignoring its {contract.WORKLOAD}: {e}")
            ids = {k: v for k, v in ids.items() if k != contract.WORKLOAD}
        rounds = [ids]
        if "vm-id" in ids or "vm-uuid" in ids:
            rounds.append({k: v for k, v in ids.items() if k not in ("vm-id", "vm-uuid")})
        for without in rounds:
            derived = contract.workload_of(lport, without)
            try:
                workload = contract.validate_workload(derived)
                break
            except contract.ContractError as e:
                problems.append(f"its derived identity is not usable: {e}")
        else:
            digest = hashlib.sha256(lport.encode("utf-8", "surrogateescape")).hexdigest()
            workload = f"iface-id:{digest[:16]}"
        if problems and self._warned.get(lport) != (explicit, workload):
            self._warned[lport] = (explicit, workload)
            log.warning("port %s: %s; its workload is %s", contract.printable(lport),
                        "; ".join(problems), workload)
        return workload

    def keep(self, lports) -> None:
        """Forgets what was logged of the ports not in `lports`."""
        self._warned = {k: v for k, v in self._warned.items() if k in lports}


class Agent:
    def __init__(self, cfg: Config, source: Source, db: LocalDb | None = None,
                 isolator: Isolator | None = None):
        self.cfg = cfg
        self.isolator = isolator or Isolator()      # off unless asked
        self.thresholds = cfg.thresholds
        self.source = source
        self.db = db or LocalDb(cfg.db)
        self.detector = Detector(self.thresholds)
        self.attributor = Attributor()
        self.learner = Learner(cfg.heavy_at, cfg.half_life)
        self.footprints = Footprints(self.learner)
        self.rates = ZoneRates(self.thresholds.window)
        self.publisher = VswitchPublisher(self.db, cfg.bridge, cfg.publish_rate,
                                          cfg.publish_burst)
        self.cluster: ClusterPublisher | None = None
        self.cleanup: SouthboundCleanup | None = None
        self._legacy_checked = False
        self._earlier_version: bool | None = None   # ran here? (seen at the first sync)
        self.state = StateFile(cfg.state) if cfg.state else None
        if self.state:
            self.learner.load(self.state.load(), self.state.flows)
        self.started = time.time_ns()
        self.exiting = False
        self.events = 0
        self.unattributed = 0
        self.bridge_seen: bool | None = None
        self.synced = False
        self._generation = None
        self._next_save = self._next_tick = self._next_rate = 0.0
        self._next_lesson = time.monotonic() + self.thresholds.window
        self._identities = WorkloadIdentities()

    # -- topology ---------------------------------------------------------
    def refresh_topology(self) -> None:
        bridge = self.db.bridge(self.cfg.bridge)
        if (bridge is not None) != self.bridge_seen:
            self.bridge_seen = bridge is not None
            if bridge is None:
                log.warning("bridge %s not found in OVSDB: no zone can be attributed "
                            "until it exists (wrong --bridge?)", self.cfg.bridge)
            else:
                log.info("reading conntrack zones from bridge %s", self.cfg.bridge)
        candidates: dict[str, list[tuple[Port, bool]]] = {}
        for iface in self.db.rows("Interface"):
            ids = dict(iface.external_ids)
            lport = ids.get("iface-id")
            if lport:
                port = Port(lport, iface.name, self._identities.of(lport, ids), port_addresses(ids))
                installed = ids.get("ovn-installed") == "true"
                candidates.setdefault(lport, []).append((port, installed))
        self._identities.keep(candidates)
        known = set(self.attributor.ports)
        self.attributor.set_ports(candidates)
        ports = self.attributor.ports
        self.attributor.zones.update(dict(bridge.external_ids) if bridge else {},
                                     time.time_ns(), started=not self.synced,
                                     bound=ports.keys())
        for lport in ports.keys() - known:
            klass = self.klass(ports[lport].workload)
            log.info("port %s appeared (workload %s%s)", contract.printable(lport),
                     contract.printable(ports[lport].workload),
                     f", learned {klass}" if klass else "")
        self._follow_cluster()
        root = self.db.root()
        self.isolator.topology(dict(root.external_ids).get("ovn-encap-ip") if root else None)
        self.synced = True
        self._generation = None         # republish

    def _follow_cluster(self) -> None:
        """Connects the cluster view as this chassis (system-id); once, deletes what
        earlier versions wrote into OVN Southbound, where one of them ran."""
        root = self.db.root()
        ids = dict(root.external_ids) if root is not None else {}
        if root is not None and self._earlier_version is None:
            # before anything is published: the node summary of earlier versions is on
            # this row until the publisher deletes it
            self._earlier_version = (any(k.startswith(contract.PREFIX) for k in ids)
                                     or (self.state is not None and self.state.version == 1))
        chassis = ids.get("system-id")
        if not chassis:
            return
        if not self._legacy_checked and ids.get("ovn-remote"):
            self._legacy_checked = True         # once per agent run
            remote = ids["ovn-remote"]
            if not self._earlier_version:
                # OVN 23.03's ovn-northd recomputes everything when a client comes or goes
                # (ovsdb-server writes the Connection row's n_connections): never for nothing
                log.info("not connecting to OVN Southbound: no earlier version of ovsfoot "
                         "ran here (no ovsfoot key on the Open_vSwitch row, no state file "
                         "of version 1), so it holds no key of ours")
            elif ssl_ready(remote):
                self.cleanup = SouthboundCleanup(remote, chassis)
            else:
                log.info("not checking OVN Southbound %s for keys of earlier versions: "
                         "it needs SSL (--private-key, --certificate, --ca-cert)",
                         contract.printable(remote, 240))
        if not self.cfg.cluster_db:
            return
        c = self.cluster
        if c is not None and c.chassis == chassis:
            return
        if c is not None:
            c.close()
        hostname = ids.get("hostname") or socket.gethostname()
        self.cluster = ClusterPublisher(self.cfg.cluster_db, chassis, hostname,
                                        self.cfg.cluster_interval, self.cfg.heartbeat)

    def klass(self, workload: str) -> str | None:
        """The learned class of `workload`, here or on another chassis (heavy wins)."""
        return contract.merge_classes([self.learner.klass(workload),
                                       self.cluster.classes.get(workload) if self.cluster
                                       else None])

    # -- events -----------------------------------------------------------
    def handle(self, events: list[FlowEvent]) -> None:
        for ev in events:
            self.events += 1
            if ev.key in self.learner.counted:  # the source still sees it, or saw it go
                self.learner.seen(ev.key, ev.first_seen, ev.ts, ended=ev.kind == Kind.END)
            out = self.detector.feed(ev)
            if out is not None:
                self._elephant_event(out)

    def _elephant_event(self, ev: FlowEvent) -> None:
        attribution = None
        if ev.kind == Kind.ELEPHANT:
            attribution = self.attributor.attribute(ev)
            if attribution.attributed:
                log.info("elephant %s: port %s (workload %s) is its %s, %d bytes",
                         _key(ev), contract.printable(attribution.lport),
                         contract.printable(attribution.workload), attribution.role, ev.bytes)
            else:
                self.unattributed += 1
                log.info("elephant %s: not attributed (%s)", _key(ev),
                         contract.printable(attribution.reason, 240))
        elif ev.kind == Kind.END and ev.key in self.footprints.active:
            log.info("elephant %s ended after %d bytes", _key(ev), ev.bytes)
        self.footprints.apply(ev, attribution)

    def set_thresholds(self, t: Thresholds) -> None:
        t.validate()
        self.source.set_thresholds(t)
        for name in Thresholds.__slots__:
            setattr(self.thresholds, name, getattr(t, name))
        self.rates.window = t.window
        log.info("thresholds now bytes=%d seconds=%g idle=%g heavy-bps=%g sensitive-flows=%g "
                 "sensitive-flow-bytes=%d window=%g", t.bytes, t.seconds, t.idle_seconds,
                 t.heavy_bps, t.sensitive_flows, t.sensitive_flow_bytes, t.window)

    # -- traffic ----------------------------------------------------------
    def update_rates(self, now: int) -> None:
        """Reads the source's per-zone counters: each bound port's rate (its zone's);
        once per rate window, what each workload's traffic was teaches the learner."""
        self.rates.update(self.source.zone_counters(), now)
        zone_of = {o.owner: z for z, o in self.attributor.zones.current.items() if not o.router}
        ports = self.attributor.ports
        self.footprints.set_rates({lp: self.rates.rate(zone_of[lp]) for lp in ports
                                   if lp in zone_of},
                                  {lp: p.workload for lp, p in ports.items()}, self.thresholds)
        if time.monotonic() >= self._next_lesson:
            self._next_lesson = time.monotonic() + self.thresholds.window
            for workload, klass in self.footprints.workload_traffic(self.thresholds).items():
                self.learner.traffic(workload, klass, now)

    # -- publishing -------------------------------------------------------
    def desired(self) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        """The keys to publish per Interface name, and for the node."""
        ports = self.footprints.by("lport")
        interfaces, classes = {}, []
        for lport, port in self.attributor.ports.items():
            fp = ports.get(lport)
            kv = contract.PortKeys.format(fp.elephants if fp else 0, self.klass(port.workload),
                                          self.footprints.traffic.get(lport, contract.Traffic()))
            classes.append(kv[contract.FOOTPRINT])
            interfaces[port.interface] = kv
        return interfaces, contract.NodeKeys.format(
            len(self.footprints.active), classes.count(contract.HEAVY),
            classes.count(contract.SENSITIVE), self.footprints.node_traffic)

    # -- the loop ---------------------------------------------------------
    def run_once(self) -> None:
        if self.db.run() and self.db.idl.has_ever_connected():
            self.refresh_topology()
        if not self.synced:
            return                  # attribute nothing before the zones are known
        self.handle(self.source.run())
        now = self.source.clock()
        for ev in self.detector.expire(now):
            self._elephant_event(ev)
        self.isolator.sync(self.footprints.active)
        self.publish()              # an elephant's change goes before the periodic work
        mono = time.monotonic()
        if mono >= self._next_rate:
            self._next_rate = mono + RATE_EVERY_S
            self.update_rates(now)
        if mono >= self._next_tick:
            self.learner.tick(now)
            self._next_tick = mono + TICK_EVERY_S
        if self.cleanup is not None:
            self.cleanup.run()
        if self.cluster is not None and self.cluster.run():
            self._generation = None         # another chassis learned something
        self.publish()
        if self.state and self.learner.dirty and mono >= self._next_save:
            self.save_state()
            self._next_save = mono + SAVE_EVERY_S

    def publish(self) -> None:
        """Hands what changed since the last call to the publishers; lets the node's send."""
        gen = (self.footprints.generation, len(self.learner.records),
               tuple(r.klass for r in self.learner.records.values()), self._next_tick)
        if gen != self._generation:
            self._generation = gen
            interfaces, node = self.desired()
            self.publisher.publish(interfaces, node)
            if self.cluster is not None:
                self.cluster.publish(node, {w: Lesson(r.klass, r.class_score)
                                            for w, r in self.learner.records.items()})
        self.publisher.run()

    def save_state(self) -> None:
        if self.state:
            self.state.save(self.learner.dump(), self.learner.dump_flows())
            self.learner.dirty = False

    def wait(self, poller: ovs.poller.Poller) -> None:
        self.db.wait(poller)
        if not self.synced:
            return
        self.source.wait(poller)
        self.publisher.wait(poller)
        for x in (self.cluster, self.cleanup):
            if x is not None:
                x.wait(poller)
        expiry = self.detector.next_expiry()
        if expiry is not None and self.source.clock is time.time_ns:   # live, not replayed
            poller.timer_wait(max(0, (expiry - time.time_ns()) // 1_000_000) + 1)
        if self.state and self.learner.dirty:
            poller.timer_wait(int(SAVE_EVERY_S * 1000))
        poller.timer_wait(max(0, int((self._next_rate - time.monotonic()) * 1000)) + 1)
        poller.timer_wait(int(TICK_EVERY_S * 1000))

    def loop(self, extra=()) -> None:
        """Runs until `exiting`; `extra` are objects with run() and wait(poller)."""
        while not self.exiting:
            self.run_once()
            for x in extra:
                x.run()
            poller = ovs.poller.Poller()
            self.wait(poller)
            for x in extra:
                x.wait(poller)
            if not self.exiting:
                poller.block()

    def shutdown(self, withdraw: bool = True) -> None:
        self.isolator.close()
        self.save_state()
        if withdraw:
            self.publisher.withdraw()
        if self.cluster is not None:
            self.cluster.close()
        if self.cleanup is not None:
            self.cleanup.close()
        self.source.close()
        self.db.idl.close()
