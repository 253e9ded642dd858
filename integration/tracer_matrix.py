"""The eBPF tracer for real, on Debian's kernels: OVS kernel datapath + conntrack zones in a VM.

One VM boot per kernel runs SCENARIO on integration/barenode.py's node: two
pods on an OVS kernel-datapath bridge whose OpenFlow rules commit IP traffic
with ct(zone=1) for pod1's port and ct(zone=2) for pod2's, the way OVN's
per-port zones do (each packet passes the sender's zone, then the receiver's).
DRIVER runs BpfSource there and logs every event and control step as JSON lines;
CHECKS read that log on the host (tests/test_bpf_vm.py runs them as tests).

pod2 also tracks the same traffic in its own conntrack, in zone 1: the tracer
must count only the OVS datapath's namespace or it would report it twice.

    python -m integration.tracer_matrix [SUITE...]    # `make kernels`: all four

prints the matrix (kernel, probe type, each check) and keeps it in
CACHE/kernel-matrix.json, which the lab prints too.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from integration import barenode
from integration.cstruct import c_struct, layout
from integration.debian_kernel import CACHE, SUITES, KernelInfo, ensure_kernel
from integration.programs import require, shell_require
from integration.vm import progress, run_in_vm
from ovsfoot.sources.bpf import PROGRAM

REPO = Path(__file__).resolve().parents[1]
INITIAL_BYTES = 5_000_000
MATRIX_FILE = CACHE / "kernel-matrix.json"

DRIVER = r'''
"""Runs BpfSource; logs events and control steps (JSON lines on the FIFO) to a file."""
import ctypes, dataclasses, json, logging, os, sys, time
import ovs.poller
from integration.cstruct import layout
from ovsfoot.events import Thresholds
from ovsfoot.sources.bpf import BpfSource

logging.basicConfig(level=logging.INFO)
out = open(sys.argv[1], "a", buffering=1)
def log(**kw):
    out.write(json.dumps(kw) + "\n")

def bpf_stats(src):
    """{program: [runs, ns]} from the kernel's bpf_stats (kernel.bpf_stats_enabled=1)."""
    out = {}
    for name, fn in src.bpf.funcs.items():
        info = dict(line.split(":", 1) for line in open(f"/proc/self/fdinfo/{fn.fd}"))
        out[name.decode()] = [int(info.get("run_cnt", 0)), int(info.get("run_time_ns", 0))]
    return out

t0 = time.monotonic()
src = BpfSource(Thresholds(bytes=int(sys.argv[2]), seconds=1.0))
load_s = time.monotonic() - t0
# struct event as bcc reads it for the source (table.event(), on a zeroed buffer)
event = src.bpf["events"].event(ctypes.addressof(ctypes.create_string_buffer(4096)))
log(kind="ready", load_s=load_s, netns=os.stat("/proc/self/ns/net").st_ino, stats=src.stats(),
    event_layout=layout(type(event)), event_size=ctypes.sizeof(event))
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
        zones = {z: dataclasses.asdict(c) for z, c in src.zone_counters().items()}
        log(kind="ack", wall=wall, stats=src.stats(), zones=zones, **cmd)
        if cmd["cmd"] == "quit":
            log(kind="bpf_stats", programs=bpf_stats(src))
            sys.exit(0)
    poller = ovs.poller.Poller()
    src.wait(poller)
    poller.fd_wait(ctl, ovs.poller.POLLIN)
    poller.block()
'''

# Programs SCENARIO runs (integration/programs.py): checked on the host before the
# VM boots (it shares the host's root filesystem) and again where the script starts.
PROGRAMS = ("iperf3", "nft", "conntrack", "mkfifo", "sysctl", *barenode.PROGRAMS)

SCENARIO = shell_require(*PROGRAMS) + r'''
set -eux
W=$PWD
export PYTHONPATH=$OVSFOOT_REPO OVS_RUNDIR=/tmp/ovs
mkdir -p $W/ovslog
modprobe nf_conntrack
# The driver compiles the program (about a minute under TCG) while the rest is set up.
mkfifo /tmp/ctl
sysctl -qw kernel.bpf_stats_enabled=1      # per-program run time, for the cost per packet
$OVSFOOT_PY driver.py events.jsonl $INITIAL_BYTES /tmp/ctl >driver.log 2>&1 &

# ctl JSON: send a control step to the driver and wait for its ack
ctl() {
    echo "$1" >/tmp/ctl
    local id=$(echo "$1" | sed 's/.*"id": *"\([^"]*\)".*/\1/')
    for _ in $(seq 300); do grep -q "\"id\": \"$id\"" events.jsonl && return 0; sleep 0.2; done
    echo "no ack for $1"; exit 1
}

# The node: integration/barenode.py (pods pod1 and pod2 on ports pod1-ovs and pod2-ovs,
# zones 1 and 2), its OVS logs kept in ovslog/.
trap 'cp /tmp/ovs/*.log $W/ovslog/ || true' EXIT
$OVSFOOT_PY -m integration.barenode /tmp/ovs
cat /sys/class/net/pod1-ovs/ifindex >pod1.ifindex
# pod2 tracks the same flows in its own conntrack, in zone 1 (a pod's own
# firewall): the tracer must not count them.
ip netns exec pod2 nft -f - <<'EOF'
table inet pod {
    chain pre { type filter hook prerouting priority raw; ct zone set 1; }
    chain out { type filter hook output priority raw; ct zone set 1; }
    chain in { type filter hook input priority filter; ct state established,related,new accept; }
}
EOF
ip netns exec pod2 iperf3 -s -D --logfile $W/iperf3-server.log
sleep 1

for _ in $(seq 600); do grep -q '"kind": "ready"' events.jsonl 2>/dev/null && break; sleep 0.5; done
grep -q '"kind": "ready"' events.jsonl

# Mice: pings and a short TCP transfer, far below the threshold.
ctl '{"cmd": "mark", "id": "mice"}'
ip netns exec pod1 ping -c 3 -i 0.3 10.0.0.2
ip netns exec pod1 iperf3 -c 10.0.0.2 -n 200K -J >iperf-mouse.json
sleep 2

# The elephant: it ends when its TCP connection closes (its entries stay, in TIME_WAIT).
ctl '{"cmd": "mark", "id": "elephant"}'
ip netns exec pod1 iperf3 -c 10.0.0.2 -t 4 -J >iperf-elephant.json
date +%s%N >elephant-closed.ns
sleep 2
conntrack -L -p tcp --dport 5201 >elephant-after.txt 2>&1 || true

# A UDP elephant (no close), then its conntrack entries deleted.
ctl '{"cmd": "mark", "id": "udp"}'
ip netns exec pod1 iperf3 -c 10.0.0.2 -u -b 50M -t 3 -J >iperf-udp.json
sleep 1
ctl '{"cmd": "mark", "id": "delete"}'
conntrack -D -p udp --dport 5201 || true
sleep 2

# The same over IPv6 (TCP only through the zones: neighbour discovery stays plain).
ctl '{"cmd": "mark", "id": "elephant6"}'
ip netns exec pod1 iperf3 -6 -c fd00::2 -t 4 -J >iperf-elephant6.json
date +%s%N >elephant6-closed.ns
sleep 2
ctl '{"cmd": "mark", "id": "delete6"}'
conntrack -D -f ipv6 -p tcp --dport 5201 || true
sleep 2

# Live threshold change: too high for a running elephant, then low enough.
ctl '{"cmd": "thresholds", "id": "huge", "bytes": 1000000000000, "seconds": 1.0}'
ip netns exec pod1 iperf3 -c 10.0.0.2 -t 7 -J >iperf-live.json &
iperf=$!
sleep 4
ctl '{"cmd": "thresholds", "id": "lower", "bytes": 1000000, "seconds": 1.0}'
wait $iperf
sleep 1
conntrack -L >conntrack.txt 2>&1 || true
ctl '{"cmd": "quit", "id": "quit"}'
ovs-appctl dpctl/show -s >dpctl.txt
echo scenario-ok
'''


@dataclass
class Run:
    """One scenario run: its work directory, the driver's records and the wall-clock window."""
    kernel: KernelInfo
    work: Path
    records: list[dict]
    window: tuple[int, int]
    seconds: float


class ScenarioFailed(AssertionError):
    pass


def run_scenario(kernel: KernelInfo, work: Path) -> Run:
    """Runs SCENARIO in one VM boot on `kernel`; ScenarioFailed says what went wrong."""
    require(*PROGRAMS)
    (work / "driver.py").write_text(DRIVER)
    (work / "scenario.sh").write_text(SCENARIO)
    start = time.time_ns()
    r = run_in_vm(work / "scenario.sh", work, timeout=900, kernel=kernel,
                  env={"OVSFOOT_REPO": str(REPO), "OVSFOOT_PY": sys.executable,
                       "INITIAL_BYTES": str(INITIAL_BYTES)})
    end = time.time_ns()
    output = r.output_path.read_text() if r.output_path.exists() else ""
    driver = (work / "driver.log").read_text() if (work / "driver.log").exists() else ""
    if not (r.ok and "scenario-ok" in output):
        raise ScenarioFailed(
            f"scenario on {kernel.version} failed (exit {r.rc}) in {work}\n--- output\n"
            f"{output[-6000:]}\n--- driver\n{driver[-3000:]}\n--- console\n{r.log[-2000:]}")
    records = [json.loads(line) for line in (work / "events.jsonl").read_text().splitlines()]
    return Run(kernel, work, records, (start, end), r.seconds)


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


def ready(run: Run) -> dict:
    return next(r for r in run.records if r["kind"] == "ready")


def ns_per_packet(run: Run) -> float | None:
    """The per-packet program's (__nf_ct_refresh_acct) mean run time, from bpf_stats."""
    progs = next((r["programs"] for r in run.records if r["kind"] == "bpf_stats"), {})
    runs, ns = next((v for k, v in progs.items() if k.endswith("__nf_ct_refresh_acct")), (0, 0))
    return ns / runs if runs else None


def check_loaded(run: Run) -> None:
    """bcc compiled and loaded the program once and reads its events with the C file's
    struct event, field for field; no event or flow was lost."""
    records = run.records
    assert len([r for r in records if r["kind"] == "ready"]) == 1
    event = c_struct(REPO / "bpf" / PROGRAM, "event")
    assert ready(run)["event_layout"] == layout(event)
    assert ready(run)["event_size"] == ctypes.sizeof(event)
    stats = ready(run)["stats"]
    assert stats["probe"] in ("fentry", "kprobe")
    assert stats["buffer"] == "ringbuf"      # every kernel in the matrix is >= 5.8
    final = [r for r in records if r["kind"] == "ack"][-1]["stats"]
    assert final["dropped"] == 0 and final["map_full"] == 0
    assert final["events"] == len(elephants(records)) + len(elephants(records, "END"))


def check_elephant(run: Run, phase="elephant", src="10.0.0.1", dst="10.0.0.2") -> None:
    """The elephant, in both zones, with its tuple, bytes, direction and age."""
    work, (start, end) = run.work, run.window
    port = data_port(work, f"iperf-{phase}.json")
    got = elephants(phases(run.records)[phase])
    assert sorted(e["key"]["zone"] for e in got) == [1, 2], got
    netns = ready(run)["netns"]
    ifindex = int((work / "pod1.ifindex").read_text())
    for e in got:
        assert e["key"] == {"netns": netns, "zone": e["key"]["zone"], "proto": socket.IPPROTO_TCP,
                            "src": src, "dst": dst, "sport": port, "dport": 5201}
        assert e["bytes_orig"] + e["bytes_reply"] >= INITIAL_BYTES
        assert e["bytes_orig"] > 10 * e["bytes_reply"], e      # client -> server
        assert e["packets_orig"] > 0 and e["packets_reply"] > 0
        assert e["ts"] - e["first_seen"] >= 1_000_000_000      # the age threshold
        assert start - 10e9 < e["first_seen"] < e["ts"] < end + 10e9   # epoch nanoseconds
        assert e["ifindex"] == ifindex                         # the SYN came in on pod1-ovs


def check_elephant6(run: Run) -> None:
    """The IPv6 elephant, in both zones, with its v6 tuple; its END at its close."""
    check_elephant(run, "elephant6", "fd00::1", "fd00::2")
    check_end_at_close(run, "elephant6", "delete6")


def check_mice(run: Run) -> None:
    """Mice (pings, a 200 KB transfer) stay in the kernel."""
    work, records = run.work, run.records
    ports = {(socket.IPPROTO_TCP, data_port(work, f"iperf-{name}.json"))
             for name in ("elephant", "elephant6", "live")}
    ports.add((socket.IPPROTO_UDP, data_port(work, "iperf-udp.json")))
    for e in elephants(records):
        assert (e["key"]["proto"], e["key"]["sport"]) in ports, e
    assert not elephants(phases(records)["mice"])


def check_end_at_close(run: Run, phase="elephant", after="udp") -> None:
    """An elephant ends when its TCP connection closes, though its entries stay
    (TIME_WAIT or CLOSE): not only when they are deleted; once in each zone."""
    work, records = run.work, run.records
    port = data_port(work, f"iperf-{phase}.json")
    closed = int((work / f"{phase}-closed.ns").read_text())
    ends = [e for e in elephants(phases(records)[phase], "END") if e["key"]["sport"] == port]
    assert sorted(e["key"]["zone"] for e in ends) == [1, 2], ends
    first = {e["key"]["zone"]: e for e in elephants(phases(records)[phase])
             if e["key"]["sport"] == port}
    for e in ends:
        assert e["ts"] <= closed + 2_000_000_000        # within 2 s of the close
        assert e["bytes_orig"] > first[e["key"]["zone"]]["bytes_orig"]
    if phase == "elephant":                              # 2 s after: still there
        table = (work / "elephant-after.txt").read_text()
        assert table.count(f"sport={port} dport=5201") == 2, table
    mine = [e for e in records if e["kind"] in ("ELEPHANT", "END") and e["key"]["sport"] == port
            and e["key"]["src"] == first[1]["key"]["src"]]
    assert len(mine) == 4, mine         # once each: no END again when the entries go
    assert not [e for e in elephants(phases(records)[after], "END")
                if e["key"]["sport"] == port]


def check_end(run: Run, phase="udp", deleted="delete") -> None:
    """Deleting a UDP elephant's conntrack entries (no close) sends END in both zones,
    counted to the end; not before."""
    records = run.records
    port = data_port(run.work, f"iperf-{phase}.json")
    ends = [e for e in elephants(phases(records)[deleted], "END") if e["key"]["sport"] == port]
    assert sorted(e["key"]["zone"] for e in ends) == [1, 2], ends
    assert not elephants(phases(records)[phase], "END")    # UDP has no close: it waited
    first = {e["key"]["zone"]: e for e in elephants(phases(records)[phase])
             if e["key"]["sport"] == port}
    for e in ends:
        el = first[e["key"]["zone"]]
        assert e["first_seen"] == el["first_seen"] and e["ts"] > el["ts"]
        assert e["bytes_orig"] > el["bytes_orig"]    # counted on to the end


def check_live_thresholds(run: Run) -> None:
    """A threshold change applies to a running flow, without a reload."""
    records = run.records
    port = data_port(run.work, "iperf-live.json")
    ph = phases(records)
    assert not elephants(ph["huge"]), "an elephant passed a 1 TB threshold"
    got = [e for e in elephants(ph["lower"]) if e["key"]["sport"] == port]
    assert sorted(e["key"]["zone"] for e in got) == [1, 2], got
    lowered = next(r for r in records if r.get("id") == "lower")
    # the same running flow, detected right after the change (the ack's wall
    # time is from just before it)
    assert all(e["first_seen"] < lowered["wall"] < e["ts"] for e in got)
    assert all(e["bytes_orig"] + e["bytes_reply"] >= 1_000_000 for e in got)


def check_zone_counters(run: Run) -> None:
    """The per-zone counters see every packet (mice too, which send no event) and
    every new flow, in each zone the flow passes, and nothing of the pods' own
    conntrack; they are cumulative across the phases."""
    work = run.work
    acks = {r["id"]: r["zones"] for r in run.records if r["kind"] == "ack"}
    assert set(acks["quit"]) == {"1", "2"}, acks["quit"]       # never zone 0 or pod2's

    def delta(a, b, zone, field):
        return acks[b].get(zone, {}).get(field, 0) - acks[a].get(zone, {}).get(field, 0)
    mouse = json.loads((work / "iperf-mouse.json").read_text())["end"]["sum_sent"]["bytes"]
    big = json.loads((work / "iperf-elephant.json").read_text())["end"]["sum_sent"]["bytes"]
    for zone in ("1", "2"):
        # mice: 3 pings (one ICMP flow) and one TCP transfer (control and data flows)
        assert delta("mice", "elephant", zone, "bytes") >= mouse
        assert delta("mice", "elephant", zone, "flows") >= 2
        assert delta("elephant", "udp", zone, "bytes") >= big
        assert delta("elephant", "udp", zone, "packets") > big / 65536
        assert 2 <= delta("elephant", "udp", zone, "flows") <= 4    # iperf3's 2 flows
        for field in ("bytes", "packets", "flows"):
            assert delta("mice", "quit", zone, field) >= 0


CHECKS = {"loads": check_loaded, "elephant": check_elephant, "mice": check_mice,
          "end-at-close": check_end_at_close, "end-at-delete": check_end,
          "elephant-ipv6": check_elephant6,
          "live-thresholds": check_live_thresholds, "zone-counters": check_zone_counters}


def matrix_row(suite: str, work: Path) -> dict:
    """Runs the scenario on `suite` and every check; one row of the matrix."""
    row = {"suite": suite, "kernel": None, "probe": None, "seconds": None,
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "checks": {}}
    try:
        kernel = ensure_kernel(suite)
        row["kernel"] = kernel.version
        run = run_scenario(kernel, work)
    except Exception as e:       # a kernel that cannot be fetched, booted or compiled for
        row["error"] = str(e)[-3000:]
        return row
    per_packet = ns_per_packet(run)
    row.update(kernel=run.kernel.version, probe=ready(run)["stats"]["probe"],
               when=time.strftime("%Y-%m-%d %H:%M UTC",    # its boot, not the wait for the VM
                                  time.gmtime(run.window[1] / 1e9 - run.seconds)),
               load_s=round(ready(run)["load_s"], 1), seconds=round(run.seconds),
               ns_per_packet=per_packet and round(per_packet))
    for name, check in CHECKS.items():
        try:
            check(run)
            row["checks"][name] = "pass"
        except Exception:
            row["checks"][name] = "FAIL"
            row.setdefault("failures", {})[name] = traceback.format_exc(limit=2)[-1500:]
    return row


def save(row: dict) -> None:
    """Keeps the newest row per suite in MATRIX_FILE."""
    rows = load()
    rows[row["suite"]] = row
    MATRIX_FILE.parent.mkdir(parents=True, exist_ok=True)
    MATRIX_FILE.write_text(json.dumps(rows, indent=1))


def load() -> dict:
    return json.loads(MATRIX_FILE.read_text()) if MATRIX_FILE.exists() else {}


def render(rows: dict) -> list[str]:
    """The matrix as text lines, one row per suite; none without rows."""
    if not rows:
        return []
    names = list(CHECKS)
    lines = [f"  {'suite':9} {'kernel':22} {'probe':6} {'load':>5} {'ns/pkt':>6} {'VM':>5} "
             + " ".join(f"{n:>{len(n)}}" for n in names) + "  when"]
    for suite in SUITES:
        if not (r := rows.get(suite)):
            continue
        cells = [r["checks"].get(n, "-") for n in names]
        load_s = f"{r['load_s']:.0f} s" if r.get("load_s") is not None else "-"
        vm_s = f"{r['seconds']} s" if r.get("seconds") is not None else "-"   # the whole boot
        lines.append(f"  {suite:9} {r['kernel'] or '?':22} {r['probe'] or '-':6} {load_s:>5} "
                     f"{r.get('ns_per_packet') or '-':>6} {vm_s:>5} "
                     + " ".join(f"{c:>{len(n)}}" for n, c in zip(names, cells))
                     + f"  {r['when']}")
        if r.get("error"):
            lines.append(f"    error: {r['error'].splitlines()[0][:200]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m integration.tracer_matrix", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suites", nargs="*", metavar="SUITE",
                    help=f"Debian suites ({', '.join(SUITES)}; default: all)")
    ap.add_argument("--workdir", default="/tmp/ovsfoot-kernels", help="logs, one dir per suite")
    a = ap.parse_args(argv)
    if unknown := set(a.suites) - set(SUITES):
        ap.error(f"unknown suite(s) {', '.join(sorted(unknown))}: choose from {', '.join(SUITES)}")
    ok = True
    for suite in a.suites or SUITES:
        progress(f"the tracer on {suite}'s kernel")
        work = Path(a.workdir) / suite
        work.mkdir(parents=True, exist_ok=True)
        row = matrix_row(suite, work)
        save(row)
        ok &= not row.get("error") and all(v == "pass" for v in row["checks"].values())
        for text in [row.get("error"), *row.get("failures", {}).values()]:
            if text:
                print(f"--- {suite}:\n{text}", file=sys.stderr)
    print("== the tracer on Debian's kernels (OVS kernel datapath, OVN-like zones) ==")
    print("\n".join(render(load())))
    print(f"logs: {a.workdir}; matrix: {MATRIX_FILE}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
