"""The eBPF tracer for real: OVS kernel datapath + conntrack zones in a VM.

One VM boot (module-scoped) runs SCENARIO: two namespace ports on an OVS
kernel-datapath bridge whose OpenFlow rules commit IP traffic with
ct(zone=1) for port p1 and ct(zone=2) for port p2, the way OVN's per-port
zones do (each packet passes the sender's zone, then the receiver's). DRIVER
runs BpfSource there and logs every event and control step as JSON lines; the
tests below check that log on the host.

ns2 also tracks the same traffic in its own conntrack, in zone 1: the tracer
must count only the OVS datapath's namespace or it would report it twice.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from integration.programs import PACKAGES, require  # noqa: E402
from integration.vm import ensure_kernel, run_in_vm  # noqa: E402
from ovsfoot.events import Thresholds  # noqa: E402
from ovsfoot.sources import SourceUnavailable  # noqa: E402

INITIAL_BYTES = 5_000_000

DRIVER = r'''
"""Runs BpfSource; logs events and control steps (JSON lines on the FIFO) to a file."""
import dataclasses, json, logging, os, sys, time
import ovs.poller
from ovsfoot.events import Thresholds
from ovsfoot.sources.bpf import BpfSource

logging.basicConfig(level=logging.INFO)
out = open(sys.argv[1], "a", buffering=1)
def log(**kw):
    out.write(json.dumps(kw) + "\n")

t0 = time.monotonic()
src = BpfSource(Thresholds(bytes=int(sys.argv[2]), seconds=1.0))
log(kind="ready", load_s=time.monotonic() - t0, netns=os.stat("/proc/self/ns/net").st_ino,
    stats=src.stats())
ctl = os.open(sys.argv[3], os.O_RDWR | os.O_NONBLOCK)   # RDWR: never sees EOF
buf = b""
while True:
    for ev in src.run():
        log(**{**dataclasses.asdict(ev), "kind": ev.kind.name})
    try:
        buf += os.read(ctl, 4096)
    except BlockingIOError:
        pass
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        cmd, wall = json.loads(line), time.time_ns()
        if cmd["cmd"] == "thresholds":
            src.set_thresholds(Thresholds(bytes=cmd["bytes"], seconds=cmd["seconds"]))
        log(kind="ack", wall=wall, stats=src.stats(), **cmd)
        if cmd["cmd"] == "quit":
            sys.exit(0)
    poller = ovs.poller.Poller()
    src.wait(poller)
    poller.fd_wait(ctl, ovs.poller.POLLIN)
    poller.block()
'''

# Programs SCENARIO runs (integration/programs.py): checked on the host before the
# VM boots (it shares the host's root filesystem) and again where the script starts.
PROGRAMS = ("ip", "ping", "iperf3", "nft", "conntrack", "modprobe", "mkfifo", "ovsdb-tool",
            "ovsdb-server", "ovs-vsctl", "ovs-vswitchd", "ovs-ofctl", "ovs-appctl")

SCENARIO = r'''
for need in @PROGRAMS@; do        # program:Debian package
    command -v "${need%%:*}" >/dev/null || { echo "scenario: program '${need%%:*}' not found:" \
        "install the Debian package ${need#*:} (or run \`make deps\`)"; exit 1; }
done
set -eux
W=$PWD
export PYTHONPATH=$OVSFOOT_REPO OVS_RUNDIR=/tmp/ovs OVS_DBDIR=/tmp/ovs OVS_LOGDIR=$W/ovslog
mkdir -p /tmp/ovs $W/ovslog
modprobe openvswitch
modprobe nf_conntrack
# The driver compiles the program (about a minute under TCG) while the rest is set up.
mkfifo /tmp/ctl
$OVSFOOT_PY driver.py events.jsonl $INITIAL_BYTES /tmp/ctl >driver.log 2>&1 &

# ctl JSON: send a control step to the driver and wait for its ack
ctl() {
    echo "$1" >/tmp/ctl
    local id=$(echo "$1" | sed 's/.*"id": *"\([^"]*\)".*/\1/')
    for _ in $(seq 300); do grep -q "\"id\": \"$id\"" events.jsonl && return 0; sleep 0.2; done
    echo "no ack for $1"; exit 1
}

# Two pods: namespaces ns1 (10.0.0.1) and ns2 (10.0.0.2) on ports p1, p2.
for i in 1 2; do
    ip netns add ns$i
    ip link add p$i type veth peer name eth0 netns ns$i
    ip -n ns$i addr add 10.0.0.$i/24 dev eth0
    ip -n ns$i link set eth0 up
    ip -n ns$i link set lo up
    ip link set p$i up
done
cat /sys/class/net/p1/ifindex >p1.ifindex
# ns2 tracks the same flows in its own conntrack, in zone 1 (a pod's own
# firewall): the tracer must not count them.
ip netns exec ns2 nft -f - <<'EOF'
table inet pod {
    chain pre { type filter hook prerouting priority raw; ct zone set 1; }
    chain out { type filter hook output priority raw; ct zone set 1; }
    chain in { type filter hook input priority filter; ct state established,related,new accept; }
}
EOF

# OVS on the kernel datapath, private run dir. Bridge and ports exist before
# ovs-vswitchd starts (OVS 3.1 + 6.1 loses upcalls otherwise).
ovsdb-tool create /tmp/ovs/conf.db /usr/share/openvswitch/vswitch.ovsschema
ovsdb-server /tmp/ovs/conf.db --remote=punix:/tmp/ovs/db.sock --pidfile --detach --log-file
ovs-vsctl --no-wait init
ovs-vsctl --no-wait add-br br0 -- set bridge br0 datapath_type=system \
    -- add-port br0 p1 -- set interface p1 ofport_request=1 \
    -- add-port br0 p2 -- set interface p2 ofport_request=2
ovs-vswitchd --pidfile --detach --log-file
ovs-vsctl --timeout=120 wait-until interface p2 ofport=2
for _ in $(seq 100); do ovs-ofctl show br0 >/dev/null 2>&1 && break; sleep 0.3; done
# OVN-like: the sender's port zone, then the receiver's port zone.
ovs-ofctl add-flows br0 - <<'EOF'
table=0,priority=0,actions=NORMAL
table=0,priority=10,ip,in_port=1,actions=ct(commit,zone=1,table=1)
table=0,priority=10,ip,in_port=2,actions=ct(commit,zone=2,table=1)
table=1,priority=10,ip,nw_dst=10.0.0.1,actions=ct(commit,zone=1,table=2)
table=1,priority=10,ip,nw_dst=10.0.0.2,actions=ct(commit,zone=2,table=2)
table=2,priority=0,actions=NORMAL
EOF
ip netns exec ns1 ping -c 1 -W 20 10.0.0.2
ip netns exec ns2 iperf3 -s -D --logfile $W/iperf3-server.log
sleep 1

for _ in $(seq 600); do grep -q '"kind": "ready"' events.jsonl 2>/dev/null && break; sleep 0.5; done
grep -q '"kind": "ready"' events.jsonl

# Mice: pings and a short TCP transfer, far below the threshold.
ctl '{"cmd": "mark", "id": "mice"}'
ip netns exec ns1 ping -c 3 -i 0.3 10.0.0.2
ip netns exec ns1 iperf3 -c 10.0.0.2 -n 200K -J >iperf-mouse.json
sleep 2

# The elephant: it ends when its TCP connection closes (its entries stay, in TIME_WAIT).
ctl '{"cmd": "mark", "id": "elephant"}'
ip netns exec ns1 iperf3 -c 10.0.0.2 -t 4 -J >iperf-elephant.json
date +%s%N >elephant-closed.ns
sleep 2
conntrack -L -p tcp --dport 5201 >elephant-after.txt 2>&1 || true

# A UDP elephant (no close), then its conntrack entries deleted.
ctl '{"cmd": "mark", "id": "udp"}'
ip netns exec ns1 iperf3 -c 10.0.0.2 -u -b 50M -t 3 -J >iperf-udp.json
sleep 1
ctl '{"cmd": "mark", "id": "delete"}'
conntrack -D -p udp --dport 5201 || true
sleep 2

# Live threshold change: too high for a running elephant, then low enough.
ctl '{"cmd": "thresholds", "id": "huge", "bytes": 1000000000000, "seconds": 1.0}'
ip netns exec ns1 iperf3 -c 10.0.0.2 -t 7 -J >iperf-live.json &
iperf=$!
sleep 4
ctl '{"cmd": "thresholds", "id": "lower", "bytes": 1000000, "seconds": 1.0}'
wait $iperf
sleep 1
conntrack -L >conntrack.txt 2>&1 || true
ctl '{"cmd": "quit", "id": "quit"}'
ovs-appctl dpctl/show -s >dpctl.txt
echo scenario-ok
'''.replace("@PROGRAMS@", " ".join(f"{p}:{PACKAGES[p]}" for p in PROGRAMS))


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    """Runs SCENARIO in one VM boot; returns (workdir, records, host wall-clock window)."""
    require(*PROGRAMS)
    ensure_kernel()
    work = tmp_path_factory.mktemp("bpf-vm")
    (work / "driver.py").write_text(DRIVER)
    (work / "scenario.sh").write_text(SCENARIO)
    start = time.time_ns()
    r = run_in_vm(work / "scenario.sh", work, timeout=600,
                  env={"OVSFOOT_REPO": str(REPO), "OVSFOOT_PY": sys.executable,
                       "INITIAL_BYTES": str(INITIAL_BYTES)})
    end = time.time_ns()
    output = r.output_path.read_text() if r.output_path.exists() else ""
    driver = (work / "driver.log").read_text() if (work / "driver.log").exists() else ""
    assert r.ok and "scenario-ok" in output, (
        f"scenario failed (exit {r.rc}) in {work}\n--- output\n{output[-6000:]}\n"
        f"--- driver\n{driver[-3000:]}\n--- console\n{r.log[-2000:]}")
    records = [json.loads(line) for line in (work / "events.jsonl").read_text().splitlines()]
    return work, records, (start, end)


def phases(records):
    """Split the records at the driver's acks: {ack id: records after it}."""
    out, cur = {"start": []}, "start"
    for rec in records:
        if rec["kind"] == "ack":
            cur = rec["id"]
            out[cur] = []
        else:
            out[cur].append(rec)
    return out


def data_port(work: Path, name: str) -> int:
    return json.loads((work / name).read_text())["start"]["connected"][0]["local_port"]


def elephants(records, kind="ELEPHANT"):
    return [r for r in records if r["kind"] == kind]


def test_loaded_once_with_probe_type(vm):
    _, records, _ = vm
    ready = [r for r in records if r["kind"] == "ready"]
    assert len(ready) == 1
    stats = ready[0]["stats"]
    assert stats["probe"] in ("fentry", "kprobe")
    assert stats["buffer"] == "ringbuf"      # 6.1 >= 5.8
    final = [r for r in records if r["kind"] == "ack"][-1]["stats"]
    assert final["dropped"] == 0 and final["map_full"] == 0
    assert final["events"] == len(elephants(records)) + len(elephants(records, "END"))


def test_elephant_in_both_zones_with_direction(vm):
    work, records, (start, end) = vm
    port = data_port(work, "iperf-elephant.json")
    got = elephants(phases(records)["elephant"])
    assert sorted(e["key"]["zone"] for e in got) == [1, 2], got
    netns = next(r for r in records if r["kind"] == "ready")["netns"]
    ifindex = int((work / "p1.ifindex").read_text())
    for e in got:
        assert e["key"] == {"netns": netns, "zone": e["key"]["zone"], "proto": socket.IPPROTO_TCP,
                            "src": "10.0.0.1", "dst": "10.0.0.2", "sport": port, "dport": 5201}
        assert e["bytes_orig"] + e["bytes_reply"] >= INITIAL_BYTES
        assert e["bytes_orig"] > 10 * e["bytes_reply"], e      # client -> server
        assert e["packets_orig"] > 0 and e["packets_reply"] > 0
        assert e["ts"] - e["first_seen"] >= 1_000_000_000      # the age threshold
        assert start - 10e9 < e["first_seen"] < e["ts"] < end + 10e9   # epoch nanoseconds
        assert e["ifindex"] == ifindex                         # the SYN came in on p1


def test_no_elephant_for_mice(vm):
    work, records, _ = vm
    ports = {(socket.IPPROTO_TCP, data_port(work, "iperf-elephant.json")),
             (socket.IPPROTO_TCP, data_port(work, "iperf-live.json")),
             (socket.IPPROTO_UDP, data_port(work, "iperf-udp.json"))}
    for e in elephants(records):
        assert (e["key"]["proto"], e["key"]["sport"]) in ports, e
    assert not elephants(phases(records)["mice"])


def test_end_at_tcp_close(vm):
    """An elephant ends when its TCP connection closes, though its entries stay
    (TIME_WAIT or CLOSE): not only when they are deleted."""
    work, records, _ = vm
    port = data_port(work, "iperf-elephant.json")
    closed = int((work / "elephant-closed.ns").read_text())
    ends = [e for e in elephants(phases(records)["elephant"], "END")
            if e["key"]["sport"] == port]
    assert sorted(e["key"]["zone"] for e in ends) == [1, 2], ends
    first = {e["key"]["zone"]: e for e in elephants(records) if e["key"]["sport"] == port}
    for e in ends:
        assert e["ts"] <= closed + 2_000_000_000        # within 2 s of the close
        assert e["bytes_orig"] > first[e["key"]["zone"]]["bytes_orig"]
    after = (work / "elephant-after.txt").read_text()     # 2 s after: still there
    assert after.count(f"sport={port} dport=5201") == 2, after
    mine = [e for e in records if e["kind"] in ("ELEPHANT", "END") and e["key"]["sport"] == port]
    assert len(mine) == 4, mine         # once each: no END again when the entries go


def test_end_after_conntrack_delete(vm):
    work, records, _ = vm
    port = data_port(work, "iperf-udp.json")
    ends = [e for e in elephants(phases(records)["delete"], "END") if e["key"]["sport"] == port]
    assert sorted(e["key"]["zone"] for e in ends) == [1, 2], ends
    assert not elephants(phases(records)["udp"], "END")    # UDP has no close: it waited
    first = {e["key"]["zone"]: e for e in elephants(records) if e["key"]["sport"] == port}
    for e in ends:
        el = first[e["key"]["zone"]]
        assert e["first_seen"] == el["first_seen"] and e["ts"] > el["ts"]
        assert e["bytes_orig"] > el["bytes_orig"]    # counted on to the end


def test_live_threshold_change(vm):
    work, records, _ = vm
    port = data_port(work, "iperf-live.json")
    ph = phases(records)
    assert not elephants(ph["huge"]), "an elephant passed a 1 TB threshold"
    got = [e for e in elephants(ph["lower"]) if e["key"]["sport"] == port]
    assert sorted(e["key"]["zone"] for e in got) == [1, 2], got
    lowered = next(r for r in records if r.get("id") == "lower")
    # the same running flow, detected right after the change (the ack's wall
    # time is from just before it), without a reload
    assert all(e["first_seen"] < lowered["wall"] < e["ts"] for e in got)
    assert all(e["bytes_orig"] + e["bytes_reply"] >= 1_000_000 for e in got)


def test_unavailable_says_why():
    """Where the tracer cannot run, BpfSource says why instead of crashing."""
    from ovsfoot.sources.bpf import BpfSource
    with pytest.raises(SourceUnavailable, match="not found"):
        BpfSource(Thresholds(), netns="ovsfoot-no-such-namespace")
    if not os.path.exists("/sys/bus/event_source/devices/kprobe"):   # this host's kernel
        with pytest.raises(SourceUnavailable) as e:
            BpfSource(Thresholds())
        assert str(e.value)
