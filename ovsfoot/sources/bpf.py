"""The eBPF source: elephants decided in the kernel on conntrack (bpf/ovsfoot_ct.c).

The program counts every packet of every committed flow in the kernel, per
flow and per conntrack zone (per CPU: bytes, packets, new flows), and sends
user space one ELEPHANT event when a flow passes the thresholds and one END
event when that flow's TCP connection closes (its entry leaves ESTABLISHED) or
its conntrack entry is deleted; mice never leave the kernel. Each second the
elephants' counters are read back from the map as UPDATE events, so that an
elephant that has gone quiet ends on time; the zone counters are read when the
agent asks (each second). It is compiled with bcc when the source opens.
Everything that would keep it from running is checked first and reported as
SourceUnavailable.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import re
import socket
import time
from pathlib import Path

from ovsfoot import netns as ns
from ovsfoot.events import FlowEvent, FlowKey, Kind, Thresholds
from ovsfoot.rates import ZoneCounters
from ovsfoot.sources import SourceUnavailable

log = logging.getLogger(__name__)

PROGRAM = "ovsfoot_ct.c"
# Where the C program is: $OVSFOOT_BPF_DIR if set; else the package's ovsfoot/bpf/,
# which in the source tree is a link to bpf/ (the one source) and in a wheel the
# file itself (package data); else bpf/ beside the package (a tree whose checkout
# lost the link).
PACKAGE_BPF_DIR = Path(__file__).resolve().parents[1] / "bpf"
TREE_BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"

# enum counter in the C file, in order
COUNTERS = ("started", "late_starts", "ended", "elephants", "dropped", "map_full",
            "zone_over_limit")
PORT_PROTOS = {6, 17, 33, 132, 136}   # TCP, UDP, DCCP, SCTP, UDP-Lite
REFRESH_S = 1.0     # how often active elephants' counters are read back
HOOKS = ("__nf_conntrack_confirm", "__nf_ct_refresh_acct", "nf_ct_delete")
DESTROY_FNS = ("nf_ct_destroy", "destroy_conntrack")   # 5.19+, older
U64_MAX = 2**64 - 1      # struct config's bytes and age_ns


def _kernel_version() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def clock_offset() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC (the kernel's ktime), in ns: the tightest of 3 reads."""
    samples = []
    for _ in range(3):
        m1, r, m2 = time.monotonic_ns(), time.time_ns(), time.monotonic_ns()
        samples.append((m2 - m1, r - (m1 + m2) // 2))
    return min(samples)[1]


def _kallsyms(names: set[str]) -> dict[str, str]:
    """{name: module or "" if built in} for those of `names` the kernel has."""
    found = {}
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in names:
                    found[parts[2]] = parts[3].strip("[]") if len(parts) > 3 else ""
    except OSError as e:
        raise SourceUnavailable(f"cannot read /proc/kallsyms: {e.strerror}") from None
    return found


def _refresh_has_skb(release: str) -> bool:
    """Does __nf_ct_refresh_acct take the skb (before 6.13) or the byte count?

    Read from the headers: the change came to 6.12 stable too (6.12.113, Debian
    trixie's kernel), so the version alone is only the fallback."""
    for d in ("build", "source"):
        h = Path(f"/lib/modules/{release}/{d}/include/net/netfilter/nf_conntrack.h")
        if h.exists():
            m = re.search(r"void __nf_ct_refresh_acct\(([^;]*)\);", h.read_text())
            if m:
                return "sk_buff" in m.group(1)
    return _kernel_version() < (6, 13)


def program_file(name: str = PROGRAM) -> Path:
    """The eBPF C program `name` (see PACKAGE_BPF_DIR); SourceUnavailable if it is nowhere."""
    env = os.environ.get("OVSFOOT_BPF_DIR")
    dirs = [Path(env)] if env else [PACKAGE_BPF_DIR, TREE_BPF_DIR]
    for d in dirs:
        # (a checkout without symlinks leaves the link as a 22-byte text file)
        if (d / name).is_file() and (d / name).stat().st_size > 1024:
            return d / name
    raise SourceUnavailable(f"the eBPF program {name} is not in "
                            f"{' or '.join(str(d) for d in dirs)}: a broken installation "
                            f"(the wheel ships it as ovsfoot/bpf/{name})")


def plan(bcc) -> tuple[Path, list[str], list[str]]:
    """Check what the kernel allows, cheaply, before compiling anything.

    Returns the C program, the probe types to try in order ("fentry", "kprobe")
    and the compile-time flags; raises SourceUnavailable with the reason otherwise.
    """
    program = program_file()
    release = os.uname().release
    if os.geteuid() != 0:
        raise SourceUnavailable("loading eBPF programs needs root")
    lockdown = Path("/sys/kernel/security/lockdown")
    if lockdown.exists() and "[confidentiality]" in lockdown.read_text():
        raise SourceUnavailable("kernel lockdown (confidentiality) forbids eBPF reading "
                                "kernel memory")
    if not (Path(f"/lib/modules/{release}/build").exists()
            or Path("/sys/kernel/kheaders.tar.xz").exists()):
        raise SourceUnavailable(f"no kernel headers for {release} "
                                f"(install linux-headers-{release}, or load the kheaders module)")
    syms = _kallsyms(set(HOOKS) | set(DESTROY_FNS))
    missing = [h for h in HOOKS if h not in syms]
    destroy = next((d for d in DESTROY_FNS if d in syms), None)
    if missing or not destroy:
        raise SourceUnavailable(f"conntrack functions not in /proc/kallsyms "
                                f"({', '.join(missing) or 'nf_ct_destroy'}): "
                                "is nf_conntrack loaded?")
    hooked = [*HOOKS, destroy]
    probes = []
    # bcc (0.26) resolves fentry targets in vmlinux BTF only, not in modules.
    if bcc.BPF.support_kfunc() and not any(syms[h] for h in hooked):
        probes.append("fentry")
    if Path("/sys/bus/event_source/devices/kprobe").exists():
        probes.append("kprobe")
    if not probes:
        raise SourceUnavailable("neither fentry (needs BTF and conntrack built in) nor "
                                "kprobes (CONFIG_KPROBES) are available")
    version = _kernel_version()
    cflags = [f"-DDESTROY_FN={destroy}"]
    if version >= (5, 8):
        cflags.append("-DUSE_RINGBUF")
    if _refresh_has_skb(release):
        cflags.append("-DREFRESH_HAS_SKB")
    return program, probes, cflags + _kernel_cc_flags(release)


def _kernel_cc_flags(release: str) -> list[str]:
    """Compiler flags the kernel's headers need (6.19+: -fms-extensions, for anonymous
    tagged structs), from the CONFIG_CC_* options the kernel was built with."""
    conf = Path(f"/lib/modules/{release}/build/include/config/auto.conf")
    text = conf.read_text() if conf.exists() else ""
    return re.findall(r"^CONFIG_CC_MS_EXTENSIONS=(\S+)$", text, re.M)


def flow_event(e, offset: int) -> FlowEvent:
    """The FlowEvent of a kernel `struct event` `e` (bcc's `table.event()`, or any object
    with its fields), its ktime stamps moved by `offset` ns to the epoch."""
    if e.family == socket.AF_INET:
        src, dst = ipaddress.IPv4Address(bytes(e.src)[:4]), ipaddress.IPv4Address(bytes(e.dst)[:4])
    else:
        src, dst = ipaddress.IPv6Address(bytes(e.src)), ipaddress.IPv6Address(bytes(e.dst))
    ports = ((socket.ntohs(e.sport), socket.ntohs(e.dport)) if e.proto in PORT_PROTOS
             else (0, 0))
    key = FlowKey(e.netns, e.zone, e.proto, str(src), str(dst), *ports)
    return FlowEvent(Kind(e.kind), key, e.ts + offset, e.first_seen + offset, e.bytes[0],
                     e.bytes[1], e.packets[0], e.packets[1], e.ifindex)


class BpfSource:
    """Elephants and their ends from the kernel program, for conntrack in `netns`.

    `netns` is an `ip netns` name (None: our own namespace): only that
    namespace's conntrack counts, where the OVS datapath commits its flows.
    """

    name = "bpf"

    def __init__(self, thresholds: Thresholds, *, netns: str | None = None,
                 include_zone0: bool = False, max_flows: int = 65536,
                 buffer_pages: int = 64, max_zones: int = 4096,
                 extra_cflags: tuple[str, ...] = ()):
        try:
            import bcc
        except ImportError:
            raise SourceUnavailable("bcc is not installed (Debian: python3-bpfcc)") from None
        try:
            self.netns_inode = ns.inode(netns)
        except FileNotFoundError as e:
            raise SourceUnavailable(str(e)) from None
        self.netns = netns
        self.include_zone0 = include_zone0
        program, probes, cflags = plan(bcc)
        cflags += [f"-DMAX_FLOWS={max_flows}", f"-DRINGBUF_PAGES={buffer_pages}",
                   f"-DMAX_ZONES={max_zones}", *extra_cflags]     # bench/zonecost.py
        self.max_zones = max_zones
        self.ringbuf = "-DUSE_RINGBUF" in cflags
        self._bpf, self.probe, reasons = None, None, []
        for probe in probes:
            t0 = time.monotonic()
            try:
                self._bpf = bcc.BPF(src_file=str(program),
                                    cflags=cflags + (["-DUSE_FENTRY"] if probe == "fentry" else []))
            except Exception as e:   # bcc raises bare Exceptions for compile and attach errors
                reasons.append(f"{probe}: {e}")
                log.warning("bpf: cannot load the %s program: %s", probe, e)
                continue
            self.probe = probe
            log.info("bpf: %s program loaded in %.1f s (%s)", probe, time.monotonic() - t0,
                     " ".join(cflags))
            break
        else:
            raise SourceUnavailable("cannot load the eBPF program: " + "; ".join(reasons))
        self._pending: list[FlowEvent] = []
        self._offset = clock_offset()
        # elephant entry address -> (its kernel first_seen, its ELEPHANT event)
        self._reported: dict[int, tuple[int, FlowEvent]] = {}
        self._next_refresh = 0.0
        self.events = 0
        events = self._events = self._bpf["events"]
        # bcc derives the event's ctypes type at the first decode, a regular expression a
        # field: here, not on the first elephant's path (ms under emulation)
        events.event(ctypes.create_string_buffer(1))
        if self.ringbuf:
            events.open_ring_buffer(self._on_event)
            self._fds = [events.map_fd]
        else:
            events.open_perf_buffer(self._on_event, page_cnt=buffer_pages)
            from bcc.libbcc import lib
            self._fds = [lib.perf_reader_fd(r) for r in self._bpf.perf_buffers.values()]
        self.set_thresholds(thresholds)   # also sets the namespace: tracking starts here

    clock = staticmethod(time.time_ns)

    def set_thresholds(self, thresholds: Thresholds) -> None:
        """Write the thresholds to the kernel's config map; applies to the next packet."""
        thresholds.validate()
        age_ns = int(thresholds.seconds * 1e9)
        for name, value in (("bytes", thresholds.bytes), ("age_ns", age_ns)):
            if not 0 <= value <= U64_MAX:   # ctypes would keep only the low 64 bits
                raise ValueError(f"{name}={value} does not fit the kernel map's u64 "
                                 f"(0 to {U64_MAX})")
        cfg = self.bpf["config"]
        v = cfg.Leaf()
        v.bytes = thresholds.bytes
        v.age_ns = age_ns
        v.netns = self.netns_inode
        v.zone0 = int(self.include_zone0)
        cfg[cfg.Key(0)] = v

    def _on_event(self, _ctx, data, _size) -> None:
        e = self._events.event(data)    # struct event, as bcc reads it from the C file
        if e.kind == Kind.ELEPHANT:
            if self._reported.get(e.flow, (None,))[0] == e.first_seen:
                return              # the same crossing reported by two CPUs
        else:
            self._reported.pop(e.flow, None)
        ev = flow_event(e, self._offset)
        if e.kind == Kind.ELEPHANT:
            if not self._reported:      # its counters are in the event: none to read back now
                self._next_refresh = time.monotonic() + REFRESH_S
            self._reported[e.flow] = (e.first_seen, ev)
        self._pending.append(ev)
        self.events += 1

    def _refresh(self) -> list[FlowEvent]:
        """UPDATE events with the counters of the elephants still in the map, END for
        those gone from it, so that user space can tell when one has gone idle
        (a silent flow that never closes, UDP or TCP, keeps its entry for minutes)."""
        flows, now, out = self._bpf["flows"], time.time_ns(), []
        for addr, (_, ev) in list(self._reported.items()):
            try:
                f = flows[flows.Key(addr)]
            except KeyError:            # evicted, or its END was lost
                del self._reported[addr]
                out.append(FlowEvent(Kind.END, ev.key, now, ev.first_seen))
                continue
            out.append(FlowEvent(Kind.UPDATE, ev.key, now, ev.first_seen, f.bytes[0],
                                 f.bytes[1], f.packets[0], f.packets[1], ev.ifindex))
        return out

    def run(self) -> list[FlowEvent]:
        offset = clock_offset()
        if abs(offset - self._offset) > 1_000_000:   # the clock was set; ignore jitter
            self._offset = offset
        if self.ringbuf:
            self._bpf.ring_buffer_consume()
        else:
            self._bpf.perf_buffer_poll(0)
        events, self._pending = self._pending, []
        if self._reported and time.monotonic() >= self._next_refresh:
            self._next_refresh = time.monotonic() + REFRESH_S
            events += self._refresh()
        return events

    @property
    def bpf(self):
        """The loaded program (a bcc.BPF), for tools that read its programs' and maps'
        kernel statistics beside the source: bench/, the tracer matrix."""
        return self._bpf

    def zone_counters(self) -> dict[int, ZoneCounters]:
        """The kernel's per-zone counters, summed over the CPUs: only the zones a
        flow was tracked in (`zones_seen`), not the whole array."""
        zones, out = self._bpf["zones"], {}
        for zone in self._bpf["zones_seen"].keys():
            cpus = zones[zones.Key(zone.value)]
            out[zone.value] = ZoneCounters(sum(c.bytes for c in cpus),
                                           sum(c.packets for c in cpus),
                                           sum(c.flows for c in cpus))
        return out

    def wait(self, poller) -> None:
        import ovs.poller
        for fd in self._fds:
            poller.fd_wait(fd, ovs.poller.POLLIN)
        if self._reported:
            poller.timer_wait(max(0, int((self._next_refresh - time.monotonic()) * 1000)))

    def stats(self) -> dict:
        counters = self._bpf["counters"]
        c = {name: counters.sum(counters.Key(i)).value for i, name in enumerate(COUNTERS)}
        tracked = len(self._bpf["flows"])
        zones = len(self._bpf["zones_seen"])
        return {"source": self.name, "probe": self.probe,
                "buffer": "ringbuf" if self.ringbuf else "perf",
                "netns": self.netns or "(own)", "netns_inode": self.netns_inode,
                "events": self.events, "flows_tracked": tracked,
                # flows in a zone >= max_zones are not counted (rates read 0 for it):
                # zone_over_limit counts them
                "zones_counted": zones, "zones_full": c["zone_over_limit"] > 0,
                # flows that left the map without being deleted were evicted
                "evictions": max(0, c["started"] + c["late_starts"] - c["ended"] - tracked),
                **c}

    def close(self) -> None:
        if self._bpf:
            self._bpf.cleanup()
            self._bpf = None
