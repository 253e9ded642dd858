"""Programs the code runs: a missing one is a clear error at once, and the install
step (integration/install-deps.sh) brings every one a fresh machine lacks."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from integration import programs
from integration.programs import PACKAGES, MissingProgram, require

REPO = Path(__file__).resolve().parents[1]
# the fresh image's Debian packages: shared/'s list beside the repo where there is one
# (the newest), else the copy kept in tests/data
FRESH = next(p for p in (REPO.parent / "shared" / "tools" / "fresh-debian12-packages.txt",
                         REPO / "tests" / "data" / "fresh-debian12-packages.txt") if p.exists())
SCRIPTS = [*sorted((REPO / "vagrant" / "provision").glob("*.sh")),
           *sorted((REPO / "vagrant" / "box").glob("*.sh")),
           REPO / "vagrant" / "experiment.sh", REPO / "vagrant" / "lab.sh"]


def install_step_packages() -> set[str]:
    m = re.search(r'PKGS="([^"]*)"', (REPO / "integration" / "install-deps.sh").read_text())
    assert m, "integration/install-deps.sh has no PKGS=\"...\""
    return set(m.group(1).split())


@pytest.fixture
def path_with_only_ip(tmp_path, monkeypatch):
    """PATH is one directory holding a stand-in `ip` and nothing else."""
    (tmp_path / "ip").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "ip").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("ip") and not shutil.which("ping")


def test_missing_program_names_it_and_its_package(path_with_only_ip):
    require("ip")                                   # there: no error
    with pytest.raises(MissingProgram) as e:
        require("ip", "ping")
    assert str(e.value) == ("ovsfoot: program 'ping' not found: install the Debian package "
                            "iputils-ping (or run `make deps`)")
    with pytest.raises(MissingProgram) as e:
        require("ping", "iperf3", "ip")
    assert "'ping'" in str(e.value) and "'iperf3'" in str(e.value)
    assert "packages iperf3 iputils-ping (or run" in str(e.value) and "'ip'" not in str(e.value)


def test_unknown_program_is_a_programming_error():
    with pytest.raises(ValueError, match="no Debian package known for 'pingg'"):
        require("pingg")


def test_lab_ping_fails_at_once_without_ping(path_with_only_ip, tmp_path):
    """The bug of issue 9: ping missing read as 'not reachable', then a 120 s timeout."""
    from integration.lab_nodes import PROGRAMS, Nodes
    from integration.lab_report import Report
    nodes = Nodes(tmp_path / "work", tmp_path / "run", Report())
    nodes.pods = {"pod3": {"ip": "10.0.0.13"}}
    t = time.monotonic()
    with pytest.raises(MissingProgram, match="iputils-ping"):
        nodes.ping("pod1", "pod3")
    with pytest.raises(MissingProgram, match="iputils-ping"):
        nodes.build()                               # before it changes anything
    assert time.monotonic() - t < 1
    assert "ping" in PROGRAMS


def test_every_checked_program_has_its_package_here():
    """The programs each helper checks are all in PACKAGES (else require() raises
    ValueError), and the shell scripts' `need PROGRAM:PACKAGE` agree with it."""
    from integration import lab_nodes, tracer_matrix
    programs.missing(*lab_nodes.PROGRAMS)
    programs.missing(*tracer_matrix.PROGRAMS)
    for f in (REPO / "integration", REPO / "bench", REPO / "tests"):
        for py in set(f.glob("*.py")) - {Path(__file__)}:
            for args in re.findall(r"\brequire\(([^)*]*)\)", py.read_text()):
                programs.missing(*re.findall(r'"([^"]+)"', args))
    pairs = []
    for script in SCRIPTS:
        text = script.read_text().replace("\\\n", " ")        # join continued lines
        for args in re.findall(r"\bneed(?:_for_mode)?\b([^;\n]*)", text):
            pairs += [(script.name, *w.split(":")) for w in args.split()
                      if re.fullmatch(r"[\w.+-]+:[\w.+-]+", w)]
    assert len(pairs) > 10, pairs
    wrong = [(s, p, pkg, PACKAGES.get(p)) for s, p, pkg in pairs if PACKAGES.get(p) != pkg]
    assert not wrong, f"need PROGRAM:PACKAGE that integration/programs.py maps otherwise: {wrong}"


def test_packages_are_those_that_ship_the_programs():
    """Where a program is installed on this machine, dpkg says its package is the one
    PACKAGES names (so the error message sends people to the right package)."""
    owner = {}
    for lst in Path("/var/lib/dpkg/info").glob("*.list"):
        pkg = lst.name[:-5].split(":")[0]
        for line in lst.read_text(errors="replace").splitlines():
            owner[line.removeprefix("/usr")] = pkg     # /usr-merged: /bin/ip is /usr/bin/ip
    checked, wrong = 0, []
    for prog, pkg in PACKAGES.items():
        exe = shutil.which(prog, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if not exe:
            continue
        found = owner.get(exe.removeprefix("/usr")) or owner.get(
            os.path.realpath(exe).removeprefix("/usr"))
        checked += 1
        if found != pkg:
            wrong.append((prog, pkg, found))
    assert checked > 20
    assert not wrong, f"(program, PACKAGES says, dpkg says): {wrong}"


def test_install_step_brings_every_program():
    """Every program the code runs comes from a fresh machine or from PKGS."""
    pkgs = install_step_packages()
    fresh = set(FRESH.read_text().split())
    missing = {p: pkg for p, pkg in PACKAGES.items() if pkg not in pkgs | fresh}
    assert not missing, ("programs whose package is neither on a fresh machine nor in "
                         f"integration/install-deps.sh PKGS: {missing}")
    assert "iputils-ping" in pkgs
