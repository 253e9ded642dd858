"""Run scripts in a virtme-ng VM on a Debian kernel (bookworm's 6.1 unless told).

The host kernel here cannot trace conntrack and has no openvswitch module, so
the real datapath runs in a VM that shares this machine's root filesystem
read-only. virtme-ng overlays /etc, /usr, /var, /tmp, /home and /run with
writable layers private to the VM; the work directory is the only place whose
writes reach the host. One boot runs one whole scenario script; results come
back as files in the work directory, never through vng's exit status (which
TCG does not deliver).

    python -m integration.vm --check      # install the kernel, boot, probe the VM
    python -m integration.vm --suite trixie --check
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from integration.debian_kernel import CACHE, DEFAULT_SUITE, SUITES, KernelInfo, ensure_kernel
from integration.programs import require

REPO = Path(__file__).resolve().parents[1]
RC_FILE = "vm-rc"          # the guest writes its script's exit status here
OUTPUT_FILE = "vm-output.log"  # ... and the script's stdout and stderr here


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


def kvm_works(kernel: KernelInfo) -> bool:
    """Can this machine boot the VM with KVM? Probed once per host boot, then cached.

    OVSFOOT_VM_ACCEL=kvm or =tcg decides without probing. Nested KVM often
    fails or hangs here, so the probe gets a short timeout.
    """
    accel = os.environ.get("OVSFOOT_VM_ACCEL", "auto")
    if accel != "auto" or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return accel == "kvm"
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    cached = CACHE / f"kvm-{boot_id}"   # nested KVM works or not for every kernel
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
        " && for d in /run/headers/*; do mkdir -p /usr/src/${d##*/}"
        " && mount --bind $d /usr/src/${d##*/}; done\n"
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
    ap.add_argument("--suite", choices=SUITES, default=DEFAULT_SUITE,
                    help="the Debian suite whose kernel to boot (default: %(default)s)")
    ap.add_argument("--workdir", help="shared directory (default: a new temporary one)")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("command", nargs="?", help="shell command to run in the VM")
    a = ap.parse_args(argv)
    if not a.check and not a.command:
        ap.error("give --check or a command")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="ovsfoot-vm-"))
    k = ensure_kernel(a.suite)
    progress(f"kernel {k.version}: {k.vmlinuz}, headers {k.headers_tar}")
    r = run_in_vm(CHECK_SCRIPT if a.check else a.command, work, a.timeout, kernel=k)
    output = r.output_path.read_text() if r.output_path.exists() else ""
    print(output, end="")
    if not r.ok:
        print(f"VM run failed (exit status {r.rc}); console tail:\n{r.log[-2000:]}",
              file=sys.stderr)
    return 0 if r.ok and (not a.check or "check-ok" in output) else 1


if __name__ == "__main__":
    sys.exit(main())
