"""The lab's scenario, run inside the VM (see integration/lab.py): the story of a run.

Build the nodes and pods (lab_nodes.py: a central node with ovsfoot's cluster
database and three chassis, as vagrant/provision/ provisions real hypervisors), with
an ovsfoot agent per chassis (bpf source on hv1 and hv2). Then the phases: an
iperf3 elephant from hv1 to hv2 beside sockperf mice, a live threshold change, an
IPv6 elephant (lab_elephants.py); the seed's experiment, (a) to (d)
(lab_experiment.py); learned and traffic classes (lab_classes.py); the ctnetlink
source; and what OVN and OVS spend meanwhile, compared with a control phase
without agents (lab_cost.py). The traffic is lab_traffic.py's, what the lab sees
lab_observe.py's. Everything observed goes into a timeline and a JSON report
(lab_report.py); its checks say what was expected and whether it happened.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from integration import lab_classes, lab_cost, lab_elephants, lab_experiment
from integration.lab_nodes import Nodes
from integration.lab_observe import Observer
from integration.lab_report import Report
from integration.lab_traffic import Traffic


class Lab:
    """The lab's nodes, the traffic between its pods, what it observes, and the report."""

    def __init__(self, work: Path, run_dir: Path = Path("/tmp/ovsfoot-lab")):
        self.work = work            # shared with the host: reports and logs
        self.report = Report()
        self.nodes = Nodes(work, run_dir, self.report)
        self.traffic = Traffic(self.nodes.pods)
        self.observer = Observer(work, self.nodes, self.report)

    def run(self) -> Report:
        try:
            self.nodes.build()
            self.nodes.agents_ready()
            lab_experiment.isolate(self, False)     # compiled at start; on only in row (d)
            took = lab_cost.costed(self, "agents", lab_elephants.elephant_phase)
            lab_elephants.threshold_phase(self)
            lab_elephants.ipv6_phase(self)
            lab_experiment.experiment_phase(self)
            lab_classes.learned_class_phase(self)
            lab_classes.traffic_phase(self)
            lab_elephants.ctnetlink_phase(self)      # stops the agents
            lab_cost.costed(self, "control", lab_cost.control_phase, seconds=took)
            lab_cost.costed(self, "probe", lab_cost.probe_phase)
            lab_cost.judge_cost(self)
        except Exception as e:          # the report says what went wrong
            self.report.check("lab ran to the end", False, f"{type(e).__name__}: {e}")
            for hv, a in self.nodes.agents.items():
                print(f"--- {hv} agent log ---\n{a.log_text()[-3000:]}", flush=True)
        finally:
            self.traffic.kill()
            self.nodes.stop_agents()
            self.nodes.teardown()
            logs = self.work / "logs"
            for log in self.nodes.rundir.glob("*/*.log"):
                (logs / log.parent.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(log, logs / log.parent.name / log.name)
        return self.report


def main() -> int:
    work = Path(sys.argv[1])
    report = Lab(work).run()
    report.save(work / "lab-report.json")
    return 0 if all(c["ok"] for c in report.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
