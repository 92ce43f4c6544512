// SPDX-License-Identifier: GPL-2.0-only
//
// slr's kernel fast path (XDP). Built by crates/slr-xdp/build.rs with clang -target bpf and
// loaded by the slr daemons through aya; the layouts below are mirrored in src/maps.rs.
//
// slr_router: on a router's ingress interfaces. An IPv4 TCP or UDP packet of a flow the routing
// core has pinned (an entry of `flows`, installed and removed by the core's driver) is wrapped
// in an IP-in-IP header toward the flow's next hop and transmitted at once (XDP_TX, or
// XDP_REDIRECT when the route to the next hop leaves by another interface). Everything else
// goes up the stack unchanged (XDP_PASS) to the slow path, which decides; every pass is
// counted by its reason. The program never drops a packet.
//
// slr_pass: XDP_PASS, for the far end of a veth whose near end transmits with XDP_TX (a veth
// delivers XDP frames only to a peer that runs an XDP program or has NAPI on).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef AF_INET
#define AF_INET 2
#endif

// A flow: the 5-tuple, addresses and ports in network byte order.
struct flow_key {
	__u32 src;
	__u32 dst;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

// An IPv4 prefix as the LPM tries key it.
struct lpm_v4 {
	__u32 prefixlen;
	__u32 addr; // network byte order
};

// Where the core pinned it.
struct flow_value {
	__u32 tunnel_dst;   // the next hop's tunnel address, network byte order
	__u32 next_hop;     // the core's next-hop index (counters)
	__u32 vhost;        // the core's virtual-host index (counters)
	__u32 flags;        // reserved, 0
	__u64 last_used_ns; // bpf_ktime_get_ns() of a recent packet (written at most every 64 ms)
};

struct config {
	__u32 tunnel_src;  // network byte order
	__u32 tunnel_mtu;  // largest outer packet, bytes
	__u32 outer_ttl;
	__u32 enabled;     // 0: every packet passes (counted as disabled)
	__u32 has_parents; // a middle level: tunnels from `parents` are re-encapsulated, others dropped
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

// Why a packet took the slow path, or that it did not (index into `stats`). Mirrored by
// `Reason` in src/maps.rs.
enum reason {
	R_FORWARDED = 0,
	R_DISABLED,
	R_NOT_IPV4,
	R_MALFORMED,
	R_OPTIONS,
	R_FRAGMENT,
	R_BAD_CHECKSUM,
	R_TTL,
	R_PROTOCOL,
	R_TCP_CONTROL,
	R_NO_FLOW,
	R_TOO_BIG,
	R_NO_ROUTE,
	R_NO_NEIGH,
	R_NO_HEADROOM,
	R_UNTRUSTED_TUNNEL, // dropped: IP-in-IP to this router from outside `parents`
	R_RETUNNELLED,      // a parent's tunnel re-encapsulated toward the flow's next hop
	R_REASONS,
};

#define MAX_NEXT_HOPS 4096
#define MAX_VHOSTS 1024

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); // set to the core's max_flows at load
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, R_REASONS);
	__type(key, __u32);
	__type(value, struct counter);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_NEXT_HOPS);
	__type(key, __u32);
	__type(value, struct counter);
} next_hop_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_VHOSTS);
	__type(key, __u32);
	__type(value, struct counter);
} vhost_stats SEC(".maps");

// A middle level's trusted parents (`trusted_parents`): the sources whose tunnels it takes.
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__type(key, struct lpm_v4);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} parents SEC(".maps");

// Outer IP identification: a per-CPU counter, the CPU in the low bits.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} ident SEC(".maps");

static __always_inline void count(struct counter *c, __u64 bytes)
{
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline int pass(__u32 why, __u64 bytes)
{
	count(bpf_map_lookup_elem(&stats, &why), bytes);
	return XDP_PASS;
}

static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

// The one's complement sum of a 20-byte IPv4 header.
static __always_inline __u32 sum_header(const __u16 *h)
{
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += h[i];
	return sum;
}

#define IP_DF 0x4000
#define IP_MF_OFFSET 0x3fff
#define TCP_CONTROL (0x01 | 0x02 | 0x04) // FIN, SYN, RST

// The 5-tuple of an IPv4 TCP or UDP packet whose header starts at `ip` (a 20-byte header,
// `tot` bytes in all) into `key`; 0, or the reason to leave it to the slow path.
static __always_inline int flow_of(struct iphdr *ip, __u32 tot, void *end, struct flow_key *key)
{
	key->src = ip->saddr;
	key->dst = ip->daddr;
	key->proto = ip->protocol;
	void *l4 = ip + 1;
	__u32 l4_len = tot - sizeof(*ip);
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > end || l4_len < sizeof(*tcp) || tcp->doff < 5 ||
		    tcp->doff * 4 > l4_len)
			return R_MALFORMED;
		// Opening and closing packets change the flow's state: the core sees them.
		if (((__u8 *)tcp)[13] & TCP_CONTROL)
			return R_TCP_CONTROL;
		key->sport = tcp->source;
		key->dport = tcp->dest;
		return 0;
	}
	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > end || l4_len < sizeof(*udp))
			return R_MALFORMED;
		__u32 ulen = bpf_ntohs(udp->len);
		if (ulen < sizeof(*udp) || ulen > l4_len)
			return R_MALFORMED;
		key->sport = udp->source;
		key->dport = udp->dest;
		return 0;
	}
	return R_PROTOCOL;
}

// The inner TTL drops by one, as when the kernel forwards into the slow path, with the
// kernel's incremental checksum update (ip_decrease_ttl).
static __always_inline void decrease_ttl(struct iphdr *ip)
{
	__u32 check = ip->check;
	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xffff));
	ip->ttl--;
}

// Fills the outer header toward the flow's next hop: TOS and DF from the inner header (RFC
// 2003 3.1), the tunnel's TTL, a per-CPU identification.
static __always_inline void write_outer(struct iphdr *outer, struct config *cfg, __u32 dst,
					__u32 inner_tot, __u8 tos, __u16 df)
{
	__u32 zero = 0;
	__u32 *id = bpf_map_lookup_elem(&ident, &zero);
	__u16 ident_value = 0;
	if (id) {
		*id += 1;
		ident_value = (__u16)((*id << 4) | (bpf_get_smp_processor_id() & 0xf));
	}
	outer->version = 4;
	outer->ihl = 5;
	outer->tos = tos;
	outer->tot_len = bpf_htons(inner_tot + sizeof(struct iphdr));
	outer->id = bpf_htons(ident_value);
	outer->frag_off = df;
	outer->ttl = cfg->outer_ttl;
	outer->protocol = IPPROTO_IPIP;
	outer->check = 0;
	outer->saddr = cfg->tunnel_src;
	outer->daddr = dst;
	outer->check = ~fold(sum_header((const __u16 *)outer));
}

// The flow was forwarded: its last use, and the counters.
static __always_inline int forwarded(struct xdp_md *ctx, struct flow_value *flow,
				     struct bpf_fib_lookup *fib, __u32 why, __u32 inner_tot)
{
	__u64 now = bpf_ktime_get_ns();
	if (now - flow->last_used_ns > (64ULL << 20))
		flow->last_used_ns = now;
	__u32 nh = flow->next_hop, vh = flow->vhost;
	count(bpf_map_lookup_elem(&next_hop_stats, &nh), inner_tot);
	count(bpf_map_lookup_elem(&vhost_stats, &vh), inner_tot);
	count(bpf_map_lookup_elem(&stats, &why), inner_tot);
	if (fib->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fib->ifindex, 0);
}

// The next hop's MACs and interface; 0, or the reason to leave the packet to the slow path.
static __always_inline int route_to(struct xdp_md *ctx, struct config *cfg, __u32 dst,
				    __u32 outer_tot, struct bpf_fib_lookup *fib)
{
	fib->family = AF_INET;
	fib->l4_protocol = IPPROTO_IPIP;
	fib->tot_len = outer_tot;
	fib->ipv4_src = cfg->tunnel_src;
	fib->ipv4_dst = dst;
	fib->ifindex = ctx->ingress_ifindex;
	int rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		// The kernel resolves the neighbour when the slow path sends.
		return R_NO_NEIGH;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return R_NO_ROUTE;
	return 0;
}

// A middle level (`has_parents`): a tunnel from a trusted parent addressed to this router,
// whose inner packet belongs to an established flow, gets a new outer header toward the
// flow's next hop in place (the inner TTL drops by one, as in the core). Tunnels from anyone
// else are dropped and counted; everything else the slow path decides.
static __always_inline int retunnel(struct xdp_md *ctx, struct config *cfg, __u64 frame)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *outer = (void *)(eth + 1);
	if ((void *)(outer + 1) > end)
		return pass(R_MALFORMED, frame);
	struct lpm_v4 src = { .prefixlen = 32, .addr = outer->saddr };
	if (!bpf_map_lookup_elem(&parents, &src)) {
		count(bpf_map_lookup_elem(&stats, &(__u32){R_UNTRUSTED_TUNNEL}), frame);
		return XDP_DROP;
	}
	if (outer->daddr != cfg->tunnel_src)
		return pass(R_PROTOCOL, frame);
	__u32 outer_tot = bpf_ntohs(outer->tot_len);
	struct iphdr *ip = outer + 1;
	if ((void *)(ip + 1) > end || outer_tot < 2 * sizeof(struct iphdr))
		return pass(R_MALFORMED, frame);
	if (ip->version != 4)
		return pass(R_NOT_IPV4, frame);
	if (ip->ihl != 5)
		return pass(ip->ihl < 5 ? R_MALFORMED : R_OPTIONS, frame);
	__u32 tot = bpf_ntohs(ip->tot_len);
	if (tot < sizeof(*ip) || tot + sizeof(*outer) > outer_tot)
		return pass(R_MALFORMED, frame);
	if (ip->frag_off & bpf_htons(IP_MF_OFFSET))
		return pass(R_FRAGMENT, frame);
	if (fold(sum_header((const __u16 *)ip)) != 0xffff)
		return pass(R_BAD_CHECKSUM, frame);
	if (ip->ttl <= 1)
		return pass(R_TTL, frame);
	struct flow_key key = {};
	int why = flow_of(ip, tot, end, &key);
	if (why)
		return pass(why, frame);
	struct flow_value *flow = bpf_map_lookup_elem(&flows, &key);
	if (!flow)
		return pass(R_NO_FLOW, frame);
	if (tot + sizeof(struct iphdr) > cfg->tunnel_mtu)
		return pass(R_TOO_BIG, frame);
	struct bpf_fib_lookup fib = {};
	why = route_to(ctx, cfg, flow->tunnel_dst, tot + sizeof(struct iphdr), &fib);
	if (why)
		return pass(why, frame);

	__u8 tos = ip->tos;
	__u16 df = ip->frag_off & bpf_htons(IP_DF);
	decrease_ttl(ip);
	__u32 dst = flow->tunnel_dst;
	write_outer(outer, cfg, dst, tot, tos, df);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	// Padding after the inner packet goes (the core truncates to the inner length).
	__u64 excess = frame - sizeof(*eth) - sizeof(*outer) - tot;
	if (excess && bpf_xdp_adjust_tail(ctx, -(int)excess))
		return pass(R_MALFORMED, frame);
	return forwarded(ctx, flow, &fib, R_RETUNNELLED, tot);
}

SEC("xdp")
int slr_router(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u64 frame = bpf_xdp_get_buff_len(ctx);
	__u32 zero = 0;

	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !cfg->enabled)
		return pass(R_DISABLED, frame);

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return pass(R_MALFORMED, frame);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return pass(R_NOT_IPV4, frame);
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return pass(R_MALFORMED, frame);
	if (ip->version != 4)
		return pass(R_NOT_IPV4, frame);
	if (ip->ihl != 5)
		// Options (or a header length below 20): the slow path checks and routes them.
		return pass(ip->ihl < 5 ? R_MALFORMED : R_OPTIONS, frame);
	__u32 tot = bpf_ntohs(ip->tot_len);
	// Lengths, not pointers: a router runs with CAP_BPF but without CAP_PERFMON, and the
	// verifier refuses variable pointer arithmetic then.
	if (tot < sizeof(*ip) || sizeof(*eth) + tot > frame)
		return pass(R_MALFORMED, frame);
	if (ip->frag_off & bpf_htons(IP_MF_OFFSET))
		return pass(R_FRAGMENT, frame);
	if (fold(sum_header((const __u16 *)ip)) != 0xffff)
		return pass(R_BAD_CHECKSUM, frame);
	if (ip->protocol == IPPROTO_IPIP && cfg->has_parents)
		return retunnel(ctx, cfg, frame);
	if (ip->ttl <= 1)
		return pass(R_TTL, frame);

	struct flow_key key = {};
	int why = flow_of(ip, tot, end, &key);
	if (why)
		return pass(why, frame);
	struct flow_value *flow = bpf_map_lookup_elem(&flows, &key);
	if (!flow)
		return pass(R_NO_FLOW, frame);
	if (tot + sizeof(struct iphdr) > cfg->tunnel_mtu)
		// The slow path fragments it or answers fragmentation-needed.
		return pass(R_TOO_BIG, frame);
	struct bpf_fib_lookup fib = {};
	why = route_to(ctx, cfg, flow->tunnel_dst, tot + sizeof(struct iphdr), &fib);
	if (why)
		return pass(why, frame);

	// Ethernet padding after the IP packet goes (the slow path never sees it either).
	__u64 excess = frame - sizeof(*eth) - tot;
	__u8 tos = ip->tos;
	__u16 df = ip->frag_off & bpf_htons(IP_DF);
	decrease_ttl(ip);
	if (excess && bpf_xdp_adjust_tail(ctx, -(int)excess))
		return pass(R_MALFORMED, frame);
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
		return pass(R_NO_HEADROOM, frame);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	struct iphdr *outer = (void *)(eth + 1);
	if ((void *)(outer + 1) > end)
		return pass(R_NO_HEADROOM, frame);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	write_outer(outer, cfg, flow->tunnel_dst, tot, tos, df); // RFC 2003 3.1: DF copied
	return forwarded(ctx, flow, &fib, R_FORWARDED, tot);
}

// slr_host: on a host server's interfaces (loaded by `slr host`). An IP-in-IP packet from a
// trusted tunnel source (`host_trusted`) for a virtual subnet of this host (`host_subnets`) is
// decapsulated in place and its inner packet goes up the stack, which delivers it to the
// server as if it had arrived on this interface (AnyIP routes make the virtual subnets local);
// the server answers the client directly (direct server return). Tunnels from anyone else, and
// tunnels the host agent would refuse too, are dropped and counted by the same reasons as the
// agent's (slr_core::terminate). What the program does not decide (outer options or fragments,
// inner options) passes to the agent's raw socket unchanged; anything not IP-in-IP passes
// untouched. The attachment outlives the agent (it is made through netlink), so a killed agent
// does not stop delivery.

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__type(key, struct lpm_v4);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} host_trusted SEC(".maps");

// Virtual subnet -> its index in the agent's configuration (the per-subnet counters' index).
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__type(key, struct lpm_v4);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} host_subnets SEC(".maps");

// Mirrored by `HostReason` in src/maps.rs.
enum host_reason {
	H_DELIVERED = 0,
	H_NOT_TUNNEL,
	H_SLOW_PATH,
	H_DISABLED,
	H_MALFORMED_OUTER,
	H_UNTRUSTED,
	H_MALFORMED_INNER,
	H_NESTED,
	H_NOT_VIRTUAL,
	H_TTL,
	H_REASONS,
};

#define MAX_HOST_SUBNETS 256

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} host_enabled SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, H_REASONS);
	__type(key, __u32);
	__type(value, struct counter);
} host_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_HOST_SUBNETS);
	__type(key, __u32);
	__type(value, struct counter);
} host_subnet_stats SEC(".maps");

static __always_inline int host_verdict(__u32 why, __u64 bytes, int verdict)
{
	count(bpf_map_lookup_elem(&host_stats, &why), bytes);
	return verdict;
}

SEC("xdp")
int slr_host(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u64 frame = bpf_xdp_get_buff_len(ctx);
	__u32 zero = 0;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return host_verdict(H_NOT_TUNNEL, frame, XDP_PASS);
	struct iphdr *outer = (void *)(eth + 1);
	if ((void *)(outer + 1) > end || outer->version != 4 || outer->protocol != IPPROTO_IPIP)
		return host_verdict(H_NOT_TUNNEL, frame, XDP_PASS);
	__u32 *on = bpf_map_lookup_elem(&host_enabled, &zero);
	if (!on || !*on)
		return host_verdict(H_DISABLED, frame, XDP_PASS);
	__u32 tot = bpf_ntohs(outer->tot_len);
	if (outer->ihl < 5 || tot < outer->ihl * 4 || sizeof(*eth) + tot > frame)
		return host_verdict(H_MALFORMED_OUTER, frame, XDP_DROP);
	if (outer->ihl != 5)
		// Options: the agent decides.
		return host_verdict(H_SLOW_PATH, frame, XDP_PASS);
	// Trust is decided on the outer source before anything of the inner packet is read.
	struct lpm_v4 src = { .prefixlen = 32, .addr = outer->saddr };
	if (!bpf_map_lookup_elem(&host_trusted, &src))
		return host_verdict(H_UNTRUSTED, frame, XDP_DROP);
	if (fold(sum_header((const __u16 *)outer)) != 0xffff)
		return host_verdict(H_MALFORMED_OUTER, frame, XDP_DROP);
	if (outer->frag_off & bpf_htons(IP_MF_OFFSET))
		// The stack reassembles it for the agent.
		return host_verdict(H_SLOW_PATH, frame, XDP_PASS);

	struct iphdr *ip = outer + 1;
	__u32 room = tot - sizeof(*outer);
	if ((void *)(ip + 1) > end || room < sizeof(*ip) || ip->version != 4 || ip->ihl < 5)
		return host_verdict(H_MALFORMED_INNER, frame, XDP_DROP);
	__u32 inner_tot = bpf_ntohs(ip->tot_len);
	if (inner_tot < ip->ihl * 4 || inner_tot > room)
		return host_verdict(H_MALFORMED_INNER, frame, XDP_DROP);
	if (ip->ihl != 5)
		return host_verdict(H_SLOW_PATH, frame, XDP_PASS);
	if (fold(sum_header((const __u16 *)ip)) != 0xffff)
		return host_verdict(H_MALFORMED_INNER, frame, XDP_DROP);
	if (ip->protocol == IPPROTO_IPIP)
		return host_verdict(H_NESTED, frame, XDP_DROP);
	if (ip->ttl == 0)
		return host_verdict(H_TTL, frame, XDP_DROP);
	struct lpm_v4 dst = { .prefixlen = 32, .addr = ip->daddr };
	__u32 *subnet = bpf_map_lookup_elem(&host_subnets, &dst);
	if (!subnet)
		return host_verdict(H_NOT_VIRTUAL, frame, XDP_DROP);
	__u32 index = *subnet;

	unsigned char dmac[ETH_ALEN], smac[ETH_ALEN];
	__builtin_memcpy(dmac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(smac, eth->h_source, ETH_ALEN);
	// Link padding and anything after the inner packet go, as the agent truncates them.
	__u64 excess = frame - sizeof(*eth) - sizeof(*outer) - inner_tot;
	if (excess && bpf_xdp_adjust_tail(ctx, -(int)excess))
		return host_verdict(H_SLOW_PATH, frame, XDP_PASS);
	if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct iphdr)))
		return host_verdict(H_SLOW_PATH, frame, XDP_PASS);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return host_verdict(H_MALFORMED_OUTER, frame, XDP_DROP);
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	count(bpf_map_lookup_elem(&host_subnet_stats, &index), inner_tot);
	return host_verdict(H_DELIVERED, inner_tot, XDP_PASS);
}

// The benchmarks' baseline: the least an XDP_TX forwarder does (swap the MACs, send back).
SEC("xdp")
int slr_bounce(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	unsigned char tmp[ETH_ALEN];
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return XDP_TX;
}

// The benchmarks' frame loop (an in-kernel generator): at the far end of a veth, slr_unwrap
// sends every frame back until `budget` frames have come through. An IP-in-IP frame (what
// slr_router sent) is first restored to what the router received: the outer header stripped,
// the inner TTL raised again (checksum updated), the MACs swapped; anything else is only
// bounced (the baseline loop, against slr_bounce).
struct bench_loop {
	__u64 budget;
	__u64 returned;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_loop);
} bench_loop SEC(".maps");

SEC("xdp")
int slr_unwrap(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct bench_loop *l = bpf_map_lookup_elem(&bench_loop, &zero);
	if (!l)
		return XDP_DROP;
	if (__sync_fetch_and_add(&l->returned, 1) >= l->budget)
		return XDP_DROP;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_DROP;
	unsigned char here[ETH_ALEN], there[ETH_ALEN];
	__builtin_memcpy(here, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(there, eth->h_source, ETH_ALEN);
	struct iphdr *outer = (void *)(eth + 1);
	if ((void *)(outer + 1) <= end && eth->h_proto == bpf_htons(ETH_P_IP) &&
	    outer->protocol == IPPROTO_IPIP) {
		if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct iphdr)))
			return XDP_DROP;
		data = (void *)(long)ctx->data;
		end = (void *)(long)ctx->data_end;
		eth = data;
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return XDP_DROP;
		__u32 check = ip->check;
		check += bpf_htons(0xfeff);
		ip->check = (__u16)((check & 0xffff) + (check >> 16));
		ip->ttl++;
		eth->h_proto = bpf_htons(ETH_P_IP);
	}
	__builtin_memcpy(eth->h_dest, there, ETH_ALEN);
	__builtin_memcpy(eth->h_source, here, ETH_ALEN);
	return XDP_TX;
}

// The benchmarks' sink at the far end of a veth: frames end there, at no cost to the stack.
SEC("xdp")
int slr_sink(struct xdp_md *ctx)
{
	return XDP_DROP;
}

SEC("xdp")
int slr_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
