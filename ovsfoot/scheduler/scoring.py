"""Placement logic of the scheduler extender, free of I/O: pod class, node facts, scores.

A pod's class, first match wins: the annotation, then the label
`ovsfoot.io/footprint: light|sensitive|heavy`; the class its workload
(`<namespace>/<owner>`) learned on any chassis (the cluster database's
Workload_Class; heavy over sensitive); else light.

Scores are 0-10, `round(10 * 2 / (2 + load))`: 10 on a quiet node, 7 at load 1,
5 at load 2, 3 at load 4. A light pod's load is the node's active elephants plus
its heavy ports (queues it would share). A sensitive pod's is twice that plus
twice the node's throughput in units of HEAVY_BPS, so it keeps away from busy
queues more strongly than a light pod. A heavy pod's load is the node's heavy
ports plus half its elephants plus its sensitive ports, so heavy pods spread away
from each other and from sensitive pods. A node the cluster view does not know
(no chassis, or no agent publishing) gets 5.

Assumed load: once a heavy pod is ranked best on a node, it counts there as a
heavy port until the node's agent reports one more heavy port, or for
`ASSUME_S` seconds; so a burst of heavy pods, scheduled faster than the agents
report, spreads instead of piling onto the node that was quiet a moment ago.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass, field
from itertools import repeat

from ovsfoot.contract import CLASSES, HEAVY, RS_HASH, SENSITIVE, LIGHT, pod_workload

LABEL = "ovsfoot.io/footprint"
MAX_SCORE = 10
UNKNOWN_SCORE = 5
ASSUME_S = 60.0
HEAVY_BPS = 200e6           # the agents' default heavy throughput (Thresholds.heavy_bps)
SENSITIVE_WEIGHT = 2.0      # how much more a sensitive pod minds a load than a light one


class BadRequest(ValueError):
    """The request does not have the shape of the extender API (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What one chassis' agent published in the cluster database."""

    chassis: str                    # Chassis name (system-id)
    hostname: str
    footprint: str | None           # heavy|light; None: no agent publishes here
    elephants: int = 0
    heavy_ports: int = 0
    updated_ms: int | None = None
    seen: float | None = None       # the reader's monotonic clock when `updated_ms` last moved
    sensitive_ports: int = 0
    bps: int = 0                    # throughput bucket (contract.BPS_STEPS)
    flows_per_s: int = 0            # flow rate bucket (contract.FLOW_STEPS)

    @property
    def known(self) -> bool:
        return self.footprint is not None

    def as_dict(self) -> dict:
        return {"chassis": self.chassis, "hostname": self.hostname,
                "footprint": self.footprint, "elephants": self.elephants,
                "heavy_ports": self.heavy_ports, "sensitive_ports": self.sensitive_ports,
                "bps": self.bps, "flows_per_s": self.flows_per_s, "ts": self.updated_ms}


@dataclass(frozen=True, slots=True)
class ClusterView:
    """Node facts by Kubernetes node name key, and learned workload classes."""

    by_key: dict[str, NodeFacts] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)
    synced: bool = False            # the cluster database was read at least once
    by_short: dict[str, NodeFacts | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        short: dict[str, NodeFacts | None] = {}
        for key, facts in self.by_key.items():
            k = key.split(".", 1)[0]
            short[k] = None if k in short else facts        # None: not unique
        object.__setattr__(self, "by_short", short)

    def current(self, name: str, now: float, max_age: float) -> NodeFacts | None:
        """The node's facts, or unknown ones if its agent has not refreshed them
        (heartbeat) for `max_age` seconds: a dead agent's summary is not a quiet node."""
        facts = self.node(name)
        if facts is None or not facts.known or facts.seen is None or max_age <= 0 \
                or now - facts.seen <= max_age:
            return facts
        return NodeFacts(facts.chassis, facts.hostname, None)

    def node(self, name: str) -> NodeFacts | None:
        facts = self.by_key.get(name)
        if facts is not None:
            return facts
        # node "a" vs hostname "a.example.com", or the other way round, if unique
        return self.by_short.get(name.split(".", 1)[0])


# -- requests -----------------------------------------------------------------
def _strings(obj, where: str) -> dict[str, str]:
    if obj is None:
        return {}
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in obj.items()):
        raise BadRequest(f"{where} must be an object of strings")
    return obj


@dataclass(frozen=True, slots=True)
class PodInfo:
    name: str
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]
    owners: list[dict]

    @classmethod
    def parse(cls, pod) -> "PodInfo":
        if not isinstance(pod, dict):
            raise BadRequest("Pod must be an object (a v1.Pod)")
        meta = pod.get("metadata")
        if not isinstance(meta, dict):
            raise BadRequest("Pod.metadata must be an object")
        name = meta.get("name") or meta.get("generateName")
        if not isinstance(name, str) or not name:
            raise BadRequest("Pod.metadata.name must be a non-empty string")
        namespace = meta.get("namespace") or "default"
        if not isinstance(namespace, str):
            raise BadRequest("Pod.metadata.namespace must be a string")
        owners = meta.get("ownerReferences") or []
        if not isinstance(owners, list) or not all(
                isinstance(o, dict) and isinstance(o.get("name", ""), str)
                and isinstance(o.get("kind", ""), str) for o in owners):
            raise BadRequest("Pod.metadata.ownerReferences must be a list of objects")
        return cls(name, namespace, _strings(meta.get("labels"), "Pod.metadata.labels"),
                   _strings(meta.get("annotations"), "Pod.metadata.annotations"), owners)

    @property
    def workload(self) -> str:
        """`<namespace>/<owner>` as the agents name it (Deployment, not ReplicaSet)."""
        owner = next((o for o in self.owners if o.get("controller")), None) or \
            (self.owners[0] if self.owners else None)
        if owner and owner.get("name"):
            name = owner["name"]
            if owner.get("kind") == "ReplicaSet":
                h = self.labels.get("pod-template-hash")
                if h and name.endswith(f"-{h}"):
                    name = name[:-len(h) - 1]
                elif m := RS_HASH.match(name):
                    name = m.group(1)
            return f"{self.namespace}/{name}"
        # no owner given: the pod name with its controller suffix stripped, as the agents do
        return pod_workload(self.namespace, self.name)


def pod_class(pod: PodInfo, view: ClusterView) -> tuple[str, str]:
    """(class, why) of the pod."""
    for where, values in (("annotation", pod.annotations), ("label", pod.labels)):
        v = values.get(LABEL)
        if v is not None:
            v = v.strip().lower()
            if v in CLASSES:
                return v, f"{where} {LABEL}"
    learned = view.classes.get(pod.workload)
    if learned:
        return learned, f"workload {pod.workload} learned {learned}"
    return LIGHT, "default"


def candidate_names(args: dict) -> tuple[list[str], bool]:
    """The candidate node names, and whether they came as a NodeList (`Nodes`)."""
    nodes = args.get("Nodes")
    if nodes is not None:
        if not isinstance(nodes, dict) or not isinstance(nodes.get("items") or [], list):
            raise BadRequest("Nodes must be a v1.NodeList with an items list")
        names = []
        for item in nodes.get("items") or []:
            meta = item.get("metadata") if isinstance(item, dict) else None
            if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) \
                    or not meta["name"]:
                raise BadRequest("every Nodes.items[] needs metadata.name")
            names.append(meta["name"])
        return names, True
    names = args.get("NodeNames")
    if names is None:
        raise BadRequest("ExtenderArgs needs Nodes (a NodeList) or NodeNames "
                         "(nodeCacheCapable)")
    if not isinstance(names, list) or not (all(map(isinstance, names, repeat(str)))
                                           and all(names)):     # strings, none empty
        raise BadRequest("NodeNames must be a list of node names")
    return list(names), False


def parse_args(body: bytes) -> tuple[PodInfo, list[str], bool, dict]:
    """ExtenderArgs: (pod, candidate names, came as NodeList, the raw args)."""
    import json
    try:
        args = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"body is not JSON: {e}") from None
    if not isinstance(args, dict):
        raise BadRequest("body must be a JSON object (ExtenderArgs)")
    if args.get("Pod") is None:
        raise BadRequest("ExtenderArgs has no Pod")
    pod = PodInfo.parse(args["Pod"])
    names, as_list = candidate_names(args)
    return pod, names, as_list, args


# -- scoring ------------------------------------------------------------------
def load(facts: NodeFacts, klass: str) -> float:
    if klass == HEAVY:
        return facts.heavy_ports + 0.5 * facts.elephants + facts.sensitive_ports
    if klass == SENSITIVE:
        return SENSITIVE_WEIGHT * (facts.elephants + facts.heavy_ports + facts.bps / HEAVY_BPS)
    return facts.elephants + facts.heavy_ports


def score(facts: NodeFacts | None, klass: str) -> int:
    if facts is None or not facts.known:
        return UNKNOWN_SCORE
    return max(0, min(MAX_SCORE, round(MAX_SCORE * 2 / (2 + load(facts, klass)))))


class Assumptions:
    """Heavy pods ranked best on a node whose agent has not reported them yet.

    Keyed by pod: a pod asked about again moves, it does not count twice. A node's
    pending pods settle, oldest first, as its published heavy ports rise."""

    def __init__(self, ttl: float = ASSUME_S):
        self.ttl = ttl
        self._lock = threading.Lock()
        self._pods: dict[str, tuple[str, float]] = {}      # pod: (chassis, expiry), oldest first
        self._baseline: dict[str, int] = {}                # chassis: heavy ports last seen

    def _prune(self, now: float) -> None:
        while self._pods:                   # oldest first: all live `ttl`
            pod, (_, expiry) = next(iter(self._pods.items()))
            if expiry > now:
                return
            del self._pods[pod]

    def adjust(self, facts: dict[str, NodeFacts | None], now: float) -> dict:
        """`facts` by node name, each with its node's pending heavy pods counted as
        heavy ports (and the pods its agent has reported since settled)."""
        if self.ttl <= 0:
            return facts
        with self._lock:
            self._prune(now)
            if not self._pods:
                return facts
            pending: dict[str, list[str]] = {}
            for pod, (chassis, _) in self._pods.items():
                pending.setdefault(chassis, []).append(pod)
            out = dict(facts)
            for name, f in facts.items():
                mine = pending.get(f.chassis) if f is not None and f.known else None
                if not mine:
                    continue
                reported = max(0, f.heavy_ports - self._baseline.get(f.chassis, 0))
                for pod in mine[:reported]:
                    del self._pods[pod]
                del mine[:reported]
                self._baseline[f.chassis] = f.heavy_ports
                if mine:
                    out[name] = dataclasses.replace(f, heavy_ports=f.heavy_ports + len(mine))
            return out

    def pending_chassis(self, now: float) -> set[str]:
        """The chassis with heavy pods assumed onto them (`adjust` changes only those)."""
        if self.ttl <= 0:
            return set()
        with self._lock:
            self._prune(now)
            return {c for c, _ in self._pods.values()}

    def forget(self, pod: str) -> None:
        with self._lock:
            self._pods.pop(pod, None)

    def assume(self, pod: str, facts: NodeFacts, now: float) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if not any(c == facts.chassis for c, _ in self._pods.values()):
                self._baseline[facts.chassis] = facts.heavy_ports
            self._pods[pod] = (facts.chassis, now + self.ttl)

    def pending(self) -> int:
        with self._lock:
            return len(self._pods)

    def snapshot(self) -> tuple[dict[str, tuple[str, float]], dict[str, int]]:
        """Copies of ({pod: (chassis, expiry)}, {chassis: heavy ports last seen})."""
        with self._lock:
            return dict(self._pods), dict(self._baseline)


def _rank(names: list[str], facts: dict, klass: str) -> tuple[list[dict], str | None]:
    """(scores per node, the best-ranked known node: the first of equals, or None)."""
    out = [{"Host": n, "Score": score(facts[n], klass)} for n in names]
    known = [p for p in out if facts[p["Host"]] is not None and facts[p["Host"]].known]
    best = max(known, key=lambda p: p["Score"])["Host"] if known else None
    return out, best


def prioritize(pod: PodInfo, names: list[str], view: ClusterView,
               assumed: Assumptions | None = None, now: float = 0.0,
               max_age: float = 0.0) -> list[dict]:
    """Scores per node; a heavy pod is assumed onto the best-ranked known node. The
    definition: the extender answers through `Ranker`, which keeps answers and must
    answer as this does (tests/unit/test_scoring.py compares them)."""
    klass, _ = pod_class(pod, view)
    key = f"{pod.namespace}/{pod.name}"
    facts = {n: view.current(n, now, max_age) for n in names}
    if assumed is not None:
        assumed.forget(key)
        facts = assumed.adjust(facts, now)
    out, best = _rank(names, facts, klass)
    if assumed is not None and klass == HEAVY and best is not None:
        assumed.assume(key, view.current(best, now, max_age), now)
    return out


class Ranked:
    """A prioritize answer: the scores, their JSON, what the log line says of them, and
    the `seen` bounds (of the nodes counted fresh and of those counted stale) within
    which the same node list in the same view scores the same."""

    __slots__ = ("out", "_answer", "top", "at_top", "best", "chassis", "oldest_fresh",
                 "newest_stale")

    def __init__(self, out: list[dict], best: str | None, chassis: frozenset = frozenset(),
                 oldest_fresh: float | None = None, newest_stale: float | None = None):
        self.out, self.best, self.chassis = out, best, chassis
        self._answer: str | None = None
        top = self.top = max((p["Score"] for p in out), default=None)
        self.at_top = sum(p["Score"] == top for p in out)
        self.oldest_fresh, self.newest_stale = oldest_fresh, newest_stale

    def answer(self) -> str:
        """The scores as JSON text, made once; encoded as it is sent. Made when asked
        for, so that a large request's own node lists are gone by then: its peak
        memory is the scores and this text, as before answers were kept."""
        if self._answer is None:
            self._answer = json.dumps(self.out)
        return self._answer

    def valid(self, now: float, max_age: float) -> bool:
        """No node's freshness differs at `now` from when these scores were made:
        every node counted fresh still is (the oldest heartbeat decides), and every
        node counted stale still is (the newest decides)."""
        return (self.oldest_fresh is None or now - self.oldest_fresh <= max_age) and \
            (self.newest_stale is None or now - self.newest_stale > max_age)


class Ranker:
    """`prioritize` with its answers kept per (view, class, node list): a request whose
    answer is kept costs a dict lookup instead of scoring every node.

    A kept answer is dropped when the view changes (the next view is another object),
    is not used once a node it counted fresh has gone stale by time or the other way
    round (`Ranked.valid`), and is bypassed while a heavy pod is assumed onto a chassis
    among its known nodes (that assumed load changes the scores until it settles).
    Thread-safe: the loop and the large-body workers share it."""

    def __init__(self, assumed: Assumptions | None = None, max_age: float = 0.0,
                 entries: int = 256, names: int = 100_000, per_entry: int = 10_000):
        self.assumed, self.max_age = assumed, max_age
        self.entries, self.names, self.per_entry = entries, names, per_entry
        self._lock = threading.Lock()
        self._view: ClusterView | None = None
        self._kept: dict[tuple, Ranked] = {}
        self.held = 0                       # node names in the kept keys
        self.hits = self.misses = 0

    def kept(self) -> list[tuple[str, tuple[str, ...]]]:
        """The keys (class, node names) of the kept answers, oldest first."""
        with self._lock:
            return list(self._kept)

    def rank(self, pod: PodInfo, klass: str, names: list[str], view: ClusterView,
             now: float) -> Ranked:
        """What `prioritize(pod, names, view, assumed, now, max_age)` answers (`klass`:
        the pod's class in `view`), with the same effect on the assumptions."""
        assumed, max_age = self.assumed, self.max_age
        pod_key = f"{pod.namespace}/{pod.name}"
        if assumed is not None:
            assumed.forget(pod_key)
        key = (klass, tuple(names)) if len(names) <= self.per_entry else None
        r = None
        if key is not None:
            with self._lock:
                if self._view is not view:
                    self._view, self._kept, self.held = view, {}, 0
                r = self._kept.get(key)
            if r is not None and not r.valid(now, max_age):
                r = None
            if r is not None and assumed is not None:
                pending = assumed.pending_chassis(now)      # pruned, as `adjust` does
                if pending and not pending.isdisjoint(r.chassis):
                    r = None        # assumed load on one of its nodes: scored below
        if r is not None:
            self.hits += 1
        else:
            self.misses += 1
            r = self._score(names, view, klass, now, key)
        if assumed is not None and klass == HEAVY and r.best is not None:
            assumed.assume(pod_key, view.current(r.best, now, max_age), now)
        return r

    def _score(self, names: list[str], view: ClusterView, klass: str, now: float,
               key: tuple | None) -> Ranked:
        max_age = self.max_age
        facts = {n: view.current(n, now, max_age) for n in names}
        adjusted = self.assumed.adjust(facts, now) if self.assumed is not None else facts
        out, best = _rank(names, adjusted, klass)
        if key is None:             # not kept (a large list): nothing more to hold at once
            del facts, adjusted
            return Ranked(out, best)
        keep = adjusted is facts or all(adjusted[n] is f for n, f in facts.items())
        known = [f for f in facts.values() if f is not None and f.known]
        fresh = [f.seen for f in known if f.seen is not None and max_age > 0]
        stale = [v.seen for n, f in facts.items() if f is not None and not f.known
                 and (v := view.node(n)).known]   # known in the view, unknown here: stale
        r = Ranked(out, best, frozenset(f.chassis for f in known),
                   min(fresh, default=None), max(stale, default=None))
        if keep:                    # no assumed load in it
            with self._lock:
                if self._view is view:
                    self._kept[key] = r
                    self.held += len(key[1])
                    while len(self._kept) > self.entries or self.held > self.names:
                        old = next(iter(self._kept))
                        self.held -= len(old[1])
                        del self._kept[old]
        return r


def filter_nodes(pod: PodInfo, names: list[str], view: ClusterView, filter_heavy: bool,
                 now: float = 0.0, max_age: float = 0.0) -> tuple[list[str], dict[str, str]]:
    """(nodes kept, {node: why it failed}); drops nothing unless `filter_heavy`."""
    klass, _ = pod_class(pod, view)
    if not filter_heavy or klass == HEAVY:
        return names, {}
    failed = {}
    for n in names:
        f = view.current(n, now, max_age)
        if f is not None and f.footprint == HEAVY:
            failed[n] = (f"ovsfoot: node carries heavy traffic ({f.elephants} elephants, "
                         f"{f.heavy_ports} heavy ports) and the pod is {klass}")
    if len(failed) == len(names):
        return names, {}            # never filter out every node
    return [n for n in names if n not in failed], failed
