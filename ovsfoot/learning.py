"""Learned workload classes, and the msgpack state file that keeps them.

Each elephant a workload produces adds one to its score; the score halves
every `half_life` seconds. A workload is learned heavy once its score reaches
`heavy_at` and stays heavy until the score falls below half of that, so a
workload that keeps producing elephants is heavy and forgets slowly.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import asdict, dataclass

import msgpack

log = logging.getLogger(__name__)

STATE_VERSION = 1
FORGET_BELOW = 0.05


@dataclass(slots=True)
class WorkloadRecord:
    score: float = 0.0
    updated: int = 0            # ns since the epoch of the score's last decay
    heavy: bool = False
    elephants: int = 0          # elephants seen in all

    @property
    def klass(self) -> str:
        return "heavy" if self.heavy else "light"


class Learner:
    def __init__(self, heavy_at: float = 3.0, half_life: float = 6 * 3600):
        if heavy_at <= 0 or half_life <= 0:
            raise ValueError("learning needs heavy-at > 0 and half-life > 0")
        self.heavy_at = heavy_at
        self.half_life = half_life
        self.records: dict[str, WorkloadRecord] = {}
        self.dirty = False

    def _decay(self, r: WorkloadRecord, now: int) -> None:
        if now > r.updated:
            r.score *= 0.5 ** ((now - r.updated) / 1e9 / self.half_life)
            r.updated = now
        if r.heavy and r.score < self.heavy_at / 2:
            r.heavy = False
            self.dirty = True

    def elephant(self, workload: str, now: int) -> None:
        r = self.records.setdefault(workload, WorkloadRecord(updated=now))
        self._decay(r, now)
        r.score += 1
        r.elephants += 1
        r.heavy = r.heavy or r.score >= self.heavy_at
        self.dirty = True

    def klass(self, workload: str) -> str | None:
        """The learned class of `workload`, None if nothing was learned about it."""
        r = self.records.get(workload)
        return r.klass if r else None

    def tick(self, now: int) -> None:
        """Decays every score; forgets workloads whose score has faded away."""
        for name, r in list(self.records.items()):
            self._decay(r, now)
            if r.score < FORGET_BELOW and not r.heavy:
                del self.records[name]
                self.dirty = True

    def dump(self) -> dict:
        return {name: asdict(r) for name, r in self.records.items()}

    def load(self, records: dict) -> None:
        for name, fields in records.items():
            try:
                self.records[str(name)] = WorkloadRecord(
                    float(fields["score"]), int(fields["updated"]),
                    bool(fields["heavy"]), int(fields["elephants"]))
            except (KeyError, TypeError, ValueError):
                log.warning("state: ignoring malformed record for workload %r", name)


class StateFile:
    """Learned classes on disk: msgpack, replaced atomically; a corrupt file is set aside
    (a regular file only: never a directory or a device)."""

    def __init__(self, path: str):
        self.path = self.check(path)

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
        try:
            with open(self.path, "rb") as f:
                data = msgpack.unpackb(f.read(), raw=False, strict_map_key=False)
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION \
                    or not isinstance(data.get("workloads"), dict):
                raise ValueError("not an ovsfoot state file of version %d" % STATE_VERSION)
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

    def save(self, workloads: dict) -> None:
        tmp = f"{self.path}.tmp"
        data = msgpack.packb({"version": STATE_VERSION, "workloads": workloads})
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
            try:
                os.unlink(tmp)
            except OSError:
                pass
