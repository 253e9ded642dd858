"""A daemon thread with a stop event: what the scheduler's cluster view and the
lab's samplers run in."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Self


class Background(ABC):
    """Runs `self.loop()` in a daemon thread named `name` from `start()`; `loop`
    returns once `self.stopping` is set, which `stop()` does."""

    def __init__(self, name: str):
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.loop, name=name, daemon=True)

    @abstractmethod
    def loop(self) -> None:
        ...

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Asks the loop to return, and waits for it (up to `timeout` seconds)."""
        self.stopping.set()
        self._thread.join(timeout)
