"""The eBPF tracer for real, in a VM on Debian kernels (integration/tracer_matrix.py).

One VM boot per kernel (module-scoped) runs the scenario; each check of the
matrix is a test. By default the kernel the lab uses (bookworm's 6.1) and one
of the other three, rotating by day, so that CI meets every kernel within three
days at the cost of one boot more; OVSFOOT_KERNELS="all" or a list of suites
(e.g. "bullseye sid") chooses. `make kernels` runs all four and prints the matrix.
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
    chosen = os.environ.get("OVSFOOT_KERNELS", "").split()
    if chosen == ["all"]:
        return list(SUITES)
    if chosen:
        if unknown := set(chosen) - set(SUITES):
            raise ValueError(f"OVSFOOT_KERNELS: unknown suite(s) {sorted(unknown)}; "
                             f"choose from {', '.join(SUITES)} or 'all'")
        return chosen
    others = [s for s in SUITES if s != DEFAULT_SUITE]
    return [DEFAULT_SUITE, others[time.gmtime().tm_yday % len(others)]]


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
