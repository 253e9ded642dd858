"""`ovsfoot agent --isolate` for real: a Geneve underlay in a VM (the host kernel has
no sch_prio and no geneve module).

One VM boot runs SCENARIO: two namespaces, iso1 and iso2, joined by a veth
underlay (`ul`, 192.168.77.0/24) with a Linux Geneve tunnel across it, and a
tbf bottleneck as the root qdisc of iso1's `ul` (as the lab's hv1 has). The
agent runs with the ctnetlink source in iso1 (whose conntrack puts the tunnel's
inner traffic in zone 5, as OVN puts a port's), an OVSDB whose Open_vSwitch row names iso1's
`ovn-encap-ip`, and `--isolate` (the interface found from that address). An
iperf3 elephant crosses the tunnel; isolation is switched off and on again
live; the agent is killed with -9 and started again, stopped with `exit`, started
and stopped with SIGTERM; a second agent on iso2,
whose root is an htb ovsfoot did not install, must stay off and touch nothing.
Every step's `isolate/show json` and `tc` view are saved for the tests below.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from integration.programs import require, shell_require  # noqa: E402
from integration.vm import ensure_kernel, run_in_vm  # noqa: E402

PROGRAMS = ("ip", "tc", "nft", "ping", "iperf3", "modprobe", "ovsdb-tool", "ovsdb-server",
            "ovs-vsctl", "ovs-appctl")

SCENARIO = shell_require(*PROGRAMS) + r'''
set -eux
W=$PWD
export PYTHONPATH=$OVSFOOT_REPO OVS_RUNDIR=/tmp/ovs OVS_DBDIR=/tmp/ovs OVS_LOGDIR=$W
mkdir -p /tmp/ovs
modprobe geneve
modprobe nf_conntrack

for i in 1 2; do ip netns add iso$i; ip -n iso$i link set lo up; done
ip link add ul netns iso1 type veth peer name ul netns iso2
for i in 1 2; do
    o=$((3 - i))
    ip -n iso$i addr add 192.168.77.$i/24 dev ul
    ip -n iso$i link set ul up
    ip -n iso$i link add gnv0 type geneve id 77 remote 192.168.77.$o
    ip -n iso$i addr add 10.77.0.$i/24 dev gnv0
    ip -n iso$i link set gnv0 up
done
# conntrack tracks a namespace's traffic only where a rule uses it: zone 5, as a port's
for i in 1 2; do
    ip netns exec iso$i nft -f - <<'EOF'
table inet pod {
    chain pre { type filter hook prerouting priority raw; ct zone set 5; }
    chain out { type filter hook output priority raw; ct zone set 5; }
}
EOF
done
ip netns exec iso1 tc qdisc replace dev ul root tbf rate 40mbit burst 16kb latency 100ms
ip netns exec iso2 tc qdisc replace dev ul root handle 7: htb default 1
ip netns exec iso1 ping -c 1 -W 20 10.77.0.2

ovsdb-tool create /tmp/ovs/conf.db /usr/share/openvswitch/vswitch.ovsschema
ovsdb-server /tmp/ovs/conf.db --remote=punix:/tmp/ovs/db.sock --pidfile --detach --log-file
ovs-vsctl --no-wait init
ovs-vsctl --no-wait add-br br-int -- set Open_vSwitch . external_ids:system-id=iso1 \
    external_ids:ovn-encap-ip=192.168.77.1 external_ids:ovn-encap-type=geneve

CTL=/tmp/ovs/ovsfoot.ctl
agent() {   # agent NETNS CTL LOG ARGS...
    local n=$1 ctl=$2 logf=$3; shift 3
    $OVSFOOT_PY -m ovsfoot agent --db unix:/tmp/ovs/db.sock --state /tmp/ovs/state.$n \
        --source ctnetlink --netns $n --interval 0.2 \
        --elephant-bytes 2000000 --elephant-seconds 1 --unixctl $ctl \
        --log-file=$W/$logf -vconsole:off -visolation:file:dbg "$@" &
    echo $! >/tmp/ovs/$n.pid
    for _ in $(seq 600); do ovs-appctl -t $ctl version >/dev/null 2>&1 && return 0; sleep 0.5; done
    echo "agent on $n did not answer"; exit 1
}
show() {    # show NAME: isolate/show json and tc's view of iso1's ul, saved as NAME.*
    ovs-appctl -t $CTL isolate/show json >$W/$1.json
    ip netns exec iso1 tc qdisc show dev ul >$W/$1.qdisc
    ip netns exec iso1 tc filter show dev ul parent f5a0: >$W/$1.filter 2>&1 || true
}
elephant() {  # elephant NAME: 6 s of iperf3 across the tunnel, shown while it runs
    ip netns exec iso1 iperf3 -c 10.77.0.2 -t 6 -J >$W/$1.iperf.json &
    local p=$!
    sleep 4.5
    show $1
    wait $p
}
ip netns exec iso2 iperf3 -s -D --logfile $W/iperf3-server.log
sleep 1

agent iso1 $CTL agent1.log --isolate
show started
elephant on1

ovs-appctl -t $CTL isolate/set off >$W/set-off.txt
show off
ip netns exec iso1 ping -c 3 -i 0.2 -W 2 10.77.0.2 >$W/ping-off.txt
elephant off-traffic

ovs-appctl -t $CTL isolate/set on >$W/set-on.txt
elephant on2

# kill -9: the qdisc and filter stay; the next start removes them and installs its own
kill -9 $(cat /tmp/ovs/iso1.pid)
sleep 1
ip netns exec iso1 tc qdisc show dev ul >$W/killed.qdisc
agent iso1 $CTL agent2.log --isolate ul --isolate-dscp 10
show restarted
elephant dscp
ovs-appctl -t $CTL exit
for _ in $(seq 100); do kill -0 $(cat /tmp/ovs/iso1.pid) 2>/dev/null || break; sleep 0.2; done
ip netns exec iso1 tc qdisc show dev ul >$W/exited.qdisc
ip netns exec iso1 ping -c 3 -i 0.2 -W 2 10.77.0.2 >$W/ping-exited.txt

# SIGTERM (systemctl stop) removes it too
agent iso1 $CTL agent4.log --isolate
ip netns exec iso1 tc qdisc show dev ul >$W/before-term.qdisc
kill -TERM $(cat /tmp/ovs/iso1.pid)
for _ in $(seq 100); do kill -0 $(cat /tmp/ovs/iso1.pid) 2>/dev/null || break; sleep 0.2; done
ip netns exec iso1 tc qdisc show dev ul >$W/terminated.qdisc

# a root ovsfoot did not install: off, with the reason, and the htb untouched
ip netns exec iso2 tc qdisc show dev ul >$W/htb-before.qdisc
agent iso2 /tmp/ovs/iso2.ctl agent3.log --isolate ul
ovs-appctl -t /tmp/ovs/iso2.ctl isolate/show json >$W/htb.json
ovs-appctl -t /tmp/ovs/iso2.ctl isolate/set on >$W/htb-set-on.txt 2>&1 \
    || echo "rc=$?" >>$W/htb-set-on.txt
ip netns exec iso2 tc qdisc show dev ul >$W/htb-after.qdisc
ovs-appctl -t /tmp/ovs/iso2.ctl exit
echo scenario-ok
'''


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    """Runs SCENARIO in one VM boot; returns its work directory."""
    require(*PROGRAMS)
    ensure_kernel()
    work = tmp_path_factory.mktemp("isolate-vm")
    (work / "scenario.sh").write_text(SCENARIO)
    r = run_in_vm(work / "scenario.sh", work, timeout=900,
                  env={"OVSFOOT_REPO": str(REPO), "OVSFOOT_PY": sys.executable})
    output = r.output_path.read_text() if r.output_path.exists() else ""
    logs = "".join(f"--- {p.name}\n{p.read_text()[-3000:]}\n"
                   for p in sorted(work.glob("agent*.log")))
    assert r.ok and "scenario-ok" in output, (
        f"scenario failed (exit {r.rc}) in {work}\n--- output\n{output[-6000:]}\n{logs}"
        f"--- console\n{r.log[-2000:]}")
    return work


def shown(work: Path, name: str) -> dict:
    return json.loads((work / f"{name}.json").read_text())


def iperf_port(work: Path, name: str) -> int:
    return json.loads((work / f"{name}.iperf.json").read_text())["start"]["connected"][0][
        "local_port"]


def isolated(data: dict, port: int) -> dict:
    rows = [f for f in data["flows"] if f["proto"] == 6 and f["sport"] == port]
    assert len(rows) == 1, data["flows"]
    return rows[0]


def test_on_at_start_under_the_tbf(vm):
    s = shown(vm, "started")
    assert s["state"] == "on", s
    assert s["interface"] == "ul", "found from ovn-encap-ip"
    assert s["qdisc"]["handle"] == "f5a0:" and s["qdisc"]["parent"].endswith(":1")
    qdisc = (vm / "started.qdisc").read_text()
    assert "qdisc tbf" in qdisc and "root" in qdisc.split("qdisc tbf")[1].splitlines()[0]
    assert "qdisc prio f5a0:" in qdisc
    assert "ovsfoot_isolate" in (vm / "started.filter").read_text()


def test_elephant_isolated_within_ms_of_detection(vm):
    s = shown(vm, "on1")
    f = isolated(s, iperf_port(vm, "on1"))
    assert f["packets"] > 100 and f["bytes"] > 1_000_000, f
    assert f["detection_to_isolation_ms"] is not None
    # ctnetlink: detection is at the poll (0.2 s); the map is filled in the same loop
    assert 0 <= f["detection_to_isolation_ms"] < 1000, f
    assert s["bands"]["elephant"]["packets"] >= f["packets"] * 0.9
    assert s["bands"]["normal"]["packets"] > 0     # the start of the flow, ACK-less mice
    assert s["classifier"]["elephant_packets"] >= f["packets"]
    assert s["classifier"]["geneve"] > 0


def test_off_restores_the_tbf_and_traffic_flows(vm):
    off = shown(vm, "off")
    assert off["state"] == "off" and off["qdisc"] is None and off["flows"] == []
    qdisc = (vm / "off.qdisc").read_text()
    assert "f5a0" not in qdisc and "qdisc tbf" in qdisc
    assert "qdisc bfifo f5a1:" in qdisc, "the tbf's bfifo, put back as ovsfoot's f5a1:"
    assert " 0% packet loss" in (vm / "ping-off.txt").read_text()
    mbits = json.loads((vm / "off-traffic.iperf.json").read_text())["end"]["sum_received"][
        "bits_per_second"] / 1e6
    assert mbits > 20, "the tbf's own bfifo was put back (a deleted child drops everything)"
    assert shown(vm, "off-traffic")["state"] == "off"


def test_on_again_live(vm):
    assert "isolation: on on ul" in (vm / "set-on.txt").read_text()
    s = shown(vm, "on2")
    f = isolated(s, iperf_port(vm, "on2"))
    assert s["state"] == "on" and f["packets"] > 100, f


def test_kill_9_leftovers_removed_at_next_start(vm):
    assert "qdisc prio f5a0:" in (vm / "killed.qdisc").read_text(), "killed: nothing removed"
    log = (vm / "agent2.log").read_text()
    assert "removed the qdisc and filter a killed agent left on ul" in log
    s = shown(vm, "restarted")
    assert s["state"] == "on" and s["dscp"] == 10
    assert (vm / "restarted.qdisc").read_text().count("f5a0:") == 1
    assert isolated(shown(vm, "dscp"), iperf_port(vm, "dscp"))["packets"] > 100
    assert shown(vm, "dscp")["classifier"]["dscp_rewritten"] > 100


def test_exit_removes_what_it_installed(vm):
    qdisc = (vm / "exited.qdisc").read_text()
    assert "f5a0" not in qdisc and "qdisc tbf" in qdisc
    assert " 0% packet loss" in (vm / "ping-exited.txt").read_text()


def test_sigterm_removes_it_too(vm):
    assert "qdisc prio f5a0:" in (vm / "before-term.qdisc").read_text()
    qdisc = (vm / "terminated.qdisc").read_text()
    assert "f5a0" not in qdisc and "qdisc tbf" in qdisc and "bfifo f5a1:" in qdisc


def test_a_root_it_did_not_install_is_left_alone(vm):
    s = shown(vm, "htb")
    assert s["state"] == "off" and "htb 7:" in s["reason"] and "stays off" in s["reason"], s
    assert "isolation stays off" in (vm / "htb-set-on.txt").read_text()
    def qdisc(name):            # what `tc qdisc show` says, less its packet counter
        return re.sub(r" direct_packets_stat \d+", "", (vm / name).read_text())
    assert qdisc("htb-before.qdisc") == qdisc("htb-after.qdisc")
