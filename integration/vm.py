"""Run scripts in a virtme-ng VM on Debian's bookworm 6.1 kernel.

The host kernel here cannot trace conntrack and has no openvswitch module, so
the real datapath runs in a VM that shares this machine's root filesystem
read-only. virtme-ng overlays /etc, /usr, /var, /tmp, /home and /run with
writable layers private to the VM; the work directory is the only place whose
writes reach the host. One boot runs one whole scenario script; results come
back as files in the work directory, never through vng's exit status (which
TCG does not deliver).

    python -m integration.vm --check      # install the kernel, boot, probe the VM
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from integration.programs import require

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("OVSFOOT_CACHE", "/var/cache/ovsfoot"))
RC_FILE = "vm-rc"          # the guest writes its script's exit status here
OUTPUT_FILE = "vm-output.log"  # ... and the script's stdout and stderr here


@dataclass(frozen=True)
class KernelInfo:
    version: str     # e.g. "6.1.0-56-amd64", what `uname -r` says in the guest
    vmlinuz: Path
    modules: Path
    headers: Path
    headers_tar: Path  # the headers (and their -common part) in one tar, for the guest's tmpfs


@dataclass(frozen=True)
class VmResult:
    ok: bool             # the script ran in the guest and exited 0
    rc: int | None       # its exit status, None if it never finished
    output_path: Path    # its stdout and stderr
    log: str             # the tail of the VM console (boot problems show here)
    seconds: float


def progress(msg: str) -> None:
    print(f"[vm] {msg}", file=sys.stderr, flush=True)


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def kernel_version() -> str:
    """The current ABI of bookworm's 6.1 kernel, e.g. "6.1.0-56-amd64", from apt."""
    pat = re.compile(r"Depends: linux-image-(6\.1\.\d+-\d+-amd64)\b")
    for attempt in range(2):
        out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"],
                             text=True, capture_output=True).stdout
        if m := pat.search(out):
            return m.group(1)
        if attempt == 0:
            progress("apt knows no bookworm 6.1 kernel; running apt-get update")
            _run("apt-get", "update", "-qq")
    raise RuntimeError("apt-cache depends linux-image-amd64 names no 6.1 kernel "
                       "(is Debian bookworm in the apt sources?)")


def ensure_kernel() -> KernelInfo:
    """Install bookworm's 6.1 kernel, its modules and headers for the VM; idempotent.

    The image package's postinst fails on these machines, so the package is
    unpacked and copied in by hand rather than installed with dpkg -i.
    """
    require("apt-cache", "apt-get", "dpkg-deb", "depmod", "tar")
    ver = kernel_version()
    k = KernelInfo(ver, Path(f"/boot/vmlinuz-{ver}"), Path(f"/lib/modules/{ver}"),
                   Path(f"/usr/src/linux-headers-{ver}"), CACHE / f"headers-{ver}.tar")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "kernel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (k.vmlinuz.exists() and (k.modules / "modules.dep").exists()):
            _install_image(ver, CACHE / "kernel")
        if not (k.headers / "Makefile").exists():
            progress(f"installing linux-headers-{ver}")
            _run("apt-get", "install", "-y", "-qq", "--no-install-recommends",
                 f"linux-headers-{ver}", env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            k.headers_tar.unlink(missing_ok=True)
        if not k.headers_tar.exists():
            common = Path(os.path.realpath(k.modules / "source"))
            _run("tar", "-C", "/usr/src", "-cf", f"{k.headers_tar}.tmp", k.headers.name,
                 common.name)
            os.replace(f"{k.headers_tar}.tmp", k.headers_tar)
    return k


def _install_image(ver: str, cache: Path) -> None:
    pkg = f"linux-image-{ver}"
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{pkg}_*.deb"))
    if not debs:
        progress(f"downloading {pkg} (about 70 MB)")
        _run("apt-get", "download", pkg, cwd=cache)
        debs = sorted(cache.glob(f"{pkg}_*.deb"))
    progress(f"unpacking {debs[-1].name}")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        _run("dpkg-deb", "-x", str(debs[-1]), tmp)
        root = Path(tmp)
        mods = next(p for p in (root / "lib/modules", root / "usr/lib/modules") if p.exists())
        dst = Path("/lib/modules") / ver
        shutil.rmtree(dst / "kernel", ignore_errors=True)
        shutil.copytree(mods / ver, dst, symlinks=True, dirs_exist_ok=True)
        for f in (root / "boot").iterdir():
            shutil.copy2(f, Path("/boot") / f.name)
    progress(f"depmod {ver}")
    _run("depmod", ver)


def kvm_works(kernel: KernelInfo) -> bool:
    """Can this machine boot the VM with KVM? Probed once per host boot, then cached.

    OVSFOOT_VM_ACCEL=kvm or =tcg decides without probing. Nested KVM often
    fails or hangs here, so the probe gets a short timeout.
    """
    accel = os.environ.get("OVSFOOT_VM_ACCEL", "auto")
    if accel != "auto" or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return accel == "kvm"
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    cached = CACHE / f"kvm-{kernel.version}-{boot_id}"
    if not cached.exists():
        progress("probing KVM (once per host boot)")
        with tempfile.TemporaryDirectory(prefix="ovsfoot-kvm-") as tmp:
            ok = _boot("true", Path(tmp), 30, kvm=True, kernel=kernel).ok
        CACHE.mkdir(parents=True, exist_ok=True)
        cached.write_text("yes" if ok else "no")
        progress(f"KVM {'works' if ok else 'does not work here; using TCG (software emulation)'}")
    return cached.read_text() == "yes"


def run_in_vm(script: str | Path, workdir: str | Path, timeout: float = 900, *,
              env: dict[str, str] | None = None, memory: str = "4G", cpus: int = 2,
              kernel: KernelInfo | None = None) -> VmResult:
    """Boot the VM, run `script` in it as root, and collect the result.

    `script` is a path to a script (run with bash unless executable) or a
    shell command line. `workdir` is shared read-write with the guest at the
    same path (over 9p: no sockets there; use the VM's /tmp) and is the
    script's working directory; its output goes to workdir/vm-output.log.
    `env` is exported to the script, with OVSFOOT_IN_VM=1. One VM runs at a
    time on this machine: a second caller waits. The VM is killed after
    `timeout` seconds of running.
    """
    kernel = kernel or ensure_kernel()
    return _boot(script, Path(workdir), timeout, kvm=kvm_works(kernel), kernel=kernel,
                 env=env, memory=memory, cpus=cpus)


def _boot(script: str | Path, workdir: Path, timeout: float, *, kvm: bool,
          kernel: KernelInfo, env: dict[str, str] | None = None, memory: str = "4G",
          cpus: int = 2) -> VmResult:
    require("qemu-system-x86_64", "busybox", "bash")    # vng runs qemu; its initramfs, busybox
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for f in (RC_FILE, OUTPUT_FILE):
        (work / f).unlink(missing_ok=True)
    if isinstance(script, Path):
        cmd, what = shlex.quote(str(script.resolve())), script.name
        if not os.access(script, os.X_OK):
            cmd = f"bash {cmd}"
    else:
        (work / "vm-script.sh").write_text(script)
        cmd, what = "bash vm-script.sh", script.strip().splitlines()[0][:60]
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in (env or {}).items())
    headers = work / ".vm-headers.tar"
    headers.unlink(missing_ok=True)
    try:
        os.link(kernel.headers_tar, headers)
    except OSError:
        shutil.copy(kernel.headers_tar, headers)
    wrapper = work / "vm-run.sh"
    wrapper.write_text(
        "#!/bin/bash\n"
        f"cd {shlex.quote(str(work))} || exit 1\n"
        f"export PYTHONDONTWRITEBYTECODE=1 OVSFOOT_IN_VM=1\n{exports}"
        # bcc's clang reads ~1000 kernel headers: from tmpfs, not 9p (30 s less under TCG)
        "mkdir -p /run/headers && tar -C /run/headers -xf .vm-headers.tar && rm .vm-headers.tar"
        " && for d in /run/headers/*; do mount --bind $d /usr/src/${d##*/}; done\n"
        f"( echo \"vm: kernel $(uname -r), $(nproc) cpus\"; {cmd} ) "
        f">{OUTPUT_FILE} 2>&1 </dev/null\n"
        f"echo $? >{RC_FILE}.tmp && mv {RC_FILE}.tmp {RC_FILE}\n"
        "sync\n")
    wrapper.chmod(0o755)
    argv = [str(_vng()), *([] if kvm else ["--disable-kvm"]), "-r", str(kernel.vmlinuz),
            "--memory", memory, "--cpus", str(cpus), "--rwdir", str(work),
            "--cwd", str(work), "--exec", str(wrapper)]
    console = work / "vm-console.log"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "vm.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("waiting for another ovsfoot VM to finish "
                     "(2 VMs would halve each one's speed)")
            fcntl.flock(lock, fcntl.LOCK_EX)
        r = _spawn(argv, work, console, timeout, f"{kernel.version} "
                   f"({'KVM' if kvm else 'TCG'}) for {what!r}")
    headers.unlink(missing_ok=True)
    return r


def _spawn(argv: list[str], work: Path, console: Path, timeout: float, what: str) -> VmResult:
    progress(f"booting {what}; output in {work / OUTPUT_FILE}")
    t0 = time.monotonic()
    with open(console, "w") as out:
        path = f"{argv[0].rsplit('/', 1)[0]}:{os.environ.get('PATH', '')}"  # for virtme-run
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True, env={**os.environ, "PATH": path})
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            progress(f"VM timed out after {timeout:.0f} s; killing it")
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    seconds = time.monotonic() - t0
    rc_text = (work / RC_FILE).read_text().strip() if (work / RC_FILE).exists() else ""
    rc = int(rc_text) if rc_text.lstrip("-").isdigit() else None
    log = console.read_text(errors="replace")[-4000:]
    progress(f"VM done in {seconds:.0f} s, script exit status {rc}")
    return VmResult(rc == 0, rc, work / OUTPUT_FILE, log, seconds)


def _vng() -> Path:
    for p in (Path(sys.executable).parent / "vng", REPO / ".venv/bin/vng"):
        if p.exists():
            return p
    if found := shutil.which("vng"):
        return Path(found)
    raise RuntimeError("vng not found: pip install virtme-ng (make venv does)")


CHECK_SCRIPT = r"""
set -e
modprobe openvswitch
modprobe nf_conntrack
test -d /lib/modules/$(uname -r)/build/include || { echo "no kernel headers"; exit 1; }
test -r /sys/kernel/btf/vmlinux && echo "btf: yes"
python3 -c 'import bcc; print("bcc: kfunc support", bcc.BPF.support_kfunc())'
echo check-ok
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m integration.vm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="install the kernel if needed, boot it and probe openvswitch/bcc")
    ap.add_argument("--workdir", help="shared directory (default: a new temporary one)")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("command", nargs="?", help="shell command to run in the VM")
    a = ap.parse_args(argv)
    if not a.check and not a.command:
        ap.error("give --check or a command")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="ovsfoot-vm-"))
    k = ensure_kernel()
    progress(f"kernel {k.version}: {k.vmlinuz}, headers {k.headers}")
    r = run_in_vm(CHECK_SCRIPT if a.check else a.command, work, a.timeout, kernel=k)
    output = r.output_path.read_text() if r.output_path.exists() else ""
    print(output, end="")
    if not r.ok:
        print(f"VM run failed (exit status {r.rc}); console tail:\n{r.log[-2000:]}",
              file=sys.stderr)
    return 0 if r.ok and (not a.check or "check-ok" in output) else 1


if __name__ == "__main__":
    sys.exit(main())
