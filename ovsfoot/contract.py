"""The contract with consumers: key names, their values, and who a workload is.

Everything ovsfoot publishes or reads in OVSDB is named and parsed here, and so
is the one rule that makes a port, a workload or a node heavy. The publishers,
the unixctl views, the library (api), the CNI plugin and the scheduler extender
all use this module, so they cannot disagree.

Local Open_vSwitch database, external_ids (README, "OVSDB keys"):
  Interface (a bound port)   footprint, elephants, bps, flows-per-s, workload-class, ts
  Bridge (the integration    footprint, elephants, heavy-ports, sensitive-ports, bps,
  bridge, e.g. br-int)       flows-per-s, ts  (the node summary;
                             not on the Open_vSwitch row, whose every change makes
                             ovn-controller recompute all its flows)
Inputs ovsfoot reads and never publishes: workload, ip, cni (the CNI marker).
The cluster view has its own typed schema (cluster.ovsschema).
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Iterable

from ovsfoot.events import Thresholds
from ovsfoot.rates import Rate

log = logging.getLogger(__name__)

PREFIX = "ovsfoot-"
ZONE_PREFIX = "ct-zone-"            # ovn-controller's: read, never written

HEAVY, SENSITIVE, LIGHT = "heavy", "sensitive", "light"
CLASSES = (LIGHT, SENSITIVE, HEAVY)     # the later wins where several apply
NODE_CLASSES = (LIGHT, HEAVY)           # a node carries heavy traffic, or not

# published
FOOTPRINT = "ovsfoot-footprint"
ELEPHANTS = "ovsfoot-elephants"
WORKLOAD_CLASS = "ovsfoot-workload-class"
HEAVY_PORTS = "ovsfoot-heavy-ports"
SENSITIVE_PORTS = "ovsfoot-sensitive-ports"
BPS = "ovsfoot-bps"                 # a bucket of BPS_STEPS: throughput, bit/s
FLOWS_PER_S = "ovsfoot-flows-per-s"  # a bucket of FLOW_STEPS: new flows per second
TS = "ovsfoot-ts"
PORT_KEYS = frozenset({FOOTPRINT, ELEPHANTS, BPS, FLOWS_PER_S, WORKLOAD_CLASS, TS})
NODE_KEYS = frozenset({FOOTPRINT, ELEPHANTS, HEAVY_PORTS, SENSITIVE_PORTS, BPS, FLOWS_PER_S,
                       TS})
OUTPUT_KEYS = PORT_KEYS | NODE_KEYS

# read
WORKLOAD = "ovsfoot-workload"       # a port's workload identity (CNI plugin, operator)
IP = "ovsfoot-ip"                   # a port's addresses, where ip_addresses is not set
CNI_MARKER = "ovsfoot-cni"          # the container whose CNI ADD set `WORKLOAD`

# the cluster view: a database of its own, typed (see cluster.ovsschema)
CLUSTER_DB = "OVSFoot_Cluster"


def cluster_schema_path() -> str:
    """cluster.ovsschema, shipped inside the package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster.ovsschema")


# where earlier versions published; an agent deletes these once after an upgrade
LEGACY_SB_CLASS_PREFIX = "ovsfoot-class-"


class ContractError(ValueError):
    """A value that does not follow the contract."""


# -- the rule -------------------------------------------------------------------
CLASS_MARGIN = 0.1      # a traffic class holds until its rate is this far past the threshold


def strongest(classes: Iterable[str | None]) -> str | None:
    """heavy over sensitive over light; None if none of `classes` is a class."""
    ranks = [CLASSES.index(c) for c in classes if c in CLASSES]
    return CLASSES[max(ranks)] if ranks else None


def traffic_class(rate: Rate, t: Thresholds, previous: str | None = None) -> str:
    """What a port's (or workload's) traffic over the rate window says: heavy at a
    sustained throughput above `t.heavy_bps`; sensitive at `t.sensitive_flows` new
    flows per second or more that carry `t.sensitive_flow_bytes` or less each; else
    light. Until the window is (nearly) full, light. The `previous` class holds
    until the rate is CLASS_MARGIN past its threshold the other way, so a rate
    wobbling around a threshold does not flap."""
    if rate.seconds < 0.9 * t.window:
        return LIGHT
    heavy = t.heavy_bps * (1 - CLASS_MARGIN if previous == HEAVY else 1)
    if rate.bps > heavy:
        return HEAVY
    held = 1 + CLASS_MARGIN if previous == SENSITIVE else 1
    if rate.flows_per_s * held >= t.sensitive_flows \
            and rate.bytes_per_flow <= t.sensitive_flow_bytes * held:
        return SENSITIVE
    return LIGHT


def classify(elephants: int = 0, learned: str | None = None, heavy_ports: int = 0,
             traffic: str | None = None) -> str:
    """heavy while something is heavy now (elephants, heavy ports, throughput) or was
    learned heavy; else sensitive if its traffic is now or was learned so; else light.

    A port: its elephants, its traffic and its workload's learned class. A workload:
    the same on this node. The node: all elephants and its heavy ports (heavy|light)."""
    if elephants or heavy_ports:
        return HEAVY
    return strongest([LIGHT, learned, traffic])


def merge_classes(classes: Iterable[str | None]) -> str | None:
    """One learned class from several opinions (this chassis', others'): the strongest."""
    return strongest(classes)


# Published values are buckets, not raw numbers: a key changes only when the value
# leaves its bucket by more than BUCKET_MARGIN, so OVSDB is not written at every
# change of a rate. The value is the bucket's lower bound (0 below the first step).
BPS_STEPS = tuple(m * 10**e for e in range(6, 13) for m in (1, 2, 5))     # 1 Mbit/s..
FLOW_STEPS = tuple(m * 10**e for e in range(0, 7) for m in (1, 2, 5))     # 1 flow/s..
BUCKET_MARGIN = 0.25    # measured rates are noisy: a 20 flows/s workload reads 17 to 23


def bucket(value: float, steps: tuple[int, ...], previous: int | None = None) -> int:
    """The bucket of `value`; `previous` (the one published) is kept while `value`
    stays within BUCKET_MARGIN of its bounds."""
    if previous is not None:
        i = steps.index(previous) + 1 if previous in steps else 0
        upper = steps[i] if i < len(steps) else float("inf")
        if previous * (1 - BUCKET_MARGIN) <= value < upper * (1 + BUCKET_MARGIN):
            return previous
    return max((s for s in steps if s <= value), default=0)


# -- values ---------------------------------------------------------------------
def one_of(*choices: str) -> Callable[[str | None, str], str | None]:
    """A parser of a key whose value, where present, must be one of `choices`."""
    def parse(value: str | None, where: str) -> str | None:
        if value is not None and value not in choices:
            raise ContractError(f"{where}: {value!r} is not one of {', '.join(choices)}")
        return value
    return parse


parse_class = one_of(*CLASSES)
parse_node_class = one_of(*NODE_CLASSES)


def parse_count(value: str | None, where: str) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise ContractError(f"{where}: {value!r} is not a non-negative integer")
    return n


def _parsed(ids: dict[str, str], where: str, *keys) -> list:
    """The values of `keys` ((key, parser) pairs) in `ids`, each parsed or refused."""
    return [parse(ids.get(key), f"{where} {key}") for key, parse in keys]


@dataclass(frozen=True, slots=True)
class Traffic:
    """A port's or node's published traffic: buckets (see `bucket`) and its class."""

    bps: int = 0
    flows_per_s: int = 0
    klass: str = LIGHT

    def next(self, rate: Rate, t: Thresholds) -> "Traffic":
        """What to publish for `rate`, this being what is published now."""
        return Traffic(bucket(rate.bps, BPS_STEPS, self.bps),
                       bucket(rate.flows_per_s, FLOW_STEPS, self.flows_per_s),
                       traffic_class(rate, t, self.klass))

    def keys(self) -> dict[str, str]:
        return {BPS: str(self.bps), FLOWS_PER_S: str(self.flows_per_s)}


@dataclass(frozen=True, slots=True)
class PortKeys:
    """The keys published on a port's Interface."""

    footprint: str | None
    elephants: int | None
    workload_class: str | None
    updated_ms: int | None
    bps: int | None = None
    flows_per_s: int | None = None

    @classmethod
    def parse(cls, ids: dict[str, str], where: str) -> "PortKeys":
        return cls(*_parsed(ids, where, (FOOTPRINT, parse_class), (ELEPHANTS, parse_count),
                            (WORKLOAD_CLASS, parse_class), (TS, parse_count),
                            (BPS, parse_count), (FLOWS_PER_S, parse_count)))

    @staticmethod
    def format(elephants: int, learned: str | None,
               traffic: Traffic = Traffic()) -> dict[str, str]:
        kv = {FOOTPRINT: classify(elephants, learned, traffic=traffic.klass),
              ELEPHANTS: str(elephants), **traffic.keys()}
        if learned:
            kv[WORKLOAD_CLASS] = learned
        return kv


@dataclass(frozen=True, slots=True)
class NodeKeys:
    """The node summary, on the integration bridge's Bridge row (the library returns it
    as api.NodeFootprint)."""

    footprint: str | None       # "heavy" | "light"
    elephants: int | None
    heavy_ports: int | None
    updated_ms: int | None
    sensitive_ports: int | None = None
    bps: int | None = None      # throughput bucket of all its ports, bit/s
    flows_per_s: int | None = None

    @classmethod
    def parse(cls, ids: dict[str, str], where: str) -> "NodeKeys":
        return cls(*_parsed(ids, where, (FOOTPRINT, parse_node_class),
                            (ELEPHANTS, parse_count), (HEAVY_PORTS, parse_count),
                            (TS, parse_count), (SENSITIVE_PORTS, parse_count),
                            (BPS, parse_count), (FLOWS_PER_S, parse_count)))

    @staticmethod
    def format(elephants: int, heavy_ports: int, sensitive_ports: int = 0,
               traffic: Traffic = Traffic()) -> dict[str, str]:
        return {FOOTPRINT: classify(elephants, heavy_ports=heavy_ports),
                ELEPHANTS: str(elephants), HEAVY_PORTS: str(heavy_ports),
                SENSITIVE_PORTS: str(sensitive_ports), **traffic.keys()}


def integration_bridge(root_external_ids: dict[str, str]) -> str:
    """The bridge ovn-controller uses (`external_ids:ovn-bridge`, default br-int)."""
    return root_external_ids.get("ovn-bridge") or "br-int"


# -- identity: pod <-> iface-id <-> workload -------------------------------------
# Kubernetes pod names of controllers: <deployment>-<pod-template-hash>-<5>,
# <daemonset|job>-<5>, <statefulset>-<ordinal>. ovn-kubernetes names the
# logical port <namespace>_<pod>.
K8S_ALNUM = "[bcdfghjklmnpqrstvwxz2456789]"
RS_HASH = re.compile(rf"^(.+)-{K8S_ALNUM}{{6,10}}$")
_OVNK_IFACE_ID = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)_([a-z0-9]([-.a-z0-9]*[a-z0-9])?)$")
_POD_SUFFIXES = (re.compile(rf"^(.+)-{K8S_ALNUM}{{6,10}}-{K8S_ALNUM}{{5}}$"),
                 re.compile(rf"^(.+)-{K8S_ALNUM}{{5}}$"),
                 re.compile(r"^(.+)-\d+$"))
WORKLOAD_MAX = 253                  # characters of a workload identity


def iface_id(namespace: str, pod: str) -> str:
    """The logical port ovn-kubernetes gives a pod."""
    return f"{namespace}_{pod}"


def pod_workload(namespace: str, pod: str) -> str:
    """`<namespace>/<owner>`: the pod name without its controller's suffix."""
    for pattern in _POD_SUFFIXES:
        owner = pattern.match(pod)
        if owner:
            return f"{namespace}/{owner.group(1)}"
    return f"{namespace}/{pod}"


def workload_of(lport: str, external_ids: dict[str, str]) -> str:
    """The workload identity of a port, most explicit source first."""
    explicit = external_ids.get(WORKLOAD, "").strip()
    if explicit:
        return explicit
    m = _OVNK_IFACE_ID.match(lport)
    if m:
        return pod_workload(m.group(1), m.group(3))
    for key in ("vm-id", "vm-uuid"):
        if external_ids.get(key):
            return f"vm:{external_ids[key]}"
    return lport


def _unsafe(ch: str) -> bool:
    """Control, format (bidi overrides, zero-width), unassigned, private-use,
    surrogate and separator characters: nothing a name needs, everything a forger does."""
    return unicodedata.category(ch)[0] in "CZ"


def validate_workload(workload) -> str:
    """The workload identity stripped; ContractError if empty, longer than
    WORKLOAD_MAX characters, or with whitespace, control or other invisible characters."""
    if not isinstance(workload, str):
        raise ContractError(f"workload must be a string, not {type(workload).__name__}")
    w = workload.strip()
    if not 0 < len(w) <= WORKLOAD_MAX or any(_unsafe(ch) for ch in w):
        raise ContractError(f"invalid workload identity '{printable(workload)}': "
                            f"1-{WORKLOAD_MAX} characters, no whitespace, control or "
                            "invisible characters")
    return w


def printable(value, limit: int = 80) -> str:
    """An untrusted string (a name from OVSDB, a state file, a peer) made safe to log:
    backslash, control, format and separator characters other than the space escaped
    (so that it cannot forge a log line or hide what it is), cut after `limit`
    characters with how long it was."""
    s = value if isinstance(value, str) else str(value)
    out = []
    for ch in s[:limit]:
        if ch == "\\":
            out.append("\\\\")
        elif ch != " " and _unsafe(ch):
            n = ord(ch)
            out.append(f"\\x{n:02x}" if n < 0x100 else
                       f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
        else:
            out.append(ch)
    if len(s) > limit:
        out.append(f"...({len(s)} characters)")
    return "".join(out)


_WARNED: set[str] = set()


def usable_workload(name, where: str) -> bool:
    """Whether a workload name another writer put in `where` may be used; says why not,
    once per name."""
    try:
        validate_workload(name)
        return True
    except ContractError as e:
        key = f"{where}\0{name}"
        if key not in _WARNED and len(_WARNED) < 1000:
            _WARNED.add(key)
            log.warning("%s: ignoring an invalid workload (%s)", where, e)
        return False
