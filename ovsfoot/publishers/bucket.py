"""A token bucket: the write budget of a publisher.

`burst` transactions may go at once, then `rate` per second: over any window
of T seconds at most burst + rate * T. Changes that come a few ms apart thus
commit together or back to back, while a flood of changes is held to `rate`.
"""

from __future__ import annotations

import time
from typing import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if not rate > 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, not {rate}, {burst}")
        self.rate, self.burst, self.clock = rate, burst, clock
        self._tokens = float(burst)
        self._at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self) -> bool:
        """Spends one token; False (and nothing spent) when there is none."""
        self._refill()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def wait_s(self) -> float:
        """Seconds until a token is there (0: now)."""
        self._refill()
        return max(0.0, (1 - self._tokens) / self.rate)

    def fill(self) -> None:
        """A full bucket (for a last write that must not wait, e.g. at exit)."""
        self._tokens, self._at = float(self.burst), self.clock()
