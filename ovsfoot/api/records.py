"""What the library returns: an Interface, and the footprints the agent published
on a port, a workload's ports and the node."""

from __future__ import annotations

from dataclasses import dataclass

from ovsfoot import contract


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    """An OVS Interface as the library sees it."""

    name: str
    iface_id: str | None        # external_ids:iface-id, the OVN logical port (None: unbound)
    mac_in_use: str | None
    external_ids: dict[str, str]

    @property
    def workload(self) -> str | None:
        """The workload identity the agent gives this port (None while it is unbound)."""
        return contract.workload_of(self.iface_id, self.external_ids) if self.iface_id else None


class Published:
    """A footprint the agent publishes: its `footprint` is None until it is published."""

    __slots__ = ()

    @property
    def published(self) -> bool:
        return self.footprint is not None

    @property
    def heavy(self) -> bool:
        return self.footprint == "heavy"


@dataclass(frozen=True, slots=True)
class PortFootprint(Published):
    """What the agent published on one Interface (None: not published)."""

    interface: str
    iface_id: str | None
    workload: str | None        # the identity the agent uses for it
    footprint: str | None       # "heavy" | "sensitive" | "light"
    elephants: int | None
    workload_class: str | None  # the workload's learned class, None if nothing learned
    updated_ms: int | None      # ovsfoot-ts
    bps: int | None = None      # throughput bucket, bit/s (contract.BPS_STEPS)
    flows_per_s: int | None = None  # flow rate bucket (contract.FLOW_STEPS)

    @property
    def sensitive(self) -> bool:
        return self.footprint == "sensitive"


@dataclass(frozen=True, slots=True)
class WorkloadFootprint(Published):
    """A workload's ports on this node, summed up."""

    workload: str
    ports: tuple[PortFootprint, ...]
    footprint: str | None       # its ports' strongest class; None if no port is published
    elephants: int
    workload_class: str | None  # learned class, from any of its ports
    bps: int = 0                # its ports' throughput buckets summed
    flows_per_s: int = 0


@dataclass(frozen=True, slots=True)
class NodeFootprint(Published, contract.NodeKeys):
    """What the agent published on the integration bridge: its keys, as contract.NodeKeys
    parses them (None: not published)."""
