"""Learned workload classes, and the msgpack state file that keeps them.

Each elephant a workload produces adds one to its score, and so does each rate
window (10 s) its traffic was heavy (sustained throughput); the score halves
every `half_life` seconds. A workload is learned heavy once its score reaches
`heavy_at` and stays heavy until the score falls below half of that, so a
workload that keeps producing elephants is heavy and forgets slowly. Each rate
window its traffic was sensitive (many short flows) adds one to a second score,
which makes it sensitive the same way. Heavy wins over sensitive.

A conntrack entry counts once, whatever the agent's restarts: the learner
remembers the entries it counted (tuple and start time), in the state file
too, until they have ended or cannot exist any more.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
import time
from dataclasses import asdict, dataclass

import msgpack

from ovsfoot.contract import (HEAVY, LIGHT, SENSITIVE, ContractError, printable,
                              validate_workload)
from ovsfoot.events import FlowKey

log = logging.getLogger(__name__)

STATE_VERSION = 3               # 2: also the conntrack entries counted ("flows");
READABLE_VERSIONS = (1, 2, 3)   # 3: the sensitive score
FORGET_BELOW = 0.05
SAME_ENTRY_NS = 10**9           # two sightings of one entry: start times this close
# how long a counted entry is remembered after it was last seen: one seen to end
# (gone from conntrack) cannot come back; one not seen to end (idle, or the agent
# was down) may live as long as conntrack keeps an idle established TCP
# connection (nf_conntrack_tcp_timeout_established: 5 days)
KEEP_ENDED_NS = 3600 * 10**9
KEEP_OPEN_NS = 6 * 86400 * 10**9
MAX_FLOWS = 20_000              # and never more than this many (the oldest go first)


@dataclass(slots=True)
class WorkloadRecord:
    score: float = 0.0
    updated: int = 0            # ns since the epoch of the score's last decay
    heavy: bool = False
    elephants: int = 0          # elephants seen in all
    sensitive_score: float = 0.0
    sensitive: bool = False

    @property
    def klass(self) -> str:
        return HEAVY if self.heavy else SENSITIVE if self.sensitive else LIGHT

    @property
    def class_score(self) -> float:
        """The score behind `klass` (the heavy one unless sensitive)."""
        return self.sensitive_score if self.sensitive and not self.heavy else self.score


@dataclass(slots=True)
class CountedFlow:
    """A conntrack entry that was counted as an elephant."""

    first_seen: int             # its start (ns since the epoch): tells it from a later entry
    last_seen: int              # ns since the epoch
    ended: bool = False         # seen to go away from conntrack

    def same(self, first_seen: int) -> bool:
        return abs(first_seen - self.first_seen) <= SAME_ENTRY_NS


class Learner:
    def __init__(self, heavy_at: float = 3.0, half_life: float = 6 * 3600):
        if heavy_at <= 0 or half_life <= 0:
            raise ValueError("learning needs heavy-at > 0 and half-life > 0")
        self.heavy_at = heavy_at
        self.half_life = half_life
        self.records: dict[str, WorkloadRecord] = {}
        self.counted: dict[FlowKey, CountedFlow] = {}
        self.dirty = False

    def _decay(self, r: WorkloadRecord, now: int) -> None:
        if now > r.updated:
            factor = 0.5 ** ((now - r.updated) / 1e9 / self.half_life)
            r.score *= factor
            r.sensitive_score *= factor
            r.updated = now
        if r.heavy and r.score < self.heavy_at / 2:
            r.heavy = False
            self.dirty = True
        if r.sensitive and r.sensitive_score < self.heavy_at / 2:
            r.sensitive = False
            self.dirty = True

    def traffic(self, workload: str, klass: str, now: int) -> None:
        """Counts one rate window in which `workload`'s traffic was of class `klass`
        (heavy or sensitive; light counts nothing)."""
        if klass not in (HEAVY, SENSITIVE):
            return
        r = self.records.setdefault(workload, WorkloadRecord(updated=now))
        self._decay(r, now)
        if klass == HEAVY:
            r.score += 1
            r.heavy = r.heavy or r.score >= self.heavy_at
        else:
            r.sensitive_score += 1
            r.sensitive = r.sensitive or r.sensitive_score >= self.heavy_at
        self.dirty = True

    def elephant(self, workload: str, now: int, flow: FlowKey | None = None,
                 first_seen: int = 0) -> bool:
        """Counts an elephant of `workload`, unless conntrack entry `flow` that began
        at `first_seen` was counted already (before a restart, or before it went
        idle); True if it counted."""
        if flow is not None:
            c = self.counted.get(flow)
            if c is not None and c.same(first_seen):
                c.last_seen = max(c.last_seen, now)
                c.ended = False
                return False
            self.counted[flow] = CountedFlow(first_seen, now)
            if len(self.counted) > MAX_FLOWS:
                self._forget_flows(now)
        r = self.records.setdefault(workload, WorkloadRecord(updated=now))
        self._decay(r, now)
        r.score += 1
        r.elephants += 1
        r.heavy = r.heavy or r.score >= self.heavy_at
        self.dirty = True
        return True

    def seen(self, flow: FlowKey, first_seen: int, now: int, ended: bool = False) -> None:
        """A source saw conntrack entry `flow` (that began at `first_seen`), or saw it
        go away (`ended`): keeps a counted entry's memory fresh."""
        c = self.counted.get(flow)
        if c is None or not c.same(first_seen):
            return
        c.last_seen = max(c.last_seen, now)
        if ended and not c.ended:
            c.ended = True
            self.dirty = True

    def _forget_flows(self, now: int) -> None:
        """Forgets the counted entries that ended long ago or were not seen for longer
        than conntrack could keep them; then the oldest, down to MAX_FLOWS."""
        n = len(self.counted)
        self.counted = {k: c for k, c in self.counted.items()
                        if now - c.last_seen < (KEEP_ENDED_NS if c.ended else KEEP_OPEN_NS)}
        if len(self.counted) > MAX_FLOWS:
            keep = sorted(self.counted.items(), key=lambda kc: (not kc[1].ended,
                                                                kc[1].last_seen))
            self.counted = dict(keep[len(keep) - MAX_FLOWS:])
        if len(self.counted) != n:
            self.dirty = True

    def klass(self, workload: str) -> str | None:
        """The learned class of `workload`, None if nothing was learned about it."""
        r = self.records.get(workload)
        return r.klass if r else None

    def tick(self, now: int) -> None:
        """Decays every score; forgets workloads whose score has faded away."""
        for name, r in list(self.records.items()):
            self._decay(r, now)
            if max(r.score, r.sensitive_score) < FORGET_BELOW and not (r.heavy or r.sensitive):
                del self.records[name]
                self.dirty = True
        self._forget_flows(now)

    def dump(self) -> dict:
        return {name: asdict(r) for name, r in self.records.items()}

    def dump_flows(self) -> list[list]:
        """The counted conntrack entries, for the state file (see `load`)."""
        return [[k.netns, k.zone, k.proto, k.src, k.dst, k.sport, k.dport,
                 c.first_seen, c.last_seen, c.ended] for k, c in self.counted.items()]

    def load(self, records: dict, flows=()) -> None:
        """Takes what `dump` and `dump_flows` gave, from a state file: whatever does
        not hold up (a number that is not finite, negative or of the wrong type, a
        workload name that is not an identity) is dropped with a warning, record by
        record, and nothing else is lost."""
        now = time.time_ns()
        for name, fields in records.items():
            try:
                name = validate_workload(name)
                if not isinstance(fields, dict):
                    raise ValueError("not a map")
                r = WorkloadRecord(_number(fields, "score", float), _number(fields, "updated"),
                                   fields["heavy"], _number(fields, "elephants"),
                                   _number({"sensitive_score": 0.0, **fields},
                                           "sensitive_score", float),
                                   fields.get("sensitive", False))     # not in versions 1-2
                for flag in ("heavy", "sensitive"):
                    if not isinstance(getattr(r, flag), bool):
                        raise ValueError(f"{flag} is {printable(repr(getattr(r, flag)))}, "
                                         "not true or false")
            except (ContractError, KeyError, TypeError, ValueError) as e:
                log.warning("state: ignoring the record of workload '%s': %s",
                            printable(name), printable(str(e), 160))
                continue
            if r.updated > now + SAME_ENTRY_NS:     # from the future: would never decay
                log.warning("state: workload '%s' was updated in the future: decaying "
                            "it from now", name)
                r.updated = now
            self.records[name] = r
        bad = 0
        for v in flows if isinstance(flows, (list, tuple)) else [flows]:
            try:
                if not isinstance(v, (list, tuple)) or len(v) != 10 \
                        or not isinstance(v[9], bool) \
                        or not all(isinstance(x, str) for x in v[3:5]):
                    raise ValueError
                for i in (0, 1, 2, 5, 6, 7, 8):
                    if type(v[i]) is not int or v[i] < 0:
                        raise ValueError
                self.counted[FlowKey(*v[:7])] = CountedFlow(v[7], v[8], v[9])
            except (TypeError, ValueError):
                bad += 1
        if bad:
            log.warning("state: ignoring %d malformed counted conntrack entries", bad)


def _number(fields: dict, name: str, kind=int):
    """fields[name]: a finite non-negative number (`kind` int: a whole one)."""
    x = fields[name]
    if isinstance(x, bool) or not isinstance(x, (int, float) if kind is float else int) \
            or not math.isfinite(x) or x < 0:
        raise ValueError(f"{name} is {printable(repr(x))}, not a finite non-negative "
                         + ("number" if kind is float else "whole number"))
    return kind(x)


class StateFile:
    """Learned classes on disk: msgpack, replaced atomically; a corrupt file is set aside
    (a regular file only: never a directory or a device)."""

    def __init__(self, path: str):
        self.path = self.check(path)
        self.flows: list = []       # counted conntrack entries, as the last load() read them
        self.version: int | None = None     # of the file the last load() read

    @staticmethod
    def check(path: str) -> str:
        """`path` if it can be a state file, else ValueError saying what to do: not a
        directory (nor a path ending in /), nor anything but a regular file (a FIFO
        would block the agent, a device would be set aside), nor below a non-directory."""
        if path.endswith(os.sep) or os.path.isdir(path):
            raise ValueError(f"state file {path} is a directory: name a file, e.g. "
                             f"{os.path.join(path, 'state.msgpack')}")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except NotADirectoryError:
            st = None           # below a file: the walk up says which
        except OSError as e:
            raise ValueError(f"state file {path} cannot be used: {e.strerror}") from None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise ValueError(f"state file {path} is not a regular file: name a regular "
                             f"file, or a path that does not exist yet")
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.lexists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise ValueError(f"state file {path} cannot be made: {parent} is not a "
                             f"directory; name a file in a directory")
        return path

    def load(self) -> dict:
        self.flows, self.version = [], None
        try:
            with open(self.path, "rb") as f:
                data = msgpack.unpackb(f.read(), raw=False, strict_map_key=False)
            if not isinstance(data, dict) or data.get("version") not in READABLE_VERSIONS \
                    or not isinstance(data.get("workloads"), dict):
                raise ValueError("not an ovsfoot state file of version %s"
                                 % " or ".join(map(str, READABLE_VERSIONS)))
            self.flows = data.get("flows", [])     # version 1 had none
            self.version = data["version"]
            return data["workloads"]
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, msgpack.UnpackException) as e:
            if not os.path.isfile(self.path):   # a directory or device now: leave it be
                log.warning("state file %s cannot be read (%s): left as it is, starting "
                            "with nothing learned", self.path, e)
                return {}
            aside = f"{self.path}.corrupt-{int(time.time())}"
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = "(could not move it)"
            log.warning("state file %s is unreadable (%s): set aside as %s, "
                        "starting with nothing learned", self.path, e, aside)
            return {}

    def save(self, workloads: dict, flows: list | None = None) -> None:
        tmp = f"{self.path}.tmp"
        data = msgpack.packb({"version": STATE_VERSION, "workloads": workloads,
                              "flows": flows or []})
        try:
            d = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(d, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("cannot save state to %s: %s (learned classes kept in memory)",
                      self.path, e)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
