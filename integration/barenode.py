"""A bare OVS node on the kernel datapath with OVN-like zones, for the VM's tests and benchmarks.

ovsdb-server and ovs-vswitchd (integration/sandbox.py's `Ovs`, "system" datapath) in a
private run directory; bridge br0 with two dual-stack pods, network namespaces pod1
(10.0.0.1, fd00::1) and pod2 (10.0.0.2, fd00::2) on veth ports pod1-ovs (OpenFlow port
1) and pod2-ovs (port 2); the OpenFlow table ovn-like-zones.flows commits each packet in
its sender's port zone, then its receiver's (zone 1 for pod1, 2 for pod2). The bridge
carries the zone map ovn-controller would write (ct-zone-lp1=1, ct-zone-lp2=2) and the
Interfaces their iface-id (lp1, lp2) and ip_addresses, so `ovsfoot agent` attributes
without OVN.

    python -m integration.barenode RUNDIR      # brings it up and leaves it running
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from integration.programs import require
from integration.sandbox import Ovs, sh, wait_for

FLOWS = Path(__file__).with_name("ovn-like-zones.flows")
BRIDGE = "br0"
PODS = (1, 2)       # pod i: zone i, OpenFlow port i, 10.0.0.i and fd00::i
PROGRAMS = ("modprobe", "ip", "ping", "ovsdb-tool", "ovsdb-server", "ovs-vsctl", "ovs-appctl",
            "ovs-vswitchd", "ovs-ofctl")


def load_modules() -> None:
    """The OVS kernel datapath and conntrack (the eBPF tracer needs conntrack loaded)."""
    for m in ("openvswitch", "nf_conntrack"):
        sh("modprobe", m)


def up(rundir: Path) -> Ovs:
    """Brings the node up in `rundir` (emptied first); its `stop_all()` takes it down."""
    require(*PROGRAMS)
    load_modules()
    shutil.rmtree(rundir, ignore_errors=True)
    ovs = Ovs(rundir, bridge=BRIDGE, datapath="system")
    ovs.start_db().create_bridge()
    for i in PODS:
        pod = ovs.add_pod(f"pod{i}", f"lp{i}", f"10.0.0.{i}", prefixlen=24,
                          extra_ids={"ip_addresses": f"10.0.0.{i}/24,fd00::{i}/64"})
        sh("ip", "-n", pod.name, "addr", "add", f"fd00::{i}/64", "dev", "eth0", "nodad")
        ovs.vsctl("set", "Interface", pod.interface, f"ofport_request={i}")
        ovs.vsctl("br-set-external-id", BRIDGE, f"ct-zone-lp{i}", str(i))
    # Bridge and ports exist before ovs-vswitchd starts (OVS 3.1 + 6.1 lose upcalls otherwise).
    ovs.start_vswitchd()
    last = ovs.pods[f"pod{PODS[-1]}"].interface
    wait_for(lambda: ovs.vsctl("get", "Interface", last, "ofport") == str(PODS[-1]),
             timeout=120, what=f"ofport of {last}")
    wait_for(lambda: sh("ovs-ofctl", "show", BRIDGE, env=ovs.env, check=False), timeout=60,
             what=f"ovs-ofctl show {BRIDGE}")
    sh("ovs-ofctl", "add-flows", BRIDGE, str(FLOWS), env=ovs.env)
    sh("ip", "netns", "exec", "pod1", "ping", "-c", "1", "-W", "20", "10.0.0.2", timeout=60)
    return ovs


if __name__ == "__main__":
    up(Path(sys.argv[1]))
