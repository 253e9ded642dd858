"""Attribution: conntrack zone -> OVN logical port -> OVS Interface -> workload.

ovn-controller gives each local logical port a conntrack zone and records it
on the integration bridge as `external_ids:ct-zone-<lport>`; logical routers
get `ct-zone-<datapath>_dnat` / `_snat`. The Interface whose
`external_ids:iface-id` is that port carries the workload's identity.

Zones are reused: the map keeps a short history of who held each zone since
when, and a flow is given to the port that held its zone when the flow began.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass

from ovsfoot.contract import IP, ZONE_PREFIX, printable
from ovsfoot.events import FlowEvent

log = logging.getLogger(__name__)

ROUTER_SUFFIXES = ("_dnat", "_snat")
HISTORY_NS = 3600 * 10**9          # how long a released zone's owner is remembered
_ZONE_RE = re.compile(r"[1-9][0-9]{0,4}")   # as ovn-controller writes it: ASCII, "%d"


def parse_zone(value) -> int | None:
    """A conntrack zone, 1-65535, written as ovn-controller writes it; None otherwise.

    Strict: int() would take " 7", "1_1" and non-ASCII digits ("\u0663" is 3)."""
    if isinstance(value, str) and _ZONE_RE.fullmatch(value):
        zone = int(value)
        if zone <= 65535:
            return zone
    return None


def port_addresses(external_ids: dict[str, str]) -> frozenset[str]:
    """IP addresses of a port: `ip_addresses` (ovn-kubernetes) or `ovsfoot-ip`."""
    out = set()
    for key in ("ip_addresses", IP):
        for item in external_ids.get(key, "").replace(" ", ",").split(","):
            if not item:
                continue
            try:
                out.add(str(ipaddress.ip_interface(item).ip))
            except ValueError:
                log.warning("ignoring malformed address '%s' in external_ids:%s",
                            printable(item), key)
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Port:
    """A local logical port bound to an OVS Interface."""

    lport: str                  # iface-id, the OVN logical port
    interface: str              # OVS Interface name
    workload: str
    addresses: frozenset[str]


@dataclass(slots=True)
class ZoneOwner:
    zone: int
    owner: str                  # logical port, or <datapath>_dnat|_snat
    router: bool
    since: int                  # ns since the epoch (0: before we started)
    until: int | None = None    # None while it still holds the zone


class ZoneMap:
    """Zones of the integration bridge, with who held each zone when."""

    def __init__(self):
        self.current: dict[int, ZoneOwner] = {}
        self._history: dict[int, list[ZoneOwner]] = {}
        self._bad: set[tuple[str, str]] = set()
        # zone -> (owner kept, why, the other claimants ignored): two ct-zone-* keys
        # with one zone, which ovn-controller never writes
        self.conflicts: dict[int, tuple[str, str, tuple[str, ...]]] = {}

    def update(self, bridge_external_ids: dict[str, str], now: int,
               started: bool = False, bound=frozenset()) -> None:
        """Reads the `ct-zone-*` keys; `started` marks the first read (owners since 0).

        `bound`: the logical ports with an Interface here, which win a zone that
        two keys claim when neither held it before."""
        claims: dict[int, list[tuple[str, bool]]] = {}
        for key, value in sorted(bridge_external_ids.items()):
            if not key.startswith(ZONE_PREFIX):
                continue
            name = key[len(ZONE_PREFIX):]
            zone = parse_zone(value)
            if zone is None or not name:
                if (key, value) not in self._bad:
                    log.warning("ignoring malformed zone %s='%s' on the integration bridge "
                                "(ovn-controller writes a number 1-65535)",
                                printable(key), printable(value))
                    self._bad.add((key, value))
                continue
            claims.setdefault(zone, []).append((name, name.endswith(ROUTER_SUFFIXES)))
        zones: dict[int, tuple[str, bool]] = {}
        conflicts = {}
        for zone, claimants in claims.items():
            if len(claimants) == 1:
                zones[zone] = claimants[0]
                continue
            winner, why = self._arbitrate(zone, claimants, bound)
            zones[zone] = winner
            others = tuple(n for n, r in claimants if (n, r) != winner)
            conflicts[zone] = (winner[0], why, others)
            before = self.conflicts.get(zone)
            if before is None or (before[0], before[2]) != (winner[0], others):
                log.warning("zone %d is claimed by %s: keeping %s (%s), ignoring %s",
                            zone, ", ".join(ZONE_PREFIX + printable(n) for n, _ in claimants),
                            printable(winner[0]), why,
                            ", ".join(printable(n) for n in others))
        self.conflicts = conflicts
        for zone, owner in list(self.current.items()):
            if zones.get(zone) != (owner.owner, owner.router):
                owner.until = now
                del self.current[zone]
        for zone, (name, router) in zones.items():
            if zone not in self.current:
                o = ZoneOwner(zone, name, router, 0 if started else now)
                self.current[zone] = o
                self._history.setdefault(zone, []).append(o)
        self._prune(now)

    def _arbitrate(self, zone: int, claimants: list[tuple[str, bool]],
                   bound) -> tuple[tuple[str, bool], str]:
        """Who keeps a zone that several keys claim: whoever held it first, else a
        logical port bound here, else a router's zone; then the first by name."""
        held = self.current.get(zone)
        if held is not None and (held.owner, held.router) in claimants:
            return (held.owner, held.router), "it held the zone first"
        ports = [c for c in claimants if not c[1] and c[0] in bound]
        if ports:
            return min(ports), "its logical port has an Interface here"
        routers = [c for c in claimants if c[1]]
        if routers:
            return min(routers), "a router's zone"
        return min(claimants), "the first by name"

    def _prune(self, now: int) -> None:
        for zone, owners in list(self._history.items()):
            keep = [o for o in owners if o.until is None or now - o.until < HISTORY_NS]
            if keep:
                self._history[zone] = keep
            else:
                del self._history[zone]

    def owner_at(self, zone: int, t: int) -> ZoneOwner | None:
        """Who held `zone` when a flow began at `t`.

        A flow that began while the zone was free can only be the next owner's.
        """
        for o in self._history.get(zone, ()):
            if t < o.since:
                return o            # free at t: the next owner is the only candidate
            if o.until is None or t < o.until:
                return o
        return None


@dataclass(frozen=True, slots=True)
class Attribution:
    """Whom a flow's zone belongs to, and which way its bytes go for that port."""

    zone: int
    lport: str | None           # None for router zones and unknown zones
    workload: str | None
    interface: str | None
    router: str | None          # logical router datapath for _dnat/_snat zones
    role: str                   # "source", "sink" or "unknown"
    reason: str = ""            # why it is not attributed to a port, if it is not

    @property
    def attributed(self) -> bool:
        return self.lport is not None


def role_of(port: Port, ev: FlowEvent) -> str:
    """Is the port the side that sends most of the flow's bytes, or receives them?"""
    if ev.key.src in port.addresses:
        sends_orig = True
    elif ev.key.dst in port.addresses:
        sends_orig = False
    else:
        return "unknown"
    orig_heavier = ev.bytes_orig >= ev.bytes_reply
    return "source" if sends_orig == orig_heavier else "sink"


class Attributor:
    """Knows the integration bridge's zones and the bound ports."""

    def __init__(self):
        self.zones = ZoneMap()
        self.ports: dict[str, Port] = {}      # by lport
        # lport -> (Interface kept, why, the other Interfaces with its iface-id, ignored)
        self.duplicates: dict[str, tuple[str, str, tuple[str, ...]]] = {}

    def set_ports(self, candidates: dict[str, list[tuple[Port, bool]]]) -> None:
        """The bound ports, from (Port, ovn-installed) of every Interface per iface-id.

        Several Interfaces with one iface-id: as ovn-controller, the one it bound
        (`external_ids:ovn-installed="true"`) wins; else the one that held the port
        first; then the first by name. Said once in the log, kept in `duplicates`."""
        ports, duplicates = {}, {}
        for lport, cands in candidates.items():
            if len(cands) == 1:
                ports[lport] = cands[0][0]
                continue
            held = self.ports.get(lport)
            held = held.interface if held is not None else None
            port, installed = min(cands, key=lambda c: (not c[1], c[0].interface != held,
                                                        c[0].interface))
            why = ("ovn-controller bound it (ovn-installed)" if installed else
                   "it held the port first" if port.interface == held else
                   "none is ovn-installed: the first by name")
            others = tuple(sorted(c[0].interface for c in cands if c[0] is not port))
            ports[lport] = port
            duplicates[lport] = (port.interface, why, others)
            if self.duplicates.get(lport) != duplicates[lport]:
                log.warning("iface-id %s is on %d Interfaces: keeping %s (%s), ignoring %s",
                            printable(lport), len(cands), printable(port.interface), why,
                            ", ".join(printable(o) for o in others))
        self.ports, self.duplicates = ports, duplicates

    def conflicts(self, zone: int) -> list[dict[str, str]]:
        """What else claims `zone` or the port that holds it, and is ignored: other
        `ct-zone-*` keys with this zone, other Interfaces with the port's iface-id."""
        out = []
        c = self.zones.conflicts.get(zone)
        if c is not None:
            out += [{"ignored": ZONE_PREFIX + other, "kept": ZONE_PREFIX + c[0], "why": c[1]}
                    for other in c[2]]
        owner = self.zones.current.get(zone)
        d = self.duplicates.get(owner.owner) if owner is not None else None
        if d is not None:
            out += [{"ignored": f"Interface {other}", "kept": f"Interface {d[0]}", "why": d[1]}
                    for other in d[2]]
        return out

    def attribute(self, ev: FlowEvent) -> Attribution:
        zone = ev.key.zone
        owner = self.zones.owner_at(zone, ev.first_seen)
        if owner is None:
            return Attribution(zone, None, None, None, None, "unknown",
                               f"zone {zone} is not on the integration bridge")
        if owner.router:
            return Attribution(zone, None, None, None, owner.owner[:-len("_dnat")],
                               "unknown", "router zone")
        if owner.until is not None:
            return Attribution(zone, None, None, None, None, "unknown",
                               f"zone {zone} was {owner.owner}'s, which released it")
        port = self.ports.get(owner.owner)
        if port is None:
            return Attribution(zone, None, None, None, None, "unknown",
                               f"zone {zone} belongs to {owner.owner}, "
                               "which has no Interface here")
        return Attribution(zone, port.lport, port.workload, port.interface, None,
                           role_of(port, ev))
