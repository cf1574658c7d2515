/* The IPv6 datapath of an endpoint: what ma_handle (endpoint.c) does for IPv4, with IPv6's own parsing,
 * ipcache, conntrack and fragment maps, and the same policy lookup (identities do not depend on the
 * address family, so one policy entry covers a peer on both).
 *
 * Order for each packet: neighbour discovery (hop limit 255, RFC 4861) always passes; a malformed packet
 * (or an extension-header chain longer than the walk) is dropped for a pod under policy; multicast
 * listener discovery (hop limit 1, link-scope) passes like neighbour discovery; a packet from the pod must
 * come from its IPv6 address (ma_endpoints6); then the encryption check between nodes (wireguard6.h),
 * fragments, ICMPv6 errors related to a known connection, conntrack, and the policy for a new
 * connection. Every map that cannot take an entry fails closed as on IPv4.
 *
 * Link-scope traffic is never forwarded by a router (the kernel refuses to forward a packet to a
 * link-local or link-scope multicast destination, or from a link-local source), so the only peer a pod
 * can have on it is the node at the other end of its veth: a packet to a link-scope destination, or one
 * entering the pod from a link-local source, has the host's identity as its peer, and the pod may use its
 * link-local (or the unspecified) address as the source of what it sends to a link-scope destination.
 */
#ifndef MA_IPV6_H
#define MA_IPV6_H

#include "maps6.h"
#include "parse6.h"
#include "identity.h"
#include "policy.h"
#include "conntrack.h"
#include "events.h"
#include "metrics.h"
#include "wireguard6.h"

static __always_inline __u32 ma_identity_of6(const struct ma_ipv6_addr *addr)
{
	struct ma_ipcache6_key key = { .prefixlen = 128 };
	__builtin_memcpy(&key.addr, addr, sizeof(key.addr));
	struct ma_ipcache_value *value = ma_ipcache6.lookup(&key);

	return value ? value->identity : MA_IDENTITY_WORLD;
}

/* --- conntrack, as conntrack.h for IPv4 ----------------------------------------------------------- */

static __always_inline void ma_ct6_key_fill(struct ma_ct6_key *key, __u32 ifindex, const struct ma_tuple6 *t,
					    int reverse)
{
	key->ifindex = ifindex;
	key->proto = t->l4.proto;
	if (reverse) {
		key->saddr = t->daddr;
		key->daddr = t->saddr;
		key->sport = t->l4.dport;
		key->dport = t->l4.sport;
	} else {
		key->saddr = t->saddr;
		key->daddr = t->daddr;
		key->sport = t->l4.sport;
		key->dport = t->l4.dport;
	}
}

static __always_inline int ma_ct6_lookup(__u32 ifindex, const struct ma_tuple6 *t, struct ma_ct6_key *key,
					 struct ma_ct_value **entry)
{
	if (t->l4.proto == IPPROTO_TCP) {
		ma_ct6_key_fill(key, ifindex, t, 0);
		*entry = ma_ct6_tcp.lookup(key);
		if (*entry)
			return MA_CT_ESTABLISHED;
		ma_ct6_key_fill(key, ifindex, t, 1);
		*entry = ma_ct6_tcp.lookup(key);
		if (*entry)
			return MA_CT_REPLY;
	}
	ma_ct6_key_fill(key, ifindex, t, 0);
	*entry = ma_ct6.lookup(key);
	if (*entry)
		return MA_CT_ESTABLISHED;
	ma_ct6_key_fill(key, ifindex, t, 1);
	*entry = ma_ct6.lookup(key);
	if (*entry)
		return MA_CT_REPLY;
	return MA_CT_NEW;
}

/* The connection an ICMPv6 error quotes, in either of its directions; `key` is scratch space. */
static __always_inline struct ma_ct_value *ma_ct6_lookup_quoted(__u32 ifindex, const struct ma_tuple6 *t,
								struct ma_ct6_key *key)
{
	struct ma_ct_value *entry;

	key->ifindex = ifindex;
	key->proto = t->l4.inner_proto;
	key->saddr = t->inner_saddr;
	key->daddr = t->inner_daddr;
	key->sport = t->l4.inner_sport;
	key->dport = t->l4.inner_dport;
	if (key->proto == IPPROTO_TCP && (entry = ma_ct6_tcp.lookup(key)))
		return entry;
	if ((entry = ma_ct6.lookup(key)))
		return entry;
	key->saddr = t->inner_daddr;
	key->daddr = t->inner_saddr;
	key->sport = t->l4.inner_dport;
	key->dport = t->l4.inner_sport;
	if (key->proto == IPPROTO_TCP && (entry = ma_ct6_tcp.lookup(key)))
		return entry;
	return ma_ct6.lookup(key);
}

static __always_inline int ma_ct6_create(struct ma_ct6_key *key, struct ma_ct_value *entry, int tcp_syn)
{
	if (tcp_syn) {
		if (ma_ct6_tcp.update(key, entry) == 0)
			return 0;
		__u32 zero = 0;
		__u64 *overflow = ma_ct_tcp_overflow.lookup(&zero);
		if (overflow)
			*overflow += 1;
	}
	return ma_ct6.update(key, entry);
}

/* --- the endpoint, handed over by the endpoint program -------------------------------------------- */

/* The endpoint program has looked the endpoint up already: it hands the entry's fields to the IPv6
 * program in the packet's control block (skb->cb, which a tail call keeps) instead of a second lookup.
 * The interface and a marker say the values are ours and this packet's on this interface; anything else
 * in the control block (another program's, or ours from another interface the packet crossed) is not
 * taken, and the IPv6 program looks the endpoint up itself. */
#define MA_CB_ENDPOINT_ID 0
#define MA_CB_IDENTITY 1
#define MA_CB_FLAGS 2
#define MA_CB_IFINDEX 3
#define MA_CB_MARK 4
#define MA_CB_HANDED 0x6d613665 /* "ma6e" */

static __always_inline struct ma_endpoint_value *__ma_endpoint_handed(struct __sk_buff *skb,
								   struct ma_endpoint_value *handed)
{
	if (skb->cb[MA_CB_MARK] != MA_CB_HANDED || skb->cb[MA_CB_IFINDEX] != skb->ifindex)
		return NULL;
	skb->cb[MA_CB_MARK] = 0; /* read once: a later program on another interface looks up its own */
	handed->endpoint_id = skb->cb[MA_CB_ENDPOINT_ID];
	handed->identity = skb->cb[MA_CB_IDENTITY];
	handed->flags = skb->cb[MA_CB_FLAGS];
	return handed;
}

/* --- the packet path ------------------------------------------------------------------------------- */

static __always_inline int __ma6_pass(__u8 direction, __u32 bytes)
{
	ma_count(MA_DROP_NONE, direction, bytes);
	return TC_ACT_OK;
}

/* ma_emit for IPv6: the record is written in place in ma_events6 (no copy on the stack). */
static __always_inline void ma_emit6(__u8 type, __u8 verdict, __u8 reason, const struct ma_event_ctx *ctx,
				     const struct ma_tuple *l4, const struct ma_ipv6_addr *saddr,
				     const struct ma_ipv6_addr *daddr, const struct ma_ct_value *counters)
{
	__u64 now = bpf_ktime_get_ns();

	if (!__ma_event_budget_take(ctx, now))
		return;
	struct ma_event6 *ev = ma_events6.ringbuf_reserve(sizeof(struct ma_event6));
	if (!ev) {
		ma_event_lost();
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ma_event_fill(&ev->base, now, type, verdict, reason, ctx, l4, counters);
	ev->saddr = *saddr;
	ev->daddr = *daddr;
	ma_events6.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
}

static __always_inline void __ma6_emit(__u8 type, __u8 verdict, __u8 reason, const struct ma_event_ctx *ctx,
				       const struct ma_tuple6 *t)
{
	ma_emit6(type, verdict, reason, ctx, &t->l4, &t->saddr, &t->daddr, NULL);
}

static __always_inline int __ma6_drop(__u8 reason, struct ma_event_ctx *ctx, const struct ma_tuple6 *t,
				      __u32 bytes)
{
	ma_count(reason, ctx->direction, bytes);
	__ma6_emit(MA_EVENT_DROP, 0, reason, ctx, t);
	return TC_ACT_SHOT;
}

/* A TCP segment of a known connection, as __ma_tcp_segment in endpoint.c. */
static __always_inline int __ma6_tcp_segment(struct ma_ct6_key *key, struct ma_ct_value *entry, int state,
					     struct ma_event_ctx *ctx, const struct ma_tuple *t)
{
	int reply = state == MA_CT_REPLY;
	int in_window = ma_ct_tcp_in_window(entry, reply, t);

	if ((t->tcp_flags & (MA_TCP_RST | MA_TCP_FIN)) && !in_window)
		return 0;
	if (!in_window)
		return 1;
	if (t->tcp_flags & MA_TCP_FIN)
		entry->flags |= reply ? MA_CT_F_FIN_REV : MA_CT_F_FIN_FWD;
	if (!(t->tcp_flags & MA_TCP_RST))
		ma_ct_tcp_track_seq(entry, reply, t);

	int fin_both = (entry->flags & (MA_CT_F_FIN_FWD | MA_CT_F_FIN_REV)) ==
		       (MA_CT_F_FIN_FWD | MA_CT_F_FIN_REV);
	if (((t->tcp_flags & MA_TCP_RST) || fin_both) && !(entry->flags & MA_CT_F_CLOSED)) {
		struct ma_tuple orig = {
			.sport = key->sport, .dport = key->dport,
			.proto = key->proto, .tcp_flags = entry->tcp_flags | t->tcp_flags,
		};
		struct ma_event_ctx close_ctx = *ctx;
		close_ctx.direction = entry->direction;
		close_ctx.is_reply = 0;
		close_ctx.rule_id = entry->rule_id;
		close_ctx.src_identity = entry->src_identity;
		close_ctx.dst_identity = entry->dst_identity;
		entry->flags |= MA_CT_F_CLOSED;
		ma_emit6(MA_EVENT_CONN_CLOSE, entry->verdict, MA_DROP_NONE, &close_ctx, &orig, &key->saddr,
			 &key->daddr, entry);
	}
	return 1;
}

/* An IPv6 frame (Ethernet header at the start): the body of the IPv6 programs (ma_from_endpoint6 and
 * ma_to_endpoint6 in endpoint.c), which the endpoint programs enter by a tail call. */
static __always_inline int ma_handle_ipv6(struct __sk_buff *skb, __u8 direction)
{
	__u32 bytes = skb->len;
	struct ma_event_ctx ctx_data = {
		.ifindex = skb->ifindex,
		.direction = direction,
	};
	struct ma_event_ctx *ctx = &ctx_data;
	__u32 zero = 0;
	struct ma_v6_scratch *scratch = ma_v6_scratch.lookup(&zero);
	if (!scratch) { /* never: a per-CPU array's one slot always exists */
		ma_count(MA_DROP_MALFORMED, direction, bytes);
		return TC_ACT_SHOT;
	}
	__builtin_memset(scratch, 0, sizeof(*scratch));
	struct ma_tuple6 *t = &scratch->t;
	struct ma_ct6_key *ct_key = &scratch->ct_key;
	struct ma_frag6_key *frag_key = &scratch->frag_key;

	struct ma_endpoint_key ep_key = { .ifindex = skb->ifindex };
	struct ma_endpoint_value handed = {};
	struct ma_endpoint_value *ep = __ma_endpoint_handed(skb, &handed);
	if (!ep)
		ep = ma_endpoints.lookup(&ep_key);
	if (!ep) /* removed between the two programs: fail closed, as the endpoint program does */
		return __ma6_drop(MA_DROP_NO_ENDPOINT, ctx, t, bytes);
	__u8 flags = ep->flags;
	int enforce = flags & (direction == MA_DIR_INGRESS ? MA_EP_ENFORCE_INGRESS : MA_EP_ENFORCE_EGRESS);
	int audit = flags & (direction == MA_DIR_INGRESS ? MA_EP_AUDIT_INGRESS : MA_EP_AUDIT_EGRESS);
	int under_policy = flags & (MA_EP_ENFORCE_INGRESS | MA_EP_ENFORCE_EGRESS);
	ctx->endpoint_id = ep->endpoint_id;

	if (ma_is_ipv6_nd(skb, sizeof(struct ethhdr)))
		return __ma6_pass(direction, bytes);
	int rc = ma_parse_ipv6(skb, sizeof(struct ethhdr), t);
	if (rc == MA_PARSE_MALFORMED) {
		if (!under_policy)
			return __ma6_pass(direction, bytes);
		return __ma6_drop(MA_DROP_MALFORMED, ctx, t, bytes);
	}

	int link_local_source = ma_ipv6_link_local_source(&t->saddr);
	int link_scope = ma_ipv6_link_scope_dest(&t->daddr) || (direction == MA_DIR_INGRESS && link_local_source);
	if (link_scope && link_local_source && t->l4.proto == IPPROTO_ICMPV6 && t->hop_limit == 1 &&
	    ma_is_icmp6_mld(t->l4.icmp_type))
		return __ma6_pass(direction, bytes);

	if (direction == MA_DIR_EGRESS && !(link_scope && link_local_source)) {
		struct ma_endpoint6_value *own = ma_endpoints6.lookup(&ep_key);
		if (!own || !ma_ipv6_addr_eq(&t->saddr, &own->addr)) {
			ctx->src_identity = ma_identity_of6(&t->saddr);
			ctx->dst_identity = ma_identity_of6(&t->daddr);
			return __ma6_drop(MA_DROP_SPOOFED_SOURCE, ctx, t, bytes);
		}
	}

	struct ma_wg_verdict wg = {};
	if (ma_wg_classify6(skb, direction, t, bytes, &wg)) {
		ctx->src_identity = ma_identity_of6(&t->saddr);
		ctx->dst_identity = ma_identity_of6(&t->daddr);
		return __ma6_drop(MA_DROP_UNENCRYPTED, ctx, t, bytes);
	}
	if (wg.cls == MA_WG_ENCRYPTED)
		ctx->flags |= MA_EVENT_F_ENCRYPTED;

	if (t->l4.is_fragment) { /* the key only for fragments: most packets are not */
		frag_key->saddr = t->saddr;
		frag_key->daddr = t->daddr;
		frag_key->id = t->frag_id;
		frag_key->proto = t->l4.proto;
		if (rc == MA_PARSE_FRAG_NO_L4) {
			struct ma_frag_value *ports = ma_frags6.lookup(frag_key);
			if (!ports) {
				ctx->src_identity = ma_identity_of6(&t->saddr);
				ctx->dst_identity = ma_identity_of6(&t->daddr);
				if (enforce)
					return __ma6_drop(MA_DROP_FRAG_NO_FIRST, ctx, t, bytes);
				return __ma6_pass(direction, bytes);
			}
			t->l4.sport = ports->sport;
			t->l4.dport = ports->dport;
		} else if (t->l4.more_frags) {
			struct ma_frag_value ports = { .sport = t->l4.sport, .dport = t->l4.dport };
			ma_frags6.update(frag_key, &ports);
		}
	}

	if (t->l4.icmp_error && ma_ct6_lookup_quoted(skb->ifindex, t, ct_key))
		return __ma6_pass(direction, bytes);

	struct ma_ct_value *entry = NULL;
	int state = ma_ct6_lookup(skb->ifindex, t, ct_key, &entry);
	int tcp = t->l4.proto == IPPROTO_TCP;
	int syn_only = (t->l4.tcp_flags & (MA_TCP_SYN | MA_TCP_ACK)) == MA_TCP_SYN;

	if (entry && !(tcp && syn_only && (entry->flags & MA_CT_F_CLOSED))) {
		ctx->is_reply = state == MA_CT_REPLY;
		if (!tcp || __ma6_tcp_segment(ct_key, entry, state, ctx, &t->l4))
			ma_ct_account(entry, state, bytes, t->l4.tcp_flags);
		return __ma6_pass(direction, bytes);
	}

	int midstream = tcp && !(t->l4.tcp_flags & MA_TCP_SYN);
	if (midstream)
		ctx->flags |= MA_EVENT_F_MIDSTREAM;
	if (link_scope) {
		ctx->src_identity = direction == MA_DIR_EGRESS ? ep->identity : MA_IDENTITY_HOST;
		ctx->dst_identity = direction == MA_DIR_EGRESS ? MA_IDENTITY_HOST : ep->identity;
	} else {
		ctx->src_identity = direction == MA_DIR_EGRESS ? ep->identity : ma_identity_of6(&t->saddr);
		ctx->dst_identity = direction == MA_DIR_EGRESS ? ma_identity_of6(&t->daddr) : ep->identity;
	}
	__u32 peer_identity = direction == MA_DIR_EGRESS ? ctx->dst_identity : ctx->src_identity;
	struct ma_policy_result res = {};
	if (flags & MA_EP_ISOLATED) {
		res.reason = MA_DROP_ISOLATED;
		res.verdict = MA_VERDICT_DENIED;
	} else {
		ma_policy_decide(ep->endpoint_id, peer_identity, direction, t->l4.proto, t->l4.dport, enforce,
				 audit, &res);
	}
	ctx->rule_id = res.rule_id;

	if (res.verdict == MA_VERDICT_DENIED) {
		__ma6_emit(MA_EVENT_POLICY_VERDICT, res.verdict, res.reason, ctx, t);
		return __ma6_drop(res.reason, ctx, t, bytes);
	}
	if (tcp && (t->l4.tcp_flags & MA_TCP_RST)) {
		__ma6_emit(MA_EVENT_POLICY_VERDICT, res.verdict, res.reason, ctx, t);
		return __ma6_pass(direction, bytes);
	}

	__u64 now = bpf_ktime_get_ns();
	struct ma_ct_value new_entry = {
		.packets_fwd = 1,
		.bytes_fwd = bytes,
		.created_ns = now,
		.last_seen_ns = now,
		.rule_id = res.rule_id,
		.src_identity = ctx->src_identity,
		.dst_identity = ctx->dst_identity,
		.direction = direction,
		.verdict = res.verdict,
		.tcp_flags = t->l4.tcp_flags,
	};
	if (tcp) {
		new_entry.flags = MA_CT_F_SEQ_FWD | (midstream ? MA_CT_F_MIDSTREAM : 0);
		new_entry.next_seq_fwd = t->l4.seq + t->l4.seg_len;
		if (t->l4.tcp_flags & MA_TCP_FIN)
			new_entry.flags |= MA_CT_F_FIN_FWD;
	}
	ma_ct6_key_fill(ct_key, skb->ifindex, t, 0);
	if (ma_ct6_create(ct_key, &new_entry, tcp && !midstream) != 0)
		return __ma6_drop(MA_DROP_CT_FULL, ctx, t, bytes);
	ma_wg_count_flow(&wg, direction);

	__ma6_emit(MA_EVENT_POLICY_VERDICT, res.verdict, res.reason, ctx, t);
	return __ma6_pass(direction, bytes);
}

/* From the endpoint program: the IPv6 program of this direction, handed the endpoint's entry. Returns
 * only when that program is not in ma_ipv6_progs (never once the agent has loaded): the caller then
 * drops. */
static __always_inline void ma_enter_ipv6(struct __sk_buff *skb, __u8 direction,
					  const struct ma_endpoint_value *ep)
{
	skb->cb[MA_CB_ENDPOINT_ID] = ep->endpoint_id;
	skb->cb[MA_CB_IDENTITY] = ep->identity;
	skb->cb[MA_CB_FLAGS] = ep->flags;
	skb->cb[MA_CB_IFINDEX] = skb->ifindex;
	skb->cb[MA_CB_MARK] = MA_CB_HANDED;
	ma_ipv6_progs.call(skb, direction);
	skb->cb[MA_CB_MARK] = 0;
}

#endif /* MA_IPV6_H */
