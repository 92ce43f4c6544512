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
#include <linux/pkt_cls.h>
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
	__u32 flags;        // FLOW_SHORTCUT: tunnel_dst is a host below the next hop (F10)
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

// A next hop's route as the last FIB lookup on this CPU gave it (see route_to), and what the
// outer headers toward it share.
struct route {
	__u64 resolved_ns; // coarse clock
	__u32 dst;         // the tunnel destination it was looked up for
	__u32 ingress;     // and the interface the packet came in on
	__u32 ifindex;     // egress
	__u32 max_tot;     // the largest outer length the lookup's MTU check passed
	__u32 partial;     // the outer header's sum over its fixed words (TTL, protocol, addresses)
	__u32 ident;       // the outer IP identification toward this next hop, from this CPU
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
};

#define ROUTE_LIFETIME_NS (16ULL << 20) // ~17 ms

// Remembered routes: one slot per next hop, then SHORTCUT_ROUTES slots for the hosts that
// shortcut flows go to (F10: many hosts under one next hop would otherwise evict each other
// from the next hop's slot on every packet).
#define FLOW_SHORTCUT 1
#define SHORTCUT_ROUTES 1024

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_NEXT_HOPS + SHORTCUT_ROUTES);
	__type(key, __u32);
	__type(value, struct route);
} routes SEC(".maps");

// The `routes` slot of a flow: its next hop's, or for a shortcut one chosen by its host.
static __always_inline __u32 route_slot(const struct flow_value *flow)
{
	if (!(flow->flags & FLOW_SHORTCUT))
		return flow->next_hop;
	return MAX_NEXT_HOPS + ((flow->tunnel_dst * 2654435761u) >> 22) % SHORTCUT_ROUTES;
}

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

// The one's complement sum of a 20-byte IPv4 header, in a form `fold` completes: five 32-bit
// words added in 64 bits and folded to 32 (the same sum as over ten 16-bit words, in half the
// loads; the x86 JIT, and this kernel's verifier on it, take them at any alignment).
static __always_inline __u32 sum_header(const void *header)
{
	const __u32 *w = header;
	__u64 sum = (__u64)w[0] + w[1] + w[2] + w[3] + w[4];
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	return (__u32)sum;
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
// 2003 3.1), the tunnel's TTL, an identification counted per CPU and next hop (the CPU in
// the low bits, so that no two CPUs use the same one). The checksum adds the four words that
// vary to the route's sum of the fixed ones.
static __always_inline void write_outer(struct iphdr *outer, struct config *cfg,
					struct route *route, __u32 inner_tot, __u8 tos, __u16 df)
{
	route->ident++;
	__u16 ident_value = (__u16)((route->ident << 4) | (bpf_get_smp_processor_id() & 0xf));
	outer->version = 4;
	outer->ihl = 5;
	outer->tos = tos;
	outer->tot_len = bpf_htons(inner_tot + sizeof(struct iphdr));
	outer->id = bpf_htons(ident_value);
	outer->frag_off = df;
	outer->ttl = cfg->outer_ttl;
	outer->protocol = IPPROTO_IPIP;
	outer->saddr = cfg->tunnel_src;
	outer->daddr = route->dst;
	const __u16 *h = (const __u16 *)outer;
	outer->check = ~fold(route->partial + h[0] + h[1] + h[2] + h[3]);
}

// The outer header's sum over its words that are the same for every packet toward `dst`.
static __always_inline __u32 fixed_words(struct config *cfg, __u32 dst)
{
	struct iphdr t = {};
	t.ttl = cfg->outer_ttl;
	t.protocol = IPPROTO_IPIP;
	t.saddr = cfg->tunnel_src;
	t.daddr = dst;
	return sum_header(&t);
}

// The flow was forwarded: its last use, and the counters. The stamp is the coarse clock
// (CLOCK_MONOTONIC at tick resolution, a fraction of the cost of the precise one), refreshed
// at most every 64 ms: the daemon ages flows in seconds.
static __always_inline void note_forwarded(struct flow_value *flow, __u64 now, __u32 why,
					   __u32 inner_tot)
{
	if (now - flow->last_used_ns > (64ULL << 20))
		flow->last_used_ns = now;
	__u32 nh = flow->next_hop, vh = flow->vhost;
	count(bpf_map_lookup_elem(&next_hop_stats, &nh), inner_tot);
	count(bpf_map_lookup_elem(&vhost_stats, &vh), inner_tot);
	count(bpf_map_lookup_elem(&stats, &why), inner_tot);
}

static __always_inline int forwarded(struct xdp_md *ctx, struct flow_value *flow,
				     struct route *route, __u64 now, __u32 why, __u32 inner_tot)
{
	note_forwarded(flow, now, why, inner_tot);
	if (route->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(route->ifindex, 0);
}

// The next hop's MACs and interface, as the kernel's FIB and neighbour table give them
// (bpf_fib_lookup), remembered per CPU and next hop for a few milliseconds: a lookup costs
// as much as the rest of the program, and a next hop's route changes far more rarely. A
// remembered route holds for the same ingress, tunnel destination and at most the outer
// length it was looked up with (the lookup checks the egress MTU); a failed lookup is never
// remembered, so a packet without a route or neighbour goes to the slow path every time.
// (`fib->ipv4_dst` is the gateway's address after the lookup, not the tunnel's destination.)
static __always_inline void remember(struct route *r, struct config *cfg, __u32 dst,
				     struct bpf_fib_lookup *fib, __u32 ingress, __u32 max_tot,
				     __u64 now)
{
	r->dst = dst;
	r->ingress = ingress;
	r->ifindex = fib->ifindex;
	r->max_tot = max_tot;
	r->resolved_ns = now;
	r->partial = fixed_words(cfg, dst);
	__builtin_memcpy(r->smac, fib->smac, ETH_ALEN);
	__builtin_memcpy(r->dmac, fib->dmac, ETH_ALEN);
}

// `ctx` is the program's context (an xdp_md or a __sk_buff: bpf_fib_lookup takes either).
static __always_inline struct route *route_to(void *ctx, __u32 ingress, struct config *cfg,
					       __u32 slot, __u32 dst, __u32 outer_tot,
					       __u64 now, struct route *spare, int *why)
{
	struct route *r = bpf_map_lookup_elem(&routes, &slot);
	int fresh = 0;
	if (r) {
		fresh = r->dst == dst && r->ingress == ingress && now - r->resolved_ns < ROUTE_LIFETIME_NS;
		if (fresh && outer_tot <= r->max_tot)
			return r;
	}
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.l4_protocol = IPPROTO_IPIP;
	fib.tot_len = outer_tot;
	fib.ipv4_src = cfg->tunnel_src;
	fib.ipv4_dst = dst;
	fib.ifindex = ingress;
	int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		// Without a neighbour entry the kernel resolves it when the slow path sends.
		*why = rc == BPF_FIB_LKUP_RET_NO_NEIGH ? R_NO_NEIGH : R_NO_ROUTE;
		return 0;
	}
	if (r) {
		// The largest length that passed the MTU check while the route stays the same.
		__u32 max_tot = outer_tot;
		if (fresh && r->ifindex == fib.ifindex && r->max_tot > outer_tot)
			max_tot = r->max_tot;
		remember(r, cfg, dst, &fib, ingress, max_tot, now);
		return r;
	}
	// A next hop beyond the table: this packet's route only, a per-CPU identification.
	__u32 zero = 0;
	__u32 *id = bpf_map_lookup_elem(&ident, &zero);
	remember(spare, cfg, dst, &fib, ingress, outer_tot, now);
	spare->ident = id ? (*id += 1) : 0;
	return spare;
}

// What both hooks (slr_router, slr_router_tc) check of the IPv4 header at `ip`, behind an
// Ethernet header of type IPv4, `frame` bytes in all, before they look the flow up: 0, with the
// packet's length in `tot` and its flow in `key`; R_RETUNNELLED for a tunnel that a middle
// level re-encapsulates (the caller turns to that); or the reason to leave the packet to the
// slow path.
static __always_inline int check_packet(struct iphdr *ip, void *end, __u64 frame,
					struct config *cfg, __u32 *tot, struct flow_key *key)
{
	if ((void *)(ip + 1) > end)
		return R_MALFORMED;
	if (ip->version != 4)
		return R_NOT_IPV4;
	if (ip->ihl != 5)
		// Options (or a header length below 20): the slow path checks and routes them.
		return ip->ihl < 5 ? R_MALFORMED : R_OPTIONS;
	__u32 len = bpf_ntohs(ip->tot_len);
	// Lengths, not pointers: a router runs with CAP_BPF but without CAP_PERFMON, and the
	// verifier refuses variable pointer arithmetic then.
	if (len < sizeof(*ip) || sizeof(struct ethhdr) + len > frame)
		return R_MALFORMED;
	if (ip->frag_off & bpf_htons(IP_MF_OFFSET))
		return R_FRAGMENT;
	if (fold(sum_header(ip)) != 0xffff)
		return R_BAD_CHECKSUM;
	if (ip->protocol == IPPROTO_IPIP && cfg->has_parents)
		return R_RETUNNELLED;
	if (ip->ttl <= 1)
		return R_TTL;
	*tot = len;
	return flow_of(ip, len, end, key);
}

// A middle level (`has_parents`) takes a tunnel from a trusted parent addressed to this router
// whose inner packet belongs to an established flow, and gives it a new outer header toward
// the flow's next hop in place (the inner TTL drops by one, as in the core). Tunnels from
// anyone else are dropped and counted; everything else the slow path decides. What both hooks
// check of the tunnel at `outer` (an outer header check_packet passed): 0, with the inner
// packet's length in `tot` and its flow in `key`; R_UNTRUSTED_TUNNEL for a tunnel from outside
// `parents` (the caller drops it); or the reason to pass it.
static __always_inline int check_tunnel(struct iphdr *outer, void *end, struct config *cfg,
					__u32 *tot, struct flow_key *key)
{
	if ((void *)(outer + 1) > end)
		return R_MALFORMED;
	struct lpm_v4 src = { .prefixlen = 32, .addr = outer->saddr };
	if (!bpf_map_lookup_elem(&parents, &src))
		return R_UNTRUSTED_TUNNEL;
	if (outer->daddr != cfg->tunnel_src)
		return R_PROTOCOL;
	__u32 outer_tot = bpf_ntohs(outer->tot_len);
	struct iphdr *ip = outer + 1;
	if ((void *)(ip + 1) > end || outer_tot < 2 * sizeof(struct iphdr))
		return R_MALFORMED;
	if (ip->version != 4)
		return R_NOT_IPV4;
	if (ip->ihl != 5)
		return ip->ihl < 5 ? R_MALFORMED : R_OPTIONS;
	__u32 len = bpf_ntohs(ip->tot_len);
	if (len < sizeof(*ip) || len + sizeof(*outer) > outer_tot)
		return R_MALFORMED;
	if (ip->frag_off & bpf_htons(IP_MF_OFFSET))
		return R_FRAGMENT;
	if (fold(sum_header(ip)) != 0xffff)
		return R_BAD_CHECKSUM;
	if (ip->ttl <= 1)
		return R_TTL;
	*tot = len;
	return flow_of(ip, len, end, key);
}

static __always_inline int retunnel(struct xdp_md *ctx, struct config *cfg, __u64 frame)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *outer = (void *)(eth + 1);
	__u32 tot = 0;
	struct flow_key key = {};
	int why = check_tunnel(outer, end, cfg, &tot, &key);
	if (why == R_UNTRUSTED_TUNNEL) {
		count(bpf_map_lookup_elem(&stats, &(__u32){R_UNTRUSTED_TUNNEL}), frame);
		return XDP_DROP;
	}
	if (why)
		return pass(why, frame);
	struct iphdr *ip = outer + 1;
	if ((void *)(ip + 1) > end)
		return pass(R_MALFORMED, frame);
	struct flow_value *flow = bpf_map_lookup_elem(&flows, &key);
	if (!flow)
		return pass(R_NO_FLOW, frame);
	if (tot + sizeof(struct iphdr) > cfg->tunnel_mtu)
		return pass(R_TOO_BIG, frame);
	struct route spare; // every field is written before it is read (remember)
	__u64 now = bpf_ktime_get_coarse_ns();
	struct route *route = route_to(ctx, ctx->ingress_ifindex, cfg, route_slot(flow),
				       flow->tunnel_dst, tot + sizeof(struct iphdr), now, &spare,
				       &why);
	if (!route)
		return pass(why, frame);

	__u8 tos = ip->tos;
	__u16 df = ip->frag_off & bpf_htons(IP_DF);
	decrease_ttl(ip);
	write_outer(outer, cfg, route, tot, tos, df);
	__builtin_memcpy(eth->h_dest, route->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, route->smac, ETH_ALEN);
	// Padding after the inner packet goes (the core truncates to the inner length).
	__u64 excess = frame - sizeof(*eth) - sizeof(*outer) - tot;
	if (excess && bpf_xdp_adjust_tail(ctx, -(int)excess))
		return pass(R_MALFORMED, frame);
	return forwarded(ctx, flow, route, now, R_RETUNNELLED, tot);
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
	__u32 tot = 0;
	struct flow_key key = {};
	int why = check_packet(ip, end, frame, cfg, &tot, &key);
	if (why == R_RETUNNELLED)
		return retunnel(ctx, cfg, frame);
	if (why)
		return pass(why, frame);
	if ((void *)(ip + 1) > end)
		return pass(R_MALFORMED, frame);
	struct flow_value *flow = bpf_map_lookup_elem(&flows, &key);
	if (!flow)
		return pass(R_NO_FLOW, frame);
	if (tot + sizeof(struct iphdr) > cfg->tunnel_mtu)
		// The slow path fragments it or answers fragmentation-needed.
		return pass(R_TOO_BIG, frame);
	struct route spare; // every field is written before it is read (remember)
	__u64 now = bpf_ktime_get_coarse_ns();
	struct route *route = route_to(ctx, ctx->ingress_ifindex, cfg, route_slot(flow),
				       flow->tunnel_dst, tot + sizeof(struct iphdr), now, &spare,
				       &why);
	if (!route)
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
	__builtin_memcpy(eth->h_dest, route->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, route->smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	write_outer(outer, cfg, route, tot, tos, df); // RFC 2003 3.1: DF copied
	return forwarded(ctx, flow, route, now, R_FORWARDED, tot);
}

// slr_router_tc: the same forwarding at tc ingress (clsact), for links where whole GSO packets
// arrive (a veth from a local stack or a bridge, a container's link): XDP would see each one
// only after segmentation, and on veth an XDP program turns off its peer's segmentation
// offload. A packet of an established flow, however long, gets its outer header in the skb's
// headroom (bpf_skb_adjust_room, which marks a GSO packet as IP-in-IP so that whoever segments
// it, if anyone, repeats both headers) and is redirected to the next hop's interface; the
// segments must fit the tunnel (`tunnel_mtu`) as single packets must in slr_router. The same
// maps, reasons and counters; the verdicts are the same packets as slr_router's.

static __always_inline int tc_pass(__u32 why, __u64 bytes)
{
	count(bpf_map_lookup_elem(&stats, &why), bytes);
	return TC_ACT_OK;
}

// The IP and transport headers' length of a TCP or UDP packet flow_of accepted.
static __always_inline __u32 headers_len(struct iphdr *ip, void *end)
{
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)(ip + 1);
		if ((void *)(tcp + 1) > end)
			return 0;
		return sizeof(*ip) + tcp->doff * 4;
	}
	return sizeof(*ip) + sizeof(struct udphdr);
}

// The longest IP packet that leaves with this skb: itself, or each of its segments.
static __always_inline __u32 longest_packet(struct __sk_buff *skb, struct iphdr *ip, void *end,
					    __u32 tot)
{
	if (!skb->gso_size)
		return tot;
	__u32 seg = headers_len(ip, end) + skb->gso_size;
	return seg < tot ? seg : tot;
}

// The headers the programs read (Ethernet, two IPv4 headers, TCP), or the whole frame when
// shorter, made linear (a socket buffer may hold them in fragments): the packet's bounds.
#define TC_HEADERS (sizeof(struct ethhdr) + 2 * sizeof(struct iphdr) + sizeof(struct tcphdr))

static __always_inline void linear_headers(struct __sk_buff *skb, __u32 frame, void **data,
					   void **end)
{
	*data = (void *)(long)skb->data;
	*end = (void *)(long)skb->data_end;
	if (*data + TC_HEADERS <= *end)
		return;
	bpf_skb_pull_data(skb, frame < TC_HEADERS ? frame : TC_HEADERS);
	*data = (void *)(long)skb->data;
	*end = (void *)(long)skb->data_end;
}

static __always_inline int tc_retunnel(struct __sk_buff *skb, struct config *cfg, __u64 frame)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *outer = (void *)(eth + 1);
	__u32 tot = 0;
	struct flow_key key = {};
	int why = check_tunnel(outer, end, cfg, &tot, &key);
	if (why == R_UNTRUSTED_TUNNEL) {
		count(bpf_map_lookup_elem(&stats, &(__u32){R_UNTRUSTED_TUNNEL}), frame);
		return TC_ACT_SHOT;
	}
	if (why)
		return tc_pass(why, frame);
	struct iphdr *ip = outer + 1;
	if ((void *)(ip + 1) > end)
		return tc_pass(R_MALFORMED, frame);
	struct flow_value *flow = bpf_map_lookup_elem(&flows, &key);
	if (!flow)
		return tc_pass(R_NO_FLOW, frame);
	__u32 longest = longest_packet(skb, ip, end, tot) + sizeof(struct iphdr);
	if (longest > cfg->tunnel_mtu)
		return tc_pass(R_TOO_BIG, frame);
	struct route spare; // every field is written before it is read (remember)
	__u64 now = bpf_ktime_get_coarse_ns();
	struct route *route = route_to(skb, skb->ingress_ifindex, cfg, route_slot(flow),
				       flow->tunnel_dst, longest, now, &spare, &why);
	if (!route)
		return tc_pass(why, frame);
	__u8 tos = ip->tos;
	__u16 df = ip->frag_off & bpf_htons(IP_DF);
	// Padding after the inner packet goes (the core truncates to the inner length).
	__u32 keep = sizeof(*eth) + sizeof(*outer) + tot;
	if (frame > keep) {
		if (bpf_skb_change_tail(skb, keep, 0))
			return tc_pass(R_MALFORMED, frame);
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		eth = data;
		outer = (void *)(eth + 1);
		ip = outer + 1;
		if ((void *)(ip + 1) > end)
			return tc_pass(R_MALFORMED, frame);
	}
	// The outer header is rewritten in place; a valid IPv4 header sums to zero, so a
	// complete checksum the skb carries stays right, as it does for the TTL's update.
	decrease_ttl(ip);
	write_outer(outer, cfg, route, tot, tos, df);
	__builtin_memcpy(eth->h_dest, route->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, route->smac, ETH_ALEN);
	note_forwarded(flow, now, R_RETUNNELLED, tot);
	return bpf_redirect(route->ifindex, 0);
}

SEC("classifier")
int slr_router_tc(struct __sk_buff *skb)
{
	__u64 frame = skb->len;
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !cfg->enabled)
		return tc_pass(R_DISABLED, frame);
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return tc_pass(R_NOT_IPV4, frame);
	void *data, *end;
	linear_headers(skb, frame, &data, &end);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return tc_pass(R_MALFORMED, frame);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return tc_pass(R_NOT_IPV4, frame);
	struct iphdr *ip = (void *)(eth + 1);
	__u32 tot = 0;
	struct flow_key key = {};
	int why = check_packet(ip, end, frame, cfg, &tot, &key);
	if (why == R_RETUNNELLED)
		return tc_retunnel(skb, cfg, frame);
	if (why)
		return tc_pass(why, frame);
	if ((void *)(ip + 1) > end)
		return tc_pass(R_MALFORMED, frame);
	struct flow_value *flow = bpf_map_lookup_elem(&flows, &key);
	if (!flow)
		return tc_pass(R_NO_FLOW, frame);
	__u32 longest = longest_packet(skb, ip, end, tot) + sizeof(struct iphdr);
	if (longest > cfg->tunnel_mtu)
		return tc_pass(R_TOO_BIG, frame);
	struct route spare; // every field is written before it is read (remember)
	__u64 now = bpf_ktime_get_coarse_ns();
	struct route *route = route_to(skb, skb->ingress_ifindex, cfg, route_slot(flow),
				       flow->tunnel_dst, longest, now, &spare, &why);
	if (!route)
		return tc_pass(why, frame);
	__u8 tos = ip->tos;
	__u16 df = ip->frag_off & bpf_htons(IP_DF);

	// Ethernet padding after the IP packet goes (the slow path never sees it either).
	if (frame > sizeof(*eth) + tot && bpf_skb_change_tail(skb, sizeof(*eth) + tot, 0))
		return tc_pass(R_MALFORMED, frame);
	// Room for the outer header after the Ethernet header. The segment size stays: the
	// segments grow by the outer header, which the check above let through.
	if (bpf_skb_adjust_room(skb, sizeof(struct iphdr), BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO))
		return tc_pass(R_NO_HEADROOM, frame);
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	struct iphdr *outer = (void *)(eth + 1);
	ip = outer + 1;
	if ((void *)(ip + 1) > end) {
		// Cannot happen (the headers were linear before), but the packet is half made.
		count(bpf_map_lookup_elem(&stats, &(__u32){R_NO_HEADROOM}), frame);
		return TC_ACT_SHOT;
	}
	// A valid IPv4 header sums to zero: the outer header and the TTL's update leave a
	// complete checksum the skb carries right.
	decrease_ttl(ip);
	__builtin_memcpy(eth->h_dest, route->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, route->smac, ETH_ALEN);
	write_outer(outer, cfg, route, tot, tos, df); // RFC 2003 3.1: DF copied
	note_forwarded(flow, now, R_FORWARDED, tot);
	return bpf_redirect(route->ifindex, 0);
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

// What both hooks (slr_host, slr_host_tc) decide of the frame at `data`, `frame` bytes in all:
// H_DELIVERED, with the inner packet's length in `inner_tot` and its virtual subnet's index in
// `index`, for a tunnel the host strips; or the reason it passes (H_NOT_TUNNEL, H_DISABLED,
// H_SLOW_PATH: up the stack, or to the agent, untouched) or is dropped (any other reason).
static __always_inline int host_check(void *data, void *end, __u64 frame, __u32 *inner_tot,
				      __u32 *index)
{
	__u32 zero = 0;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return H_NOT_TUNNEL;
	struct iphdr *outer = (void *)(eth + 1);
	if ((void *)(outer + 1) > end || outer->version != 4 || outer->protocol != IPPROTO_IPIP)
		return H_NOT_TUNNEL;
	__u32 *on = bpf_map_lookup_elem(&host_enabled, &zero);
	if (!on || !*on)
		return H_DISABLED;
	__u32 tot = bpf_ntohs(outer->tot_len);
	if (outer->ihl < 5 || tot < outer->ihl * 4 || sizeof(*eth) + tot > frame)
		return H_MALFORMED_OUTER;
	if (outer->ihl != 5)
		// Options: the agent decides.
		return H_SLOW_PATH;
	// Trust is decided on the outer source before anything of the inner packet is read.
	struct lpm_v4 src = { .prefixlen = 32, .addr = outer->saddr };
	if (!bpf_map_lookup_elem(&host_trusted, &src))
		return H_UNTRUSTED;
	if (fold(sum_header(outer)) != 0xffff)
		return H_MALFORMED_OUTER;
	if (outer->frag_off & bpf_htons(IP_MF_OFFSET))
		// The stack reassembles it for the agent.
		return H_SLOW_PATH;

	struct iphdr *ip = outer + 1;
	__u32 room = tot - sizeof(*outer);
	if ((void *)(ip + 1) > end || room < sizeof(*ip) || ip->version != 4 || ip->ihl < 5)
		return H_MALFORMED_INNER;
	__u32 len = bpf_ntohs(ip->tot_len);
	if (len < ip->ihl * 4 || len > room)
		return H_MALFORMED_INNER;
	if (ip->ihl != 5)
		return H_SLOW_PATH;
	if (fold(sum_header(ip)) != 0xffff)
		return H_MALFORMED_INNER;
	if (ip->protocol == IPPROTO_IPIP)
		return H_NESTED;
	if (ip->ttl == 0)
		return H_TTL;
	struct lpm_v4 dst = { .prefixlen = 32, .addr = ip->daddr };
	__u32 *subnet = bpf_map_lookup_elem(&host_subnets, &dst);
	if (!subnet)
		return H_NOT_VIRTUAL;
	*inner_tot = len;
	*index = *subnet;
	return H_DELIVERED;
}

// Whether a reason of host_check drops the frame.
static __always_inline int host_drops(int why)
{
	return why != H_DELIVERED && why != H_NOT_TUNNEL && why != H_DISABLED && why != H_SLOW_PATH;
}

SEC("xdp")
int slr_host(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u64 frame = bpf_xdp_get_buff_len(ctx);
	__u32 inner_tot = 0, index = 0;
	int why = host_check(data, end, frame, &inner_tot, &index);
	if (why != H_DELIVERED)
		return host_verdict(why, frame, host_drops(why) ? XDP_DROP : XDP_PASS);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return host_verdict(H_MALFORMED_OUTER, frame, XDP_DROP);
	unsigned char dmac[ETH_ALEN], smac[ETH_ALEN];
	__builtin_memcpy(dmac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(smac, eth->h_source, ETH_ALEN);
	// Link padding and anything after the inner packet go, as the agent truncates them.
	__u64 excess = frame - sizeof(*eth) - sizeof(struct iphdr) - inner_tot;
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

// slr_host_tc: slr_host at tc ingress (clsact), for links where whole GSO packets arrive (see
// slr_router_tc): the same checks, reasons and counters; a trusted tunnel loses its outer
// header (bpf_skb_adjust_room; the segment size stays what the router sent) and the
// inner packet, however long, goes up the stack.
SEC("classifier")
int slr_host_tc(struct __sk_buff *skb)
{
	__u64 frame = skb->len;
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return host_verdict(H_NOT_TUNNEL, frame, TC_ACT_OK);
	void *data, *end;
	linear_headers(skb, frame, &data, &end);
	__u32 inner_tot = 0, index = 0;
	int why = host_check(data, end, frame, &inner_tot, &index);
	if (why != H_DELIVERED)
		return host_verdict(why, frame, host_drops(why) ? TC_ACT_SHOT : TC_ACT_OK);
	// Anything after the inner packet the stack trims, as it trims link padding.
	if (bpf_skb_adjust_room(skb, -(int)sizeof(struct iphdr), BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO))
		return host_verdict(H_SLOW_PATH, frame, TC_ACT_OK);
	count(bpf_map_lookup_elem(&host_subnet_stats, &index), inner_tot);
	return host_verdict(H_DELIVERED, inner_tot, TC_ACT_OK);
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
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	// Only the loop's IPv4 frames go round (nothing the kernel sends on its own).
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_DROP;
	if (__sync_fetch_and_add(&l->returned, 1) >= l->budget)
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

// The lab's traffic generator (`slr lab generate`, bench/datapath.sh): run on a client's
// interface in live-frame mode (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES), it writes a
// whole frame into every buffer it is given (recycled buffers hold whatever the path did to
// them) and transmits it: IPv4/UDP from `sources` consecutive addresses, `flows` flows in all
// (the source port varies above the address), to one address and port. 60 bytes, the
// shortest Ethernet frame without its FCS.
struct gen_config {
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
	__u32 src;     // the first source address, network byte order
	__u32 dst;     // network byte order
	__u32 sources; // consecutive source addresses, >= 1
	__u32 flows;   // >= 1, <= sources * 64,512
	__u16 dport;   // network byte order
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_config);
} gen_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} gen_next SEC(".maps");

#define GEN_FRAME 60

SEC("xdp")
int slr_gen(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct gen_config *g = bpf_map_lookup_elem(&gen_config, &zero);
	__u64 *next = bpf_map_lookup_elem(&gen_next, &zero);
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (!g || !next || data + GEN_FRAME > end || !g->sources || !g->flows)
		return XDP_DROP;
	__u32 flow = (__u32)(*next % g->flows);
	*next += 1;
	struct ethhdr *eth = data;
	__builtin_memcpy(eth->h_dest, g->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, g->smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	struct iphdr *ip = (void *)(eth + 1);
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(GEN_FRAME - sizeof(*eth));
	ip->id = 0;
	ip->frag_off = bpf_htons(IP_DF);
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = bpf_htonl(bpf_ntohl(g->src) + flow % g->sources);
	ip->daddr = g->dst;
	ip->check = ~fold(sum_header(ip));
	struct udphdr *udp = (void *)(ip + 1);
	udp->source = bpf_htons(1024 + flow / g->sources);
	udp->dest = g->dport;
	udp->len = bpf_htons(GEN_FRAME - sizeof(*eth) - sizeof(*ip));
	udp->check = 0; // none (IPv4 allows it)
	return XDP_TX;
}

// The lab core's forwarder (`slr lab core-xdp on`): the lab's core namespace stands for the
// network between clients, routers and hosts; in a benchmark its kernel forwarding would take
// most of the machine's CPU. slr_fwd forwards IPv4 (no options, TTL above 1) by the kernel's
// FIB and neighbour table to the links in `fwd_ports` (those whose far end runs an XDP
// program, which a veth needs for redirected frames), decrementing the TTL; everything else
// the core's kernel handles as before.
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} fwd_ports SEC(".maps");

SEC("xdp")
int slr_fwd(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl != 5 || ip->ttl <= 1)
		return XDP_PASS;
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = ip->protocol;
	fib.tot_len = bpf_ntohs(ip->tot_len);
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = ctx->ingress_ifindex;
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS;
	if (!bpf_map_lookup_elem(&fwd_ports, &fib.ifindex))
		return XDP_PASS;
	decrease_ttl(ip);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	return bpf_redirect_map(&fwd_ports, fib.ifindex, XDP_PASS);
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
