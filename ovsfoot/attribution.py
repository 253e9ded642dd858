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
from dataclasses import dataclass

from ovsfoot.contract import IP, ZONE_PREFIX
from ovsfoot.events import FlowEvent

log = logging.getLogger(__name__)

ROUTER_SUFFIXES = ("_dnat", "_snat")
HISTORY_NS = 3600 * 10**9          # how long a released zone's owner is remembered

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
                log.warning("ignoring malformed address %r in external_ids:%s", item, key)
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

    def update(self, bridge_external_ids: dict[str, str], now: int,
               started: bool = False) -> None:
        """Reads the `ct-zone-*` keys; `started` marks the first read (owners since 0)."""
        zones: dict[int, tuple[str, bool]] = {}
        for key, value in bridge_external_ids.items():
            if not key.startswith(ZONE_PREFIX):
                continue
            name = key[len(ZONE_PREFIX):]
            try:
                zone = int(value)
                if not 0 < zone < 65536 or not name:
                    raise ValueError
            except ValueError:
                if (key, value) not in self._bad:
                    log.warning("ignoring malformed zone %s=%r on the integration bridge "
                                "(ovn-controller should write a number 1-65535)", key, value)
                    self._bad.add((key, value))
                continue
            zones[zone] = (name, name.endswith(ROUTER_SUFFIXES))
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
