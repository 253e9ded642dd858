"""The eBPF tracer for real, in a VM on Debian kernels (integration/tracer_matrix.py).

One VM boot per kernel (module-scoped) runs the scenario; each check of the
matrix is a test. By default ("rotate") on the kernel the lab uses (bookworm's
6.1) and one of the other three, by day (every kernel within three days, for one
boot more); OVSFOOT_KERNELS chooses otherwise: "all" runs the four, or a list of
suites (e.g. "bookworm" alone, "bullseye sid"). `make kernels` runs all four and
prints the matrix.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from integration.debian_kernel import DEFAULT_SUITE, SUITES, ensure_kernel  # noqa: E402
from integration.tracer_matrix import CHECKS, run_scenario  # noqa: E402
from ovsfoot.events import Thresholds  # noqa: E402
from ovsfoot.sources import SourceUnavailable  # noqa: E402


def kernels() -> list[str]:
    chosen = (os.environ.get("OVSFOOT_KERNELS") or "rotate").split()
    if chosen == ["all"]:
        return list(SUITES)
    if chosen == ["rotate"]:
        others = [s for s in SUITES if s != DEFAULT_SUITE]
        return [DEFAULT_SUITE, others[time.gmtime().tm_yday % len(others)]]
    if unknown := set(chosen) - set(SUITES):
        raise ValueError(f"OVSFOOT_KERNELS: unknown suite(s) {sorted(unknown)}; "
                         f"choose from {', '.join(SUITES)}, 'rotate' or 'all'")
    return chosen


@pytest.fixture(scope="module", params=kernels())
def run(request, tmp_path_factory):
    """The scenario's run on one kernel."""
    return run_scenario(ensure_kernel(request.param), tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("check", CHECKS)
def test_tracer(run, check):
    CHECKS[check](run)


def test_unavailable_says_why():
    """Where the tracer cannot run, BpfSource says why instead of crashing."""
    from ovsfoot.sources.bpf import BpfSource
    with pytest.raises(SourceUnavailable, match="not found"):
        BpfSource(Thresholds(), netns="ovsfoot-no-such-namespace")
    if not os.path.exists("/sys/bus/event_source/devices/kprobe"):   # this host's kernel
        with pytest.raises(SourceUnavailable) as e:
            BpfSource(Thresholds())
        assert str(e.value)
