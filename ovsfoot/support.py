"""Supported versions (README: Supported versions), checked when the agent starts.

Cheap and bounded: the interpreter and python-ovs from memory, OVS and OVN from
`ovs-vswitchd --version` and `ovn-controller --version` where they are on PATH (both
at once, at most `timeout` seconds together; a missing or slow binary is skipped),
the kernel from uname. `check()` raises Unsupported, a ValueError (`ovsfoot: ...`,
exit 1), only for what the agent itself runs on: Python and python-ovs older than
the minimum. OVS or OVN older than tested is logged as an error, and anything newer
than tested, or a kernel the bpf source was not tested on, as a warning; the agent
runs on.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

# (major, minor): the minimum, and what the tests and the lab run (Debian 12)
PYTHON = (3, 11), {(3, 11)}
PYTHON_OVS = (3, 1), {(3, 1)}
OVS = (3, 1), {(3, 1)}
OVN = (23, 3), {(23, 3)}
# The bpf source: bpf_probe_read_kernel needs 5.5; the lab's and tests' VM runs
# Debian 12's 6.1, the kernels matrix (integration/tracer_matrix.py) Debian's 5.10
# (destroy_conntrack), 6.12 and 7.2 (__nf_ct_refresh_acct without the skb) too. The
# program's path for < 5.8 (perf buffer) is untested.
KERNEL_BPF = (5, 5), {(5, 10), (6, 1), (6, 12), (7, 2)}

README = "README: Supported versions"


class Unsupported(ValueError):
    """The agent cannot run here; the message says what it needs."""


@dataclass
class Finding:
    level: int          # logging.ERROR (unsupported) or logging.WARNING (untested)
    text: str
    fatal: bool = False


def _version(text: str) -> tuple[int, int] | None:
    m = re.search(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _fmt(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]:02d}" if v[0] >= 20 else f"{v[0]}.{v[1]}"   # OVN: 23.03


def _judge(name: str, have: tuple[int, int] | None, shown: str, rule, fatal: bool = False,
           needs: str = "") -> Finding | None:
    minimum, tested = rule
    if have is None:
        return None
    tested_s = ", ".join(_fmt(t) for t in sorted(tested))
    if have < minimum:
        return Finding(logging.ERROR, f"unsupported: {name} {shown}; ovsfoot needs "
                       f"{_fmt(minimum)} or later{needs} ({README})", fatal)
    if have not in tested:
        return Finding(logging.WARNING, f"untested: {name} {shown}; tested with {tested_s} "
                       f"({README})")
    return None


def _binaries(names: list[str], timeout: float) -> dict[str, str]:
    """{name: first line of `name --version`} for those on PATH that answer in time."""
    procs = {}
    for n in names:
        try:
            procs[n] = subprocess.Popen([n, "--version"], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                        text=True)
        except OSError:
            log.debug("%s not found: its version is not checked", n)
    out, end = {}, time.monotonic() + timeout
    for n, p in procs.items():
        try:
            text, _ = p.communicate(timeout=max(0.0, end - time.monotonic()))
            if p.returncode == 0 and text.strip():
                out[n] = text.strip().splitlines()[0]
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            log.debug("%s --version did not answer in %.1f s: not checked", n, timeout)
    return out


def findings(source: str = "auto", timeout: float = 2.0) -> list[Finding]:
    """What is unsupported or untested here, for an agent on `source`."""
    found = []
    py = sys.version_info[:2]
    found.append(_judge("Python", py, sys.version.split()[0], PYTHON, fatal=True))
    try:
        import ovs.version
        pyovs = ovs.version.VERSION
    except (ImportError, AttributeError):
        pyovs = None
    if pyovs is None:
        found.append(Finding(logging.ERROR, "unsupported: python-ovs is missing or has no "
                             f"version; ovsfoot needs {_fmt(PYTHON_OVS[0])} or later "
                             f"(pip install ovs, or Debian's python3-openvswitch)", True))
    else:
        found.append(_judge("python-ovs", _version(pyovs), pyovs, PYTHON_OVS, fatal=True))
    bins = _binaries(["ovs-vswitchd", "ovn-controller"], timeout)
    for name, exe, rule in (("Open vSwitch", "ovs-vswitchd", OVS),
                            ("OVN", "ovn-controller", OVN)):
        m = re.search(r"\d+\.\d+[.\d]*", bins.get(exe, "").split(")")[-1])
        if m:       # "ovs-vswitchd (Open vSwitch) 3.1.0", "ovn-controller 23.03.1"
            found.append(_judge(name, _version(m.group(0)), f"{m.group(0)} ({exe} --version)",
                                rule))
    if source in ("auto", "bpf"):
        release = os.uname().release
        fallback = "; --source auto uses ctnetlink" if source == "auto" else ""
        found.append(_judge("kernel for the bpf source", _version(release), release,
                            KERNEL_BPF, needs=f" (bpf_probe_read_kernel){fallback}"))
    return [f for f in found if f is not None]


def check(source: str = "auto", timeout: float = 2.0) -> list[Finding]:
    """Logs each finding; raises Unsupported if Python or python-ovs is too old."""
    found = findings(source, timeout)
    for f in found:
        log.log(f.level, "%s", f.text)
    fatal = [f.text for f in found if f.fatal]
    if fatal:
        raise Unsupported("; ".join(fatal))
    return found
