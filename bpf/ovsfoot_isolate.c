// SPDX-License-Identifier: GPL-2.0
/*
 * ovsfoot_isolate: a tc classifier (cls_bpf, direct action) on the egress of
 * the node's Geneve underlay, loaded with bcc by ovsfoot/isolation.py.
 *
 * It parses the outer Ethernet (one VLAN tag), IPv4 or IPv6 and UDP headers,
 * then the Geneve header with its options (any length), then the inner
 * Ethernet (one VLAN tag) and IPv4 or IPv6 header and ports, and looks the
 * inner 5-tuple up in `elephants`, the map of active elephants the agent fills
 * and empties. An elephant's packet goes to the qdisc's second band (classid
 * :2, served only when the first is empty); every other packet, also one that
 * cannot be parsed (fragments, other UDP, other protocols), to the first (:1).
 * With a DSCP configured, an elephant's outer DSCP is rewritten (IPv4 with
 * its header checksum; the UDP checksum does not cover it).
 *
 * Compile-time switches, set by isolation.py:
 *   MAX_FLOWS          size of the elephants map (each elephant is two
 *                      entries, one per direction)
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>

#define ETH_P_TEB_      0x6558          /* Geneve protocol type: Ethernet */
#define ETH_P_8021Q_    0x8100
#define ETH_P_8021AD_   0x88A8
#define IP_MF_          0x2000
#define IP_OFFSET_      0x1FFF
#define NEXTHDR_FRAG    44
#define NO_DSCP         0xFF
#define BAND_NORMAL     1               /* classid minor: prio band 0 */
#define BAND_ELEPHANT   2               /* classid minor: prio band 1 */

enum counter {                          /* ovsfoot.isolation.COUNTERS, in order */
	C_NORMAL_PACKETS,
	C_NORMAL_BYTES,
	C_ELEPHANT_PACKETS,
	C_ELEPHANT_BYTES,
	C_GENEVE,                       /* Geneve packets parsed to the inner tuple */
	C_NOT_GENEVE,                   /* not IP/UDP to the Geneve port */
	C_FRAGMENT,                     /* outer or inner fragments: not looked up */
	C_UNPARSED,                     /* too short, unknown version or protocol */
	C_DSCP,                         /* outer DSCP rewritten */
	NR_COUNTERS,
};

struct config {
	u32 geneve_port;                /* host order */
	u32 dscp;                       /* 0-63, or NO_DSCP */
};

/* The inner tuple, as conntrack's original or reply direction sees it. */
struct flow_key {
	u8 family;                      /* AF_INET, AF_INET6 */
	u8 proto;
	__be16 sport;                   /* 0 for protocols without ports */
	__be16 dport;
	u16 pad;
	u8 src[16];                     /* IPv4: the first 4 bytes */
	u8 dst[16];
};

struct isolated {
	u64 packets;
	u64 bytes;
	u64 first_ns;                   /* ktime of the first isolated packet; 0: none yet */
	u64 last_ns;
};

BPF_HASH(elephants, struct flow_key, struct isolated, MAX_FLOWS);
BPF_ARRAY(config, struct config, 1);
BPF_PERCPU_ARRAY(counters, u64, NR_COUNTERS);

static __always_inline void count(int which, u64 n)
{
	u64 *c = counters.lookup(&which);
	if (c)
		*c += n;
}

/* Skips one VLAN tag. Returns the ethertype (host order) and sets *off to
 * the L3 header, or 0 if the frame is too short. */
static __always_inline u16 ethertype(struct __sk_buff *skb, u32 *off)
{
	__be16 proto;
	if (bpf_skb_load_bytes(skb, *off + 12, &proto, 2) < 0)
		return 0;
	*off += ETH_HLEN;
	if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_)) {
		if (bpf_skb_load_bytes(skb, *off + 2, &proto, 2) < 0)
			return 0;
		*off += 4;
	}
	return bpf_ntohs(proto);
}

/* Parses the L3 header at *off. Returns the L4 protocol and sets *off to the
 * L4 header; fills the key's family and addresses if `key`.
 * -1: not IP or truncated; -2: a fragment. */
static __always_inline int l3(struct __sk_buff *skb, u16 type, u32 *off,
			      struct flow_key *key)
{
	if (type == ETH_P_IP) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, *off, &ip, sizeof(ip)) < 0 ||
		    ip.version != 4 || ip.ihl < 5)
			return -1;
		if (ip.frag_off & bpf_htons(IP_MF_ | IP_OFFSET_))
			return -2;
		if (key) {
			key->family = 2;        /* AF_INET */
			__builtin_memcpy(key->src, &ip.saddr, 4);
			__builtin_memcpy(key->dst, &ip.daddr, 4);
		}
		*off += ip.ihl * 4;
		return ip.protocol;
	}
	if (type == ETH_P_IPV6) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, *off, &ip6, sizeof(ip6)) < 0 || ip6.version != 6)
			return -1;
		if (ip6.nexthdr == NEXTHDR_FRAG)
			return -2;
		if (key) {
			key->family = 10;       /* AF_INET6 */
			__builtin_memcpy(key->src, &ip6.saddr, 16);
			__builtin_memcpy(key->dst, &ip6.daddr, 16);
		}
		*off += sizeof(ip6);
		return ip6.nexthdr;
	}
	return -1;
}

static __always_inline int has_ports(int proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_DCCP ||
	       proto == IPPROTO_SCTP || proto == IPPROTO_UDPLITE;
}

/* Rewrites the outer DSCP of the IP header at `off` (ECN kept). */
static __always_inline void set_dscp(struct __sk_buff *skb, u16 type, u32 off, u8 dscp)
{
	u8 b[2];
	if (bpf_skb_load_bytes(skb, off, b, 2) < 0)
		return;
	if (type == ETH_P_IP) {
		u8 tos = (dscp << 2) | (b[1] & 3);
		if (tos == b[1])
			return;
		__be16 old = bpf_htons((b[0] << 8) | b[1]), new = bpf_htons((b[0] << 8) | tos);
		if (bpf_skb_store_bytes(skb, off + 1, &tos, 1, 0) < 0 ||
		    bpf_l3_csum_replace(skb, off + offsetof(struct iphdr, check), old, new, 2) < 0)
			return;
	} else {
		/* version(4) traffic class(8) flow label(20): DSCP spans the two bytes */
		u8 n[2] = {(b[0] & 0xF0) | (dscp >> 2), (b[1] & 0x3F) | ((dscp & 3) << 6)};
		if (n[0] == b[0] && n[1] == b[1])
			return;
		if (bpf_skb_store_bytes(skb, off, n, 2, 0) < 0)
			return;
	}
	count(C_DSCP, 1);
}

static __always_inline int band(struct __sk_buff *skb, int which)
{
	skb->tc_classid = which;
	if (which == BAND_ELEPHANT) {
		count(C_ELEPHANT_PACKETS, 1);
		count(C_ELEPHANT_BYTES, skb->len);
	} else {
		count(C_NORMAL_PACKETS, 1);
		count(C_NORMAL_BYTES, skb->len);
	}
	return TC_ACT_OK;
}

int classify(struct __sk_buff *skb)
{
	int zero = 0;
	struct config *cfg = config.lookup(&zero);
	if (!cfg)
		return band(skb, BAND_NORMAL);

	/* outer Ethernet, IP, UDP to the Geneve port */
	u32 off = 0, outer;
	u16 type = ethertype(skb, &off);
	outer = off;
	int proto = l3(skb, type, &off, 0);
	if (proto == -2) {
		count(C_FRAGMENT, 1);
		return band(skb, BAND_NORMAL);
	}
	struct { __be16 sport, dport, len, check; } udp;
	if (proto != IPPROTO_UDP || bpf_skb_load_bytes(skb, off, &udp, sizeof(udp)) < 0 ||
	    udp.dport != bpf_htons(cfg->geneve_port)) {
		count(C_NOT_GENEVE, 1);
		return band(skb, BAND_NORMAL);
	}
	off += sizeof(udp);

	/* Geneve: version(2) option length(6, in 4-byte words), flags, protocol type */
	u8 gnv[4];
	if (bpf_skb_load_bytes(skb, off, gnv, 4) < 0 || (gnv[0] >> 6) != 0) {
		count(C_UNPARSED, 1);
		return band(skb, BAND_NORMAL);
	}
	u16 inner_type = (gnv[2] << 8) | gnv[3];
	off += 8 + (gnv[0] & 0x3F) * 4;
	if (inner_type == ETH_P_TEB_)
		inner_type = ethertype(skb, &off);

	/* the inner tuple */
	struct flow_key key = {};
	proto = l3(skb, inner_type, &off, &key);
	if (proto == -2) {
		count(C_FRAGMENT, 1);
		return band(skb, BAND_NORMAL);
	}
	if (proto < 0) {
		count(C_UNPARSED, 1);
		return band(skb, BAND_NORMAL);
	}
	key.proto = proto;
	if (has_ports(proto)) {
		__be16 ports[2];
		if (bpf_skb_load_bytes(skb, off, ports, 4) < 0) {
			count(C_UNPARSED, 1);
			return band(skb, BAND_NORMAL);
		}
		key.sport = ports[0];
		key.dport = ports[1];
	}
	count(C_GENEVE, 1);

	struct isolated *e = elephants.lookup(&key);
	if (!e)
		return band(skb, BAND_NORMAL);
	u64 now = bpf_ktime_get_ns();
	if (!e->first_ns)
		e->first_ns = now;
	e->last_ns = now;
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, skb->len);
	if (cfg->dscp <= 63)
		set_dscp(skb, type, outer, cfg->dscp);
	return band(skb, BAND_ELEPHANT);
}
