// SPDX-License-Identifier: GPL-2.0
/*
 * ovsfoot_ct: elephant-flow detection on conntrack, loaded with bcc by
 * ovsfoot/sources/bpf.py.
 *
 * A flow is tracked from when its conntrack entry is confirmed (committed;
 * the OVS datapath's ct(commit) confirms it) until it is deleted. Every packet
 * conntrack accounts adds to the flow's counters; the first packet to see the
 * flow past both thresholds emits one ELEPHANT event, and an elephant's TCP
 * close (its entry leaving ESTABLISHED) or deletion emits one END event. Mice
 * never leave the kernel: they only add to their zone's per-CPU counters
 * (bytes, packets, flows confirmed), which user space reads each second for
 * every port's throughput and flow rate.
 *
 * Only entries in the configured network namespace count (pods' namespaces
 * have their own conntrack tables and would count the same bytes again), and
 * zone 0 only if asked. Thresholds and filters live in the `config` map, so
 * user space changes them without reloading.
 *
 * Compile-time switches, set by bpf.py:
 *   USE_FENTRY         fentry programs instead of kprobes
 *   USE_RINGBUF        ring buffer (kernel >= 5.8) instead of perf buffer
 *   REFRESH_HAS_SKB    __nf_ct_refresh_acct(ct, ctinfo, skb, extra_jiffies,
 *                      do_acct) as before 6.13 (and 6.12.113); else (ct,
 *                      ctinfo, extra_jiffies, bytes)
 *   DESTROY_FN         nf_ct_destroy, or destroy_conntrack before 5.19
 *   MAX_FLOWS          size of the per-flow LRU map
 *   MAX_ZONES          zones counted: 0 to MAX_ZONES - 1 (default 4096)
 *   NO_ZONE_COUNTERS   count no zone (bench/zonecost.py: the counters' cost)
 *   RINGBUF_PAGES      size of the ring or perf buffer, in pages
 */
/*
 * bcc <= 0.29 brings its own copy of the UAPI linux/bpf.h (its guard keeps the
 * kernel's out), older than the kernel headers of 6.12 and later, whose
 * linux/bpf.h takes the size of these types and names these constants. The
 * types are renamed so that a bcc that has them does not see a redefinition.
 */
#define bpf_wq ovsfoot_bpf_wq
#define bpf_rb_root ovsfoot_bpf_rb_root
#define bpf_rb_node ovsfoot_bpf_rb_node
#define bpf_refcount ovsfoot_bpf_refcount
#define bpf_task_work ovsfoot_bpf_task_work
struct bpf_wq { __u64 __opaque[2]; } __attribute__((aligned(8)));
struct bpf_rb_root { __u64 __opaque[2]; } __attribute__((aligned(8)));
struct bpf_rb_node { __u64 __opaque[4]; } __attribute__((aligned(8)));
struct bpf_refcount { __u32 __opaque[1]; } __attribute__((aligned(4)));
struct bpf_task_work { __u64 __opaque; } __attribute__((aligned(8)));
#define BPF_F_CPU 8                     /* 7.x */
#define BPF_F_ALL_CPUS 16
#define BPF_TRACE_FSESSION 58
#define BPF_TRACE_FENTRY_MULTI 59
#define BPF_TRACE_FEXIT_MULTI 60
#define BPF_TRACE_FSESSION_MULTI 61

#include <linux/skbuff.h>
#include <net/net_namespace.h>
#include <net/netfilter/nf_conntrack.h>

enum kind { KIND_ELEPHANT = 2, KIND_END = 3 };   /* ovsfoot.events.Kind */

enum counter {
	C_STARTED,      /* flows tracked from their confirmation */
	C_LATE,         /* confirmed flows first seen on a packet (older than
	                   the tracer, or evicted from the LRU map) */
	C_ENDED,        /* tracked flows deleted */
	C_ELEPHANTS,
	C_DROPPED,      /* events lost: ring or perf buffer full */
	C_MAP_FULL,     /* flows not tracked: the map had no room */
	C_ZONE_OVER,    /* flows tracked in a zone >= MAX_ZONES: not counted per zone */
	NR_COUNTERS,
};

struct config {
	u64 bytes;      /* elephant: at least this many bytes, both directions */
	u64 age_ns;     /* ... and at least this old */
	u32 netns;      /* inode of the network namespace to watch; 0: none yet */
	u32 zone0;      /* count zone 0 too */
};

struct flow {
	u64 first_seen; /* ktime ns */
	u64 bytes[2];   /* per direction: IP_CT_DIR_ORIGINAL, IP_CT_DIR_REPLY */
	u64 packets[2];
	u32 ifindex;    /* device of the packet that confirmed the flow */
	u32 elephant;   /* enum elephant_state */
	u32 zone;       /* its conntrack zone, read once when tracking starts */
	u32 timeout;    /* the timeout conntrack last set it (jiffies, low 32 bits) */
	u8 proto;       /* its IP protocol, read once when tracking starts */
	u8 pad[7];
};

enum elephant_state {
	ELEPHANT_NO,            /* not reported */
	ELEPHANT_ACTIVE,        /* ELEPHANT sent */
	ELEPHANT_CLOSED,        /* END sent: its TCP connection closed, the entry lives on */
};

/* Per conntrack zone and CPU, since the program loaded; read by bpf.py. */
struct zone_counters {
	u64 bytes;      /* both directions */
	u64 packets;
	u64 flows;      /* flows confirmed (committed) in the zone */
};

/*
 * An event to user space. This is its only definition: bcc derives the type that
 * bpf.py reads it with from these fields (table.event()). bcc decodes u8, u16, u32
 * and u64, alone or in arrays; explicit padding, no holes (tests/unit/test_bpf_event.py).
 */
struct event {
	u64 flow;       /* the struct nf_conn address: a flow id while it lives */
	u64 ts;         /* ktime ns */
	u64 first_seen;
	u64 bytes[2];
	u64 packets[2];
	u8 src[16];     /* original direction; IPv4 in the first 4 bytes */
	u8 dst[16];
	u32 netns;
	u32 ifindex;
	u16 zone;
	u16 family;
	u16 sport;      /* network byte order; ICMP id for ICMP */
	u16 dport;
	u8 proto;
	u8 kind;
	u8 pad[6];
};

BPF_ARRAY(config, struct config, 1);
BPF_TABLE("lru_hash", u64, struct flow, flows, MAX_FLOWS);
BPF_PERCPU_ARRAY(counters, u64, NR_COUNTERS);
#ifndef MAX_ZONES
#define MAX_ZONES 4096
#endif
/*
 * Indexed by the zone: an array lookup per packet, no hashing (OVN allocates
 * zones from 1 upward, the lowest free first, so a node's are small numbers).
 * zones_seen holds the zones a flow was tracked in (written once per flow), so
 * that user space reads only those.
 */
BPF_PERCPU_ARRAY(zones, struct zone_counters, MAX_ZONES);
/*
 * Entries outside the watched namespace and zones (the pods' own conntrack,
 * zone 0), remembered so that their packets cost one lookup more than a miss
 * in `flows` rather than the reads that tell (an entry's namespace and zone
 * never change, nor do the agent's).
 */
BPF_TABLE("lru_hash", u64, u8, others, MAX_FLOWS);
BPF_HASH(zones_seen, u32, u8, MAX_ZONES);
#ifdef USE_RINGBUF
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#else
BPF_PERF_OUTPUT(events);
#endif

static __always_inline void count(int c)
{
	u64 *v = counters.lookup(&c);

	if (v)
		(*v)++;
}

static __always_inline u16 ct_zone(struct nf_conn *ct)
{
	u16 zone = 0;
#ifdef CONFIG_NF_CONNTRACK_ZONES
	bpf_probe_read_kernel(&zone, sizeof(zone), &ct->zone.id);
#endif
	return zone;
}

/* Is this entry in the watched network namespace and zones? */
static __always_inline bool watched(struct nf_conn *ct, struct config *cfg)
{
	struct net *net = NULL;
	u32 inum = 0;

	bpf_probe_read_kernel(&net, sizeof(net), &ct->ct_net.net);
	bpf_probe_read_kernel(&inum, sizeof(inum), &net->ns.inum);
	return inum == cfg->netns && (cfg->zone0 || ct_zone(ct));
}

/* Has this TCP entry left ESTABLISHED for the close (FIN_WAIT, CLOSE_WAIT,
 * LAST_ACK, TIME_WAIT, CLOSE)? conntrack updates the state before it accounts
 * the packet, so the packet that closes is the one that tells. Each state
 * comes with its own timeout, which the hook is passed: the state is read only
 * when the timeout is not the one of the flow's last packet (an established
 * flow's changes only between its own and the unacknowledged-data one). */
static __always_inline bool tcp_closing(struct nf_conn *ct, struct flow *f, u32 timeout)
{
	u8 state = 0;

	if (f->proto != IPPROTO_TCP || timeout == f->timeout)
		return false;
	f->timeout = timeout;
	bpf_probe_read_kernel(&state, sizeof(state), &ct->proto.tcp.state);
	return state >= TCP_CONNTRACK_FIN_WAIT && state <= TCP_CONNTRACK_CLOSE;
}

/* Send an event about `ct`; returns 0, or nonzero if the buffer was full. */
static __always_inline int emit(void *ctx, struct nf_conn *ct, struct flow *f,
				u8 kind, struct config *cfg)
{
	struct nf_conntrack_tuple t = {};
#ifdef USE_RINGBUF
	struct event *e = events.ringbuf_reserve(sizeof(*e));

	if (!e) {
		count(C_DROPPED);
		return -1;
	}
#else
	struct event ev = {}, *e = &ev;
#endif
	bpf_probe_read_kernel(&t, sizeof(t), &ct->tuplehash[IP_CT_DIR_ORIGINAL].tuple);
	e->flow = (u64)ct;
	e->ts = bpf_ktime_get_ns();
	e->first_seen = f->first_seen;
	e->bytes[0] = f->bytes[0];
	e->bytes[1] = f->bytes[1];
	e->packets[0] = f->packets[0];
	e->packets[1] = f->packets[1];
	__builtin_memcpy(e->src, &t.src.u3, 16);
	__builtin_memcpy(e->dst, &t.dst.u3, 16);
	e->netns = cfg->netns;
	e->ifindex = f->ifindex;
	e->zone = ct_zone(ct);
	e->family = t.src.l3num;
	e->sport = t.src.u.all;
	e->dport = t.dst.u.all;
	e->proto = t.dst.protonum;
	e->kind = kind;
#ifdef USE_RINGBUF
	events.ringbuf_submit(e, 0);
	return 0;
#else
	if (events.perf_submit(ctx, e, sizeof(*e))) {
		count(C_DROPPED);
		return -1;
	}
	return 0;
#endif
}

static __always_inline struct config *get_config(void)
{
	int zero = 0;
	struct config *cfg = config.lookup(&zero);

	return cfg && cfg->netns ? cfg : NULL;
}

/* Adds to a zone's counters on this CPU (a zone >= MAX_ZONES is not counted:
 * zone_seen counts its flows in C_ZONE_OVER). */
static __always_inline void zone_add(u32 zone, u32 len, u64 flows)
{
#ifndef NO_ZONE_COUNTERS
	struct zone_counters *z = zones.lookup(&zone);

	if (!z)
		return;
	z->bytes += len;
	z->packets += len ? 1 : 0;
	z->flows += flows;
#endif
}

/* Marks the zone of a flow that starts being tracked as one to read. */
static __always_inline void zone_seen(u32 zone)
{
#ifndef NO_ZONE_COUNTERS
	u8 one = 1;

	if (zone >= MAX_ZONES) {
		count(C_ZONE_OVER);
		return;
	}
	if (!zones_seen.lookup(&zone))
		zones_seen.insert(&zone, &one);
#endif
}

/* Start tracking `ct`, counting `len` bytes of a first original-direction packet. */
static __always_inline struct flow *track(struct nf_conn *ct, u32 ifindex, u32 len,
					  int counter)
{
	struct flow f = { .first_seen = bpf_ktime_get_ns(), .ifindex = ifindex,
			  .zone = ct_zone(ct) };
	u64 key = (u64)ct;
	int err;

	bpf_probe_read_kernel(&f.proto, sizeof(f.proto),
			      &ct->tuplehash[IP_CT_DIR_ORIGINAL].tuple.dst.protonum);
	zone_seen(f.zone);
	if (len) {
		f.bytes[IP_CT_DIR_ORIGINAL] = len;
		f.packets[IP_CT_DIR_ORIGINAL] = 1;
	}
	/* A confirmation overwrites; a late start loses to a racing one. */
	err = counter == C_STARTED ? flows.update(&key, &f) : flows.insert(&key, &f);
	if (counter == C_STARTED)
		zone_add(f.zone, len, 1);
	if (err && err != -EEXIST) {
		count(C_MAP_FULL);
		return NULL;
	}
	if (!err)
		count(counter);
	return flows.lookup(&key);
}

/* Remembers an entry outside the watched namespace and zones. */
static __always_inline void ignore(struct nf_conn *ct)
{
	u64 key = (u64)ct;
	u8 one = 1;

	others.update(&key, &one);
}

/* A packet of `len` bytes that conntrack accounted to `ct`, which it gave
 * `timeout` more jiffies to live. */
static __always_inline void on_packet(void *ctx, struct nf_conn *ct, u32 ctinfo, u32 len,
				      u32 timeout)
{
	struct config *cfg = get_config();
	u64 key = (u64)ct, now;
	struct flow *f;
	unsigned long status = 0;
	int dir = ctinfo >= IP_CT_IS_REPLY;

	if (!cfg || !len)
		return;
	f = flows.lookup(&key);
	if (!f) {
		if (others.lookup(&key))
			return;
		bpf_probe_read_kernel(&status, sizeof(status), &ct->status);
		if ((status & (IPS_CONFIRMED | IPS_DYING)) != IPS_CONFIRMED)
			return;
		if (!watched(ct, cfg)) {
			ignore(ct);
			return;
		}
		f = track(ct, 0, 0, C_LATE);
		if (!f)
			return;
	}
	__sync_fetch_and_add(&f->bytes[dir], len);
	__sync_fetch_and_add(&f->packets[dir], 1);
	zone_add(f->zone, len, 0);
	if (f->elephant == ELEPHANT_ACTIVE) {
		if (tcp_closing(ct, f, timeout)) {
			f->elephant = ELEPHANT_CLOSED;
			if (emit(ctx, ct, f, KIND_END, cfg))
				f->elephant = ELEPHANT_ACTIVE;  /* lost: try again */
		}
		return;
	}
	if (f->elephant || f->bytes[0] + f->bytes[1] < cfg->bytes)
		return;
	now = bpf_ktime_get_ns();
	if (now - f->first_seen < cfg->age_ns)
		return;
	/* Two CPUs racing here may both report: bcc cannot emit atomic
	 * fetch-and-add, so user space drops the duplicate. */
	f->elephant = ELEPHANT_ACTIVE;
	if (emit(ctx, ct, f, KIND_ELEPHANT, cfg))
		f->elephant = 0;        /* lost: try again on the next packet */
	else
		count(C_ELEPHANTS);
}

static __always_inline void on_gone(void *ctx, struct nf_conn *ct)
{
	struct config *cfg = get_config();
	u64 key = (u64)ct;
	struct flow *f = flows.lookup(&key);

	if (!f) {
		others.delete(&key);
		return;
	}
	if (f->elephant == ELEPHANT_ACTIVE && cfg)
		emit(ctx, ct, f, KIND_END, cfg);
	flows.delete(&key);
	count(C_ENDED);
}

/*
 * Hooks: ON(kernel function) { body }, with its arguments as ARG(1), ARG(2)...
 * (bcc's kprobe argument rewriting cannot see through macros, so neither
 * flavour declares typed arguments.)
 */
#ifdef USE_FENTRY
#define HOOK(fn) KFUNC_PROBE(fn)
#define ARG(n) (((u64 *)ctx)[(n) - 1])
#else
#define HOOK(fn) int kprobe__##fn(struct pt_regs *ctx)
#define ARG(n) PT_REGS_PARM##n(ctx)
#endif
#define ON(fn) HOOK(fn)  /* expands DESTROY_FN first */

ON(__nf_conntrack_confirm)  /* (struct sk_buff *skb) */
{
	struct sk_buff *skb = (struct sk_buff *)ARG(1);
	struct config *cfg = get_config();
	struct net_device *dev = NULL;
	unsigned long nfct = 0;
	struct nf_conn *ct;
	u32 len = 0, ifindex = 0;

	if (!cfg)
		return 0;
	bpf_probe_read_kernel(&nfct, sizeof(nfct), &skb->_nfct);
	ct = (struct nf_conn *)(nfct & NFCT_PTRMASK);
	if (!ct)
		return 0;
	if (!watched(ct, cfg)) {
		ignore(ct);
		return 0;
	}
	bpf_probe_read_kernel(&len, sizeof(len), &skb->len);
	bpf_probe_read_kernel(&dev, sizeof(dev), &skb->dev);
	if (dev)
		bpf_probe_read_kernel(&ifindex, sizeof(ifindex), &dev->ifindex);
	/* This packet was accounted before its entry was confirmed: count it here. */
	track(ct, ifindex, len, C_STARTED);
	return 0;
}

/* Before 6.13 and 6.12.113: (ct, ctinfo, skb, extra_jiffies, bool do_acct); since:
 * (ct, ctinfo, extra_jiffies, unsigned int bytes). */
ON(__nf_ct_refresh_acct)
{
	struct nf_conn *ct = (struct nf_conn *)ARG(1);
	u32 len = 0, timeout;
#ifdef REFRESH_HAS_SKB
	struct sk_buff *skb = (struct sk_buff *)ARG(3);

	if ((u8)ARG(5))
		bpf_probe_read_kernel(&len, sizeof(len), &skb->len);
	timeout = (u32)ARG(4);
#else
	len = (u32)ARG(4);
	timeout = (u32)ARG(3);
#endif
	on_packet(ctx, ct, (u32)ARG(2), len, timeout);
	return 0;
}

ON(nf_ct_delete)  /* (struct nf_conn *ct, u32 portid, int report) */
{
	on_gone(ctx, (struct nf_conn *)ARG(1));
	return 0;
}

/* (struct nf_conntrack *nfct), the first member of struct nf_conn. Every entry
 * is freed here, whether or not nf_ct_delete saw it (inlined callers,
 * unconfirmed entries, deletions before the tracer started). */
ON(DESTROY_FN)
{
	on_gone(ctx, (struct nf_conn *)ARG(1));
	return 0;
}
