"""Kernel conntrack in OVN's zones, standing in for the OVS kernel datapath.

On a host without the openvswitch module, the userspace datapath's conntrack
has no byte counters. This builds what the kernel datapath would do with
OVN's pipeline: every packet is tracked twice, once in the zone of the port it
comes from and once in the zone of the port it goes to, in one network
namespace (the "datapath namespace"), using the zones ovn-controller really
assigned. Pods get a second, dual-stack interface (eth1) into that namespace:

  pod eth1 -- v<n> [zone of the sender] -> lx ==veth==> ly [zone of the receiver] -> v<m> -- pod

Packets from pods are policy-routed through the lx/ly veth loop, so they
enter the namespace a second time and meet conntrack again. IPv6 takes the
same way; its next hop on the loop is a neighbour entry for ly's MAC, because
IPv6 will not route via an address of its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from integration.programs import require
from integration.sandbox import sh

LOOP_NET = "10.77.250"
LOOP_NET6 = "fd77:250::"
LOOP_HOP6 = "fd77:250::99"      # a neighbour entry, not an address: ly's MAC


@dataclass(frozen=True)
class PathPort:
    ip: str         # the pod's eth1 addresses
    ip6: str
    zone: int
    dev: str        # its peer in the datapath namespace


@dataclass
class KernelPath:
    netns: str                                  # the datapath namespace
    pods: dict[str, PathPort] = field(default_factory=dict)   # pod namespace -> its port

    def create(self) -> "KernelPath":
        require("ip", "sysctl", "nft")
        ns = self.netns
        sh("ip", "netns", "add", ns)
        run = lambda *c: sh("ip", "netns", "exec", ns, *c)   # noqa: E731
        run("ip", "link", "set", "lo", "up")
        run("ip", "link", "add", "lx", "type", "veth", "peer", "name", "ly")
        run("ip", "addr", "add", f"{LOOP_NET}.1/30", "dev", "lx")
        run("ip", "addr", "add", f"{LOOP_NET}.2/30", "dev", "ly")
        for dev in ("lx", "ly"):
            run("ip", "link", "set", dev, "up")
        run("ip", "route", "add", "default", "via", f"{LOOP_NET}.2", "dev", "lx", "table", "100")
        run("ip", "-6", "addr", "add", f"{LOOP_NET6}1/64", "dev", "lx", "nodad")
        run("ip", "-6", "addr", "add", f"{LOOP_NET6}2/64", "dev", "ly", "nodad")
        mac = run("cat", "/sys/class/net/ly/address").strip()
        run("ip", "-6", "neigh", "add", LOOP_HOP6, "lladdr", mac, "dev", "lx", "nud", "permanent")
        run("ip", "-6", "route", "add", "default", "via", LOOP_HOP6, "dev", "lx", "table", "100")
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf.lx.rp_filter=0",
                    "net.ipv4.conf.ly.rp_filter=0", "net.ipv4.conf.all.accept_local=1"):
            run("sysctl", "-qw", key)
        return self

    def attach(self, pod_ns: str, index: int, zone: int) -> PathPort:
        """Gives pod `pod_ns` a dual-stack eth1 into the datapath namespace."""
        ip, gw, dev = f"10.77.{index}.2", f"10.77.{index}.1", f"v{index}"
        ip6, gw6 = f"fd77:{index}::2", f"fd77:{index}::1"
        sh("ip", "-n", self.netns, "link", "add", dev, "type", "veth", "peer", "name", "eth1",
           "netns", pod_ns)
        sh("ip", "-n", self.netns, "addr", "add", f"{gw}/24", "dev", dev)
        sh("ip", "-n", self.netns, "link", "set", dev, "up")
        sh("ip", "-n", self.netns, "-6", "addr", "add", f"{gw6}/64", "dev", dev, "nodad")
        sh("ip", "-n", self.netns, "rule", "add", "iif", dev, "lookup", "100")
        sh("ip", "-n", self.netns, "-6", "rule", "add", "iif", dev, "lookup", "100")
        sh("ip", "netns", "exec", self.netns, "sysctl", "-qw", f"net.ipv4.conf.{dev}.rp_filter=0")
        sh("ip", "-n", pod_ns, "addr", "add", f"{ip}/24", "dev", "eth1")
        sh("ip", "-n", pod_ns, "-6", "addr", "add", f"{ip6}/64", "dev", "eth1", "nodad")
        sh("ip", "-n", pod_ns, "link", "set", "eth1", "up")
        sh("ip", "-n", pod_ns, "route", "add", "10.77.0.0/16", "via", gw, "dev", "eth1")
        sh("ip", "-n", pod_ns, "-6", "route", "add", "fd77::/16", "via", gw6, "dev", "eth1")
        self.pods[pod_ns] = port = PathPort(ip, ip6, zone, dev)
        self._rules()
        return port

    def set_zone(self, pod_ns: str, zone: int) -> None:
        """Moves pod `pod_ns`'s traffic into conntrack zone `zone`."""
        self.pods[pod_ns] = dataclasses.replace(self.pods[pod_ns], zone=zone)
        self._rules()

    def _rules(self) -> None:
        ports = self.pods.values()
        by_dev = "\n".join(f'    iifname "{p.dev}" ct zone set {p.zone}' for p in ports)
        by_dst = ", ".join(f"{p.ip} : {p.zone}" for p in ports)
        by_dst6 = ", ".join(f"{p.ip6} : {p.zone}" for p in ports)
        sh("ip", "netns", "exec", self.netns, "nft", "-f", "-", input=f"""
table inet ovsfoot_zones
delete table inet ovsfoot_zones
table inet ovsfoot_zones {{
  chain prerouting {{
    type filter hook prerouting priority raw; policy accept;
{by_dev}
    iifname "ly" ct zone set ip daddr map {{ {by_dst} }}
    iifname "ly" ct zone set ip6 daddr map {{ {by_dst6} }}
  }}
}}
""")

    def destroy(self) -> None:
        sh("ip", "netns", "del", self.netns, check=False)
