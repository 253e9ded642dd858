"""What the lab sees of ovsfoot, as its consumers see it: the keys published on each
chassis (read at once, or followed by an OVSDB monitor client), the agents' own
answers, the cluster database's rows, and a real scheduler extender's ranking."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from integration.lab_nodes import CLUSTER_DB, EXTENDER, Nodes
from integration.lab_report import Report
from integration.sandbox import sh, wait_for


class Observer:
    """Reads what the agents on `nodes` publish and answer; snapshots go in `report`."""

    def __init__(self, work: Path, nodes: Nodes, report: Report):
        self.work = work
        self.nodes = nodes
        self.report = report

    def cluster_rows(self, table: str) -> list[dict]:
        """Rows of `table` in the cluster database, read through the members' admin sockets."""
        admin = ",".join(f"unix:{self.nodes.rundir / m / 'db.sock'}" for m in CLUSTER_DB)
        out = sh("ovsdb-client", "--timeout=20", "query", admin, json.dumps(
            ["OVSFoot_Cluster", {"op": "select", "table": table, "where": []}]), timeout=30)
        rows = json.loads(out)[0]["rows"]
        for row in rows:
            for k in [k for k in row if k.startswith("_")]:
                del row[k]
        return rows

    def monitor(self, hv: str) -> subprocess.Popen:
        """An OVSDB monitor client on the chassis' database (integration/monitor.py),
        returned once it has the database's contents."""
        path = self.work / f"monitor-{hv}.jsonl"
        p = subprocess.Popen([sys.executable, "-m", "integration.monitor",
                              self.nodes.chassis[hv].remote, str(path)])
        wait_for(lambda: path.exists() and path.stat().st_size, timeout=120,
                 what=f"the OVSDB monitor client on {hv}")
        return p

    def monitor_events(self, hv: str) -> list[dict]:
        """Every change of ovsfoot keys the monitor client saw, in order."""
        path = self.work / f"monitor-{hv}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def elephants(self, hv: str) -> list[dict]:
        return self.nodes.agents[hv].json("elephant/list")

    def published(self, hv: str) -> dict:
        """ovsfoot's keys on the chassis: of the integration bridge (the node), of the
        Open_vSwitch row (none expected) and of each pod's Interface, in one read."""
        ovs = self.nodes.chassis[hv]
        out = ovs.vsctl("--format=json", "--columns=name,external_ids", "list", "Bridge",
                        ovs.bridge, "--", "--columns=external_ids", "list", "Open_vSwitch", ".",
                        "--", "--columns=name,external_ids", "list", "Interface")
        bridge, root, ifaces = (json.loads(line)["data"] for line in out.splitlines())

        def mine(ids) -> dict:
            return {k: v for k, v in ids[1] if k.startswith("ovsfoot-")}
        by_name = {name: mine(ids) for name, ids in ifaces}
        return {"node": mine(bridge[0][1]), "open_vswitch": mine(root[0][0]),
                "interfaces": {p["lport"]: by_name.get(p["interface"], {})
                               for p in self.nodes.pods.values() if p["chassis"] == hv}}

    def snapshot(self, label: str) -> None:
        t0 = time.monotonic()
        snap = {hv: self.published(hv) for hv in self.nodes.chassis}
        took = time.monotonic() - t0
        for hv in self.nodes.chassis:
            snap[hv]["footprint_show"] = (self.nodes.agents[hv].appctl("footprint/show")
                                          if hv in self.nodes.agents else "")
        self.report.event(f"snapshot of the published keys ({label})",
                          seconds=round(took, 1))
        try:
            cluster = {row["name"]: {k: row.get(k) for k in (
                "footprint", "elephants", "heavy_ports", "sensitive_ports", "bps", "flows_per_s")}
                for row in self.cluster_rows("Chassis")}
        except RuntimeError as e:
            cluster = {"error": str(e)}
        self.report.data.setdefault("published", {})[label] = snap
        self.report.data.setdefault("cluster_view", {})[label] = cluster

    def port_traffic(self, pod: str) -> dict:
        """The pod's port as its chassis' agent shows it (footprint/show json)."""
        p = self.nodes.pods[pod]
        return self.nodes.agents[p["chassis"]].json("footprint/show")["ports"][p["lport"]]

    def extender_pick(self, nodes: list[str], pod: dict | None = None) -> tuple[str, dict]:
        """Asks a real `ovsfoot scheduler-extender` on the cluster database to rank `nodes`
        for `pod` (a v1.Pod; default: a new replica of lab/mice-client)."""
        ext = subprocess.Popen([sys.executable, "-m", "ovsfoot", "scheduler-extender",
                                "--listen", "127.0.0.1:0", "--cluster-db", self.nodes.cluster_db,
                                *self.nodes.creds(EXTENDER), "--node-key", "name"],
                               stdout=subprocess.PIPE, text=True)
        try:
            url = ext.stdout.readline().rsplit(" ", 1)[1].strip()
            pod = pod or {"metadata": {"name": "mice-client-6c8d9f7b5c-new01",
                                       "namespace": "lab",
                                       "labels": {"pod-template-hash": "6c8d9f7b5c"},
                                       "ownerReferences": [{"kind": "ReplicaSet",
                                                            "name": "mice-client-6c8d9f7b5c"}]}}
            body = json.dumps({"Pod": pod, "NodeNames": nodes}).encode()

            def ask():
                req = urllib.request.Request(f"{url}/prioritize", body,
                                             {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=10) as resp:
                    scores = {h["Host"]: h["Score"] for h in json.load(resp)}
                return scores if len(set(scores.values())) > 1 else None
            try:
                scores = wait_for(ask, timeout=60, interval=1,
                                  what="footprints in the cluster database")
            except TimeoutError:
                with urllib.request.urlopen(f"{url}/healthz", timeout=10) as resp:
                    health = json.load(resp)
                try:
                    rows = json.dumps(self.cluster_rows("Chassis"))
                except RuntimeError as e:
                    rows = str(e)
                scores = {n: None for n in nodes}
                scores["why"] = f"extender {health}; cluster database Chassis: {rows}"
            best = max(nodes, key=lambda n: scores[n] or 0)
            return best, scores
        finally:
            ext.terminate()
            ext.wait()


def try_wait(pred, timeout) -> bool:
    try:
        wait_for(pred, timeout=timeout, interval=0.2)
        return True
    except TimeoutError:
        return False
