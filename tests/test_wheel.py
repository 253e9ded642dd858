"""A wheel that works: built with `pip wheel --no-deps` from a copy of the source tree,
installed into a fresh virtualenv (no system site packages, not the source tree on
sys.path), it carries the eBPF program as package data, the bpf source's plan finds
it there, it ships no `integration` package, and the product CLI runs without the
test harness.

The fresh virtualenv gets the wheel's own requirements (python-ovs, pyroute2, ...)
by a .pth line to a directory of links to this environment's copies: no network.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROGRAM = "ovsfoot/bpf/ovsfoot_ct.c"


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-2000:])
    return p


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of what setup.py reads (the build writes build/ and
    *.egg-info next to setup.py: not into the shared tree)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("ovsfoot", "bpf"):        # symlinks=True: ovsfoot/bpf/ovsfoot_ct.c stays a link
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=junk)
    assert (src / PROGRAM).is_symlink()
    # --no-build-isolation: this environment's setuptools, not one from the network
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", tmp / "dist", src)
    [whl] = (tmp / "dist").glob("ovsfoot-*.whl")
    return whl


def _requirements(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return [re.match(r"[A-Za-z0-9_.\-]+", line[len("Requires-Dist:"):].strip()).group(0)
            for line in text.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


def _link_distribution(name: str, into: Path) -> None:
    """Links `name`'s top-level modules and metadata from this environment into `into`."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"the wheel requires {name}, which this environment lacks "
                    f"(make venv installs it)")
    site = Path(dist.locate_file(""))          # where its files are, and its metadata
    [meta] = [p for p in site.glob("*-info") if p.is_dir() and
              (m := importlib.metadata.Distribution.at(p)).name == dist.name and
              m.version == dist.version]            # the .dist-info or .egg-info directory
    tops = (dist.read_text("top_level.txt") or "").split()
    if not tops:
        tops = sorted({Path(f).parts[0] for f in dist.files or []
                       if not Path(f).parts[0].endswith((".dist-info", ".egg-info", ".."))})
    for top in [*tops, meta.name]:
        for cand in (site / top, site / f"{top}.py"):
            if cand.exists() and not (into / cand.name).exists():
                (into / cand.name).symlink_to(cand)


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel installed (--no-deps; requirements linked)."""
    tmp = tmp_path_factory.mktemp("venv")
    env = tmp / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", env)   # no --system-site-packages
    run(sys.executable, "-m", "pip", "--python", env / "bin/python", "install", "-q",
        "--no-deps", "--no-index", wheel)
    deps = tmp / "deps"
    deps.mkdir()
    for name in _requirements(wheel):
        _link_distribution(name, deps)
    [site] = (env / "lib").glob("python3*/site-packages")
    (site / "ovsfoot-test-deps.pth").write_text(f"{deps}\n")
    return env


def py(venv: Path, code: str, **env) -> subprocess.CompletedProcess:
    """Runs `code` in the fresh virtualenv, isolated (-I: no PYTHONPATH, no current
    directory on sys.path) from a directory outside the source tree."""
    return subprocess.run([str(venv / "bin/python"), "-I", "-c", code], capture_output=True,
                          text=True, timeout=120, cwd=venv.parent,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env})


def test_wheel_carries_the_bpf_program_as_a_file_and_no_integration(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = z.getinfo(PROGRAM)
        assert (info.external_attr >> 16) & 0o170000 != 0o120000, "a link, not the file"
        assert z.read(PROGRAM) == (REPO / "bpf/ovsfoot_ct.c").read_bytes()
        assert z.read("ovsfoot/bpf/ovsfoot_isolate.c") == \
            (REPO / "bpf/ovsfoot_isolate.c").read_bytes()
        assert "ovsfoot/cluster.ovsschema" in names
        tops = {n.split("/")[0] for n in names}
    assert not any(n.startswith("integration") for n in tops), sorted(tops)
    assert tops == {"ovsfoot", f"{wheel.name.split('-py3')[0]}.dist-info"}, sorted(tops)


PLAN = r"""
import json, os, sys
from ovsfoot.sources import SourceUnavailable
from ovsfoot.sources import bpf

class Bcc:                       # plan asks bcc only whether fentry works
    class BPF:
        @staticmethod
        def support_kfunc():
            return False

out = {"file": str(bpf.program_file()), "prefix": sys.prefix, "bpf": bpf.__file__}
try:
    program, probes, cflags = bpf.plan(Bcc)
    out.update(plan=str(program), probes=probes)
except SourceUnavailable as e:    # a later check (root, headers, kallsyms) on this host
    out["unavailable"] = str(e)
try:
    import integration
    out["integration"] = integration.__file__
except ImportError:
    out["integration"] = None
print(json.dumps(out))
"""


def test_installed_bpf_plan_finds_the_program(venv):
    p = py(venv, PLAN)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    installed = Path(out["prefix"]).resolve()
    found = Path(out["file"])
    assert found.is_relative_to(installed) and found.read_bytes() == \
        (REPO / "bpf/ovsfoot_ct.c").read_bytes(), out
    assert not Path(out["bpf"]).resolve().is_relative_to(REPO), out     # not the tree's
    # the plan got past the program: it either planned, or stopped at the kernel
    assert out.get("plan") == out["file"] or "ovsfoot_ct.c" not in out["unavailable"], out
    assert out["integration"] is None, out


def test_a_missing_program_is_a_clear_reason(venv, tmp_path):
    p = py(venv, PLAN, OVSFOOT_BPF_DIR=str(tmp_path))
    assert p.returncode != 0 and "SourceUnavailable" in p.stderr
    assert f"the eBPF program ovsfoot_ct.c is not in {tmp_path}" in p.stderr


def test_product_cli_runs_without_the_test_harness(venv):
    p = subprocess.run([str(venv / "bin/ovsfoot"), "--help"], capture_output=True, text=True,
                       timeout=60, cwd=venv.parent)
    assert p.returncode == 0 and "agent" in p.stdout, p.stderr
    p = subprocess.run([str(venv / "bin/ovsfoot-cni")], input="", capture_output=True,
                       text=True, timeout=60, cwd=venv.parent, env={"CNI_COMMAND": "VERSION"})
    assert p.returncode == 0 and json.loads(p.stdout)["cniVersion"] == "1.1.0"
    p = py(venv, "import sys; from ovsfoot import cli; cli.parser(); "
                 "print(sorted(m for m in sys.modules if m.split('.')[0] == 'integration'))")
    assert p.returncode == 0 and p.stdout.strip() == "[]", (p.stdout, p.stderr)
    # and no module of the installed package imports it, even lazily (`ovsfoot lab`
    # was one: the lab runs as `python -m integration.lab` from the source tree)
    p = py(venv, "import ovsfoot, os; print(os.path.dirname(ovsfoot.__file__))")
    pkg = Path(p.stdout.strip())
    importers = [str(f.relative_to(pkg)) for f in sorted(pkg.rglob("*.py"))
                 if re.search(r"^\s*(from|import)\s+integration\b", f.read_text(), re.M)]
    assert importers == [], importers


SUPPORT = r"""
import json, logging, sys
if len(sys.argv) > 1:                 # a python-ovs older than supported, first on sys.path
    sys.path.insert(0, sys.argv[1])
from ovsfoot import support
try:
    found = support.check("auto")
    print(json.dumps({"ok": [f.text for f in found]}))
except support.Unsupported as e:
    print(json.dumps({"unsupported": str(e)}))
"""


def test_supported_versions_are_checked_at_start(venv, tmp_path):
    """The installed package's start-up check: this host (Python 3.11, python-ovs 3.1)
    passes, with at most warnings; a python-ovs 2.17 is refused, saying what it needs."""
    p = subprocess.run([str(venv / "bin/python"), "-I", "-c", SUPPORT], capture_output=True,
                       text=True, timeout=60, cwd=venv.parent)
    assert p.returncode == 0 and "ok" in json.loads(p.stdout), (p.stdout, p.stderr)
    assert "unsupported" not in p.stderr, p.stderr
    old = tmp_path / "ovs"
    old.mkdir()
    (old / "__init__.py").write_text("")
    (old / "version.py").write_text('VERSION = "2.17.9"\n')
    p = subprocess.run([str(venv / "bin/python"), "-I", "-c", SUPPORT, str(tmp_path)],
                       capture_output=True, text=True, timeout=60, cwd=venv.parent)
    out = json.loads(p.stdout)
    assert out == {"unsupported": "unsupported: python-ovs 2.17.9; ovsfoot needs 3.1 or later "
                                  "(README: Supported versions)"}, (out, p.stderr)
