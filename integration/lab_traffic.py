"""The lab's traffic, run in the pods' network namespaces: an iperf3 elephant to
pod3, sockperf mice ping-ponging with pod4, and integration/traffic.py's
workloads (many medium flows, loops of short connections)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from integration.sandbox import sh, wait_for

TRAFFIC = str(Path(__file__).resolve().parent / "traffic.py")


class Traffic:
    """Traffic between the pods (Nodes.pods); what it starts runs until kill()."""

    def __init__(self, pods: dict[str, dict]):
        self.pods = pods
        self.procs: list[subprocess.Popen] = []

    def bg(self, pod: str, *cmd: str) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", pod, *cmd], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        self.procs.append(p)
        return p

    def iperf(self, seconds: int, port: int, rate: str = "200M",
              ipv6: bool = False) -> subprocess.Popen:
        self.bg("pod3", "iperf3", "-s", "-1", "-p", str(port))
        wait_for(lambda: f":{port}" in sh("ip", "netns", "exec", "pod3", "ss", "-ltn"),
                 what="iperf3 server")
        dst = self.pods["pod3"]["ip6" if ipv6 else "ip"]
        return self.bg("pod1", "iperf3", "-c", dst, "-p", str(port),
                       "-t", str(seconds), "-b", rate, "-J")

    def mice(self, seconds: int, client: str = "pod2",
             log: Path | None = None) -> tuple[subprocess.Popen, subprocess.Popen]:
        """A sockperf server on pod4 and a ping-pong client on `client` (every round
        trip into `log` if given)."""
        server = self.bg("pod4", "sockperf", "server", "-i", self.pods["pod4"]["ip"],
                         "-p", "11111")
        wait_for(lambda: "11111" in sh("ip", "netns", "exec", "pod4", "ss", "-lun"),
                 what="sockperf server")
        return server, self.bg(client, "sockperf", "ping-pong", "-i", self.pods["pod4"]["ip"],
                               "-p", "11111", "-t", str(seconds), "--mps", "200",
                               *(["--full-log", str(log)] if log else []))

    def mice_p99(self, client: str, seconds: int = 6, log: Path | None = None) -> float | None:
        """sockperf ping-pong p99 (ms) from `client` to pod4."""
        server, p = self.mice(seconds, client, log)
        out = p.communicate(timeout=seconds + 60)[0]
        server.kill()       # only the mice: an elephant may be running
        server.wait()
        for line in out.splitlines():
            if "percentile 99.000" in line:
                return round(float(line.rsplit("=", 1)[1]) / 1000, 3)
        return None

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs.clear()

    def workload(self, client: str, server: str, port: int, *args: str) -> None:
        """integration/traffic.py's client `args` on pod `client` against a sink on `server`."""
        self.bg(server, sys.executable, TRAFFIC, "serve", self.pods[server]["ip"], str(port))
        wait_for(lambda: f":{port}" in sh("ip", "netns", "exec", server, "ss", "-ltn"),
                 what="the traffic sink")
        self.bg(client, sys.executable, TRAFFIC, args[0], self.pods[server]["ip"], str(port),
                *args[1:])


def iperf_mbits(text: str) -> float | None:
    try:
        return round(json.loads(text)["end"]["sum_received"]["bits_per_second"] / 1e6, 1)
    except (ValueError, KeyError, TypeError):
        return None
