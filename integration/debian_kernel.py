"""Debian's kernels, modules and headers from the archive, for the VM.

Each suite's newest amd64 kernel is resolved from the archive index (a private
apt configuration under the cache, so the machine's own apt sources stay as
they are), downloaded and unpacked with dpkg-deb -x (the image's postinst fails
on these machines): the modules go to /lib/modules/<version> and the image to
/boot (the VM shares this machine's root filesystem), the headers into one tar
that the guest unpacks into its tmpfs.

    python -m integration.debian_kernel trixie     # fetch and unpack trixie's kernel
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from integration.programs import require

CACHE = Path(os.environ.get("OVSFOOT_CACHE", "/var/cache/ovsfoot"))
ARCHIVE = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# suite -> the apt sources its kernel comes from (security updates first-class)
SUITES = {
    "bullseye": [(ARCHIVE, "bullseye"), (SECURITY, "bullseye-security")],
    "bookworm": [(ARCHIVE, "bookworm"), (SECURITY, "bookworm-security")],
    "trixie": [(ARCHIVE, "trixie"), (SECURITY, "trixie-security")],
    "sid": [(ARCHIVE, "sid")],
}
DEFAULT_SUITE = "bookworm"
INDEX_MAX_AGE = 24 * 3600    # re-read the archive index after a day


@dataclass(frozen=True)
class KernelInfo:
    suite: str
    version: str     # e.g. "6.1.0-56-amd64", what `uname -r` says in the guest
    vmlinuz: Path
    modules: Path
    headers_tar: Path  # the headers (and their -common part) in one tar, for the guest's tmpfs


def progress(msg: str) -> None:
    print(f"[kernel] {msg}", file=sys.stderr, flush=True)


class Apt:
    """apt-get and apt-cache on a private configuration for one suite."""

    def __init__(self, suite: str):
        if suite not in SUITES:
            raise ValueError(f"unknown Debian suite {suite!r}: one of {', '.join(SUITES)}")
        self.suite, self.dir = suite, CACHE / "apt" / suite
        self.options = [f"-oDir::Etc::SourceList={self.dir / 'sources.list'}",
                        "-oDir::Etc::SourceParts=/dev/null",
                        f"-oDir::State::Lists={self.dir / 'lists'}",
                        f"-oDir::State::status={self.dir / 'status'}",
                        f"-oDir::Cache={self.dir / 'cache'}",
                        "-oAPT::Get::List-Cleanup=0"]

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        p = subprocess.run([tool, *self.options, *args], text=True, capture_output=True, cwd=cwd)
        if p.returncode:
            raise RuntimeError(f"{tool} {' '.join(args)} for {self.suite} failed "
                               f"(is {ARCHIVE} reachable?):\n{p.stderr[-2000:]}")
        return p.stdout

    def update(self) -> None:
        stamp = self.dir / "updated"
        if stamp.exists() and time.time() - stamp.stat().st_mtime < INDEX_MAX_AGE:
            return
        (self.dir / "lists/partial").mkdir(parents=True, exist_ok=True)
        (self.dir / "status").touch()
        (self.dir / "sources.list").write_text("".join(
            f"deb [signed-by={KEYRING}] {url} {suite} main\n" for url, suite in SUITES[self.suite]))
        progress(f"reading {self.suite}'s archive index")
        self.run("apt-get", "update", "-qq")
        stamp.touch()

    def depends(self, pkg: str) -> list[str]:
        out = self.run("apt-cache", "depends", "--no-recommends", "--no-suggests",
                       "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", pkg)
        return re.findall(r"^\s*\|?(?:Pre)?Depends: ([^\s<>]+)$", out, re.M)


def kernel_version(apt: Apt) -> str:
    """The suite's current kernel ABI, e.g. "6.12.117+deb13-amd64", from the archive index."""
    apt.update()
    for dep in apt.depends("linux-image-amd64"):
        if m := re.fullmatch(r"linux-image-(.+-amd64)", dep):
            return m.group(1)
    raise RuntimeError(f"linux-image-amd64 in {apt.suite} depends on no linux-image-*-amd64")


def packages(apt: Apt, version: str) -> list[str]:
    """The image and headers packages of `version` and the parts they depend on that
    belong to this ABI (the sid image is split into -binary and -modules; the
    headers need their -common part)."""
    abi = version.removesuffix("-amd64")
    todo, found = [f"linux-image-{version}", f"linux-headers-{version}"], []
    while todo:
        pkg = todo.pop()
        if pkg in found:
            continue
        found.append(pkg)
        todo += [d for d in apt.depends(pkg) if abi in d and not d.endswith("-unsigned")]
    return found


def ensure_kernel(suite: str = DEFAULT_SUITE) -> KernelInfo:
    """Fetch and unpack the suite's kernel, modules and headers for the VM; idempotent."""
    require("apt-get", "apt-cache", "dpkg-deb", "depmod", "tar")
    apt = Apt(suite)
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "kernel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ver = kernel_version(apt)
        k = KernelInfo(suite, ver, Path(f"/boot/vmlinuz-{ver}"), Path(f"/lib/modules/{ver}"),
                       CACHE / f"headers-{ver}.tar")
        if not (k.vmlinuz.exists() and (k.modules / "modules.dep").exists()
                and k.headers_tar.exists()):
            _install(apt, k)
    return k


def _install(apt: Apt, k: KernelInfo) -> None:
    debs = CACHE / "debs" / k.version
    debs.mkdir(parents=True, exist_ok=True)
    pkgs = packages(apt, k.version)
    if missing := [p for p in pkgs if not list(debs.glob(f"{p}_*.deb"))]:
        progress(f"downloading {', '.join(missing)} from {apt.suite} (about 100 MB)")
        apt.run("apt-get", "download", "-qq", *missing, cwd=debs)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        root = Path(tmp)
        for deb in sorted(debs.glob("*.deb")):
            progress(f"unpacking {deb.name}")
            subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        shutil.rmtree(k.modules, ignore_errors=True)
        for mods in (root / "lib/modules", root / "usr/lib/modules"):   # before, after usrmerge
            if (mods / k.version).exists():
                shutil.copytree(mods / k.version, k.modules, symlinks=True, dirs_exist_ok=True)
        for f in (root / "boot").glob("*"):
            shutil.copy2(f, Path("/boot") / f.name)
        if not k.vmlinuz.exists():      # sid keeps it beside the modules only
            shutil.copy2(k.modules / "vmlinuz", k.vmlinuz)
        src = root / "usr/src"
        subprocess.run(["tar", "-C", str(src), "-cf", f"{k.headers_tar}.tmp",
                        *sorted(p.name for p in src.iterdir())], check=True)
        os.replace(f"{k.headers_tar}.tmp", k.headers_tar)
    progress(f"depmod {k.version}")
    subprocess.run(["depmod", k.version], check=True)


if __name__ == "__main__":
    for s in sys.argv[1:] or [DEFAULT_SUITE]:
        print(ensure_kernel(s))
