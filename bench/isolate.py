"""What the isolation classifier costs per packet (host: tc programs load here).

BPF_PROG_TEST_RUN runs the loaded classifier N times on one crafted packet and
the kernel reports the mean time per run. The baseline is a minimal classifier
compiled the same way (it sets the band and returns), run on the same packet,
alternated with it in pairs: the difference is what parsing Geneve and the map
lookup add. Packets: a Geneve mouse (OVN's one 8-byte option, inner IPv4 TCP),
an elephant (a map hit: counters and timestamps), the elephant with the outer
DSCP rewrite, and plain UDP (not Geneve: the shortest path).
"""

from __future__ import annotations

from bench.common import Result, median
from integration.bpf_packets import eth, geneve, inner_frame, ipv4, l4, outer4
from integration.bpf_packets import run as test_run
from ovsfoot.events import FlowKey

BASELINE = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
int classify(struct __sk_buff *skb) { skb->tc_classid = 1; return TC_ACT_OK; }
"""
ELEPHANT = FlowKey(0, 5, 6, "10.0.0.11", "10.0.0.13", 40000, 5201)
MOUSE = FlowKey(0, 5, 6, "10.0.0.12", "10.0.0.14", 40000, 11111)
# 10 Gbit/s of 1500-byte packets leaves 1.2 us per packet on one core
GOAL_NS = 120


def _baseline_fd():
    from ovsfoot.isolation import load_tc_program
    b, fn = load_tc_program(text=BASELINE)
    return b, fn.fd


def run(quick: bool = False, log=print) -> list[Result]:
    from ovsfoot.isolation import Classifier
    repeat, pairs = (100_000, 3) if quick else (1_000_000, 7)
    c = Classifier()
    c.add(ELEPHANT)
    base_bpf, base_fd = _baseline_fd()
    packets = {
        "mouse": (outer4(geneve(inner_frame(MOUSE), 2)), None),
        "elephant": (outer4(geneve(inner_frame(ELEPHANT), 2)), None),
        "elephant_dscp": (outer4(geneve(inner_frame(ELEPHANT), 2)), 10),
        "not_geneve": (eth(0x0800, ipv4("192.168.50.1", "192.168.50.2", 17, l4(1, 53))), None),
    }
    results = []
    for name, (packet, dscp) in packets.items():
        c.set_dscp(dscp)
        ns, base = [], []
        for _ in range(pairs):
            base.append(test_run(base_fd, packet, repeat)[2])
            ns.append(test_run(c.fd, packet, repeat)[2])
        v, b = median(ns), median(base)
        log(f"isolate {name}: {v} ns per packet, baseline {b} ns ({len(packet)} bytes)")
        results.append(Result(
            f"isolate_ns_{name}", v, "ns/packet", b, "a minimal tc classifier, same packet",
            v - b, f"classifier's own cost (value - baseline) <= {GOAL_NS} ns",
            v - b <= GOAL_NS, ratio_is="value - baseline (ns)",
            detail={"runs_ns": ns, "baseline_runs_ns": base, "repeat": repeat,
                    "packet_bytes": len(packet)}))
    c.set_dscp(None)
    c.close()
    base_bpf.cleanup()
    return results

