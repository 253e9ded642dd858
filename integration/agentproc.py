"""Runs `ovsfoot agent` as a real process next to a sandboxed OVS, and talks to it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from integration.sandbox import Ovs, kill, text_or_empty, wait_for, wait_or_kill


class AgentProcess:
    def __init__(self, ovs: Ovs, *args: str, state: Path | None = None,
                 name: str = "ovsfoot", bridge: str | None = None):
        self.ovs = ovs
        self.bridge = bridge or ovs.bridge
        self.args = list(args)
        self.state = state or ovs.dir / "ovsfoot.state"
        self.log = ovs.dir / f"{name}.log"
        self.pidfile = ovs.dir / "ovsfoot.pid"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "AgentProcess":
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> None:
        cmd = [sys.executable, "-m", "ovsfoot", "agent", f"--db={self.ovs.remote}",
               f"--bridge={self.bridge}", f"--state={self.state}",
               f"--pidfile={self.pidfile}", f"--log-file={self.log}", "-vconsole:off",
               *self.args]
        self.proc = subprocess.Popen(cmd, env=self.ovs.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 60) -> "AgentProcess":
        wait_for(lambda: self.proc.poll() is not None or self.control_socket_exists(),
                 timeout=timeout, what="ovsfoot agent's control socket")
        if self.proc.poll() is not None:
            raise RuntimeError(f"ovsfoot agent exited ({self.proc.returncode}): "
                               f"{self.log_text()[-2000:]}")
        return self

    def control_socket_exists(self) -> bool:
        return self.proc and (self.ovs.dir / f"ovsfoot.{self.proc.pid}.ctl").exists()

    def appctl(self, *args: str, check=True) -> str:
        return self.ovs.appctl("ovsfoot", *args, check=check)

    def json(self, cmd: str):
        return json.loads(self.appctl(cmd, "json"))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """Asks the agent to exit (it withdraws its keys); kills it if it will not."""
        if self.alive():
            self.appctl("exit", check=False)
            wait_or_kill(self.proc, 15)
        return self.proc.returncode if self.proc else None

    def kill(self) -> None:
        kill(self.proc)

    def __enter__(self) -> "AgentProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        return text_or_empty(self.log)
