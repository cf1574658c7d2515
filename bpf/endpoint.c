/* tc programs on the host-side interface of each local endpoint (pod), direct-action mode.
 *
 *   ma_from_endpoint: tc ingress of the host-side veth = traffic leaving the pod (pod egress)
 *   ma_to_endpoint:   tc egress of the host-side veth  = traffic entering the pod (pod ingress)
 *
 * Our programs are attached only to endpoints' interfaces. One that is not in ma_endpoints (its entry
 * could not be written) passes nothing but ARP: fail closed.
 *
 *   ma_from_endpoint6, ma_to_endpoint6: IPv6 (lib/ipv6.h), entered by a tail call from the two above.
 */
#include "lib/common.h"
#include "lib/types.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/identity.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/events.h"
#include "lib/metrics.h"
#include "lib/ipv6.h"
#include "lib/wireguard.h"

static __always_inline int __ma_drop(__u8 reason, struct ma_event_ctx *ctx, const struct ma_tuple *t,
				     __u32 bytes)
{
	ma_count(reason, ctx->direction, bytes);
	ma_emit(MA_EVENT_DROP, 0, reason, ctx, t, NULL);
	return TC_ACT_SHOT;
}

static __always_inline int __ma_pass(__u8 direction, __u32 bytes)
{
	ma_count(MA_DROP_NONE, direction, bytes);
	return TC_ACT_OK;
}

/* A TCP segment of a known connection: follows sequence numbers and teardown. Returns 0 for an RST or
 * FIN outside the connection's window, which the endpoint's kernel ignores: passed, but it changes
 * nothing here either. */
static __always_inline int __ma_tcp_segment(struct ma_ct_key *key, struct ma_ct_value *entry, int state,
					    struct ma_event_ctx *ctx, const struct ma_tuple *t)
{
	int reply = state == MA_CT_REPLY;
	int in_window = ma_ct_tcp_in_window(entry, reply, t);

	if ((t->tcp_flags & (MA_TCP_RST | MA_TCP_FIN)) && !in_window)
		return 0;
	if (!in_window)
		return 1; /* data far from the window (e.g. after a loss): counted, but not a new position */
	if (t->tcp_flags & MA_TCP_FIN)
		entry->flags |= reply ? MA_CT_F_FIN_REV : MA_CT_F_FIN_FWD;
	if (!(t->tcp_flags & MA_TCP_RST))
		ma_ct_tcp_track_seq(entry, reply, t);

	int fin_both = (entry->flags & (MA_CT_F_FIN_FWD | MA_CT_F_FIN_REV)) ==
		       (MA_CT_F_FIN_FWD | MA_CT_F_FIN_REV);
	if ((t->tcp_flags & MA_TCP_RST) || fin_both) {
		if (!(entry->flags & MA_CT_F_CLOSED)) {
			/* A close event describes the connection as it began, not the packet that ended it. */
			struct ma_tuple orig = {
				.saddr = key->saddr, .daddr = key->daddr,
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
			ma_emit(MA_EVENT_CONN_CLOSE, entry->verdict, MA_DROP_NONE, &close_ctx, &orig, entry);
		}
	}
	return 1;
}

/* A packet of a known connection: count it, follow TCP teardown. */
static __always_inline int __ma_tracked(struct ma_ct_key *key, struct ma_ct_value *entry, int state,
					struct ma_event_ctx *ctx, const struct ma_tuple *t, __u32 bytes)
{
	if (t->proto == IPPROTO_TCP && !__ma_tcp_segment(key, entry, state, ctx, t))
		return __ma_pass(ctx->direction, bytes);
	ma_ct_account(entry, state, bytes, t->tcp_flags);
	return __ma_pass(ctx->direction, bytes);
}

/* Frames that are neither IPv4 nor IPv6. ARP always passes (address resolution for every pod). For a
 * pod under policy other ethertypes (802.1Q and QinQ tags, anything else) are dropped, so that no
 * encapsulation carries traffic around the rules. A pod not under policy is untouched. In audit mode a
 * drop is reported as audited and the frame passes. */
static __always_inline int __ma_other_ethertype(__u16 h_proto, int under_policy, int audit,
						struct ma_event_ctx *ctx, struct ma_tuple *t, __u32 bytes)
{
	if (h_proto == bpf_htons(ETH_P_ARP) || !under_policy)
		return __ma_pass(ctx->direction, bytes);
	if (audit) {
		ma_emit(MA_EVENT_POLICY_VERDICT, MA_VERDICT_AUDITED, MA_DROP_ETHERTYPE, ctx, t, NULL);
		return __ma_pass(ctx->direction, bytes);
	}
	return __ma_drop(MA_DROP_ETHERTYPE, ctx, t, bytes);
}

static __always_inline int ma_handle(struct __sk_buff *skb, __u8 direction)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 bytes = skb->len;
	struct ma_tuple t = {};
	struct ma_event_ctx ctx = {
		.ifindex = skb->ifindex,
		.direction = direction,
	};

	struct ma_endpoint_key ep_key = { .ifindex = skb->ifindex };
	struct ma_endpoint_value *ep = ma_endpoints.lookup(&ep_key);
	if (!ep) {
		/* Our programs are only ever on endpoints' interfaces; one without an entry is an endpoint
		 * whose entry could not be written (or is being removed): nothing but ARP passes. */
		if ((void *)(eth + 1) <= data_end && eth->h_proto == bpf_htons(ETH_P_ARP))
			return TC_ACT_OK;
		return __ma_drop(MA_DROP_NO_ENDPOINT, &ctx, &t, bytes);
	}

	__u8 flags = ep->flags;
	int enforce = flags & (direction == MA_DIR_INGRESS ? MA_EP_ENFORCE_INGRESS : MA_EP_ENFORCE_EGRESS);
	int audit = flags & (direction == MA_DIR_INGRESS ? MA_EP_AUDIT_INGRESS : MA_EP_AUDIT_EGRESS);
	int under_policy = flags & (MA_EP_ENFORCE_INGRESS | MA_EP_ENFORCE_EGRESS);
	ctx.endpoint_id = ep->endpoint_id;

	if ((void *)(eth + 1) > data_end) {
		if (!under_policy)
			return __ma_pass(direction, bytes);
		return __ma_drop(MA_DROP_MALFORMED, &ctx, &t, bytes);
	}
	/* A VLAN tag the receive path already took off the frame (into skb metadata, before tc ingress)
	 * is still a tagged frame. */
	__u16 h_proto = skb->vlan_present ? bpf_htons(ETH_P_8021Q) : eth->h_proto;
	if (h_proto == bpf_htons(ETH_P_IPV6)) {
		ma_enter_ipv6(skb, direction, ep);
		return __ma_drop(MA_DROP_IPV6_UNSUPPORTED, &ctx, &t, bytes); /* the IPv6 program is missing */
	}
	if (h_proto != bpf_htons(ETH_P_IP))
		return __ma_other_ethertype(h_proto, under_policy, audit, &ctx, &t, bytes);

	int rc = ma_parse_ipv4(skb, sizeof(*eth), &t);
	if (rc == MA_PARSE_MALFORMED) {
		/* A pod not under policy is untouched: its own kernel judges a malformed packet. */
		if (!under_policy)
			return __ma_pass(direction, bytes);
		return __ma_drop(MA_DROP_MALFORMED, &ctx, &t, bytes);
	}

	if (direction == MA_DIR_EGRESS && t.saddr != ep->addr) {
		ctx.src_identity = ma_identity_of(t.saddr);
		ctx.dst_identity = ma_identity_of(t.daddr);
		return __ma_drop(MA_DROP_SPOOFED_SOURCE, &ctx, &t, bytes);
	}

	struct ma_wg_verdict wg = {};
	if (ma_wg_classify(skb, direction, &t, bytes, &wg)) {
		ctx.src_identity = ma_identity_of(t.saddr);
		ctx.dst_identity = ma_identity_of(t.daddr);
		return __ma_drop(MA_DROP_UNENCRYPTED, &ctx, &t, bytes);
	}
	if (wg.cls == MA_WG_ENCRYPTED)
		ctx.flags |= MA_EVENT_F_ENCRYPTED;

	struct ma_frag_key frag_key = {
		.saddr = t.saddr, .daddr = t.daddr, .ip_id = t.ip_id, .proto = t.proto,
	};
	if (rc == MA_PARSE_FRAG_NO_L4) {
		struct ma_frag_value *ports = ma_frags.lookup(&frag_key);
		if (!ports) {
			ctx.src_identity = ma_identity_of(t.saddr);
			ctx.dst_identity = ma_identity_of(t.daddr);
			if (enforce)
				return __ma_drop(MA_DROP_FRAG_NO_FIRST, &ctx, &t, bytes);
			return __ma_pass(direction, bytes);
		}
		t.sport = ports->sport;
		t.dport = ports->dport;
	} else if (t.more_frags) {
		struct ma_frag_value ports = { .sport = t.sport, .dport = t.dport };
		ma_frags.update(&frag_key, &ports);
	}

	/* An ICMP error quoting a connection this endpoint has is part of it (path-MTU discovery, port
	 * unreachable, time exceeded): passed as related, whatever the policy says of ICMP. */
	if (t.icmp_error && ma_ct_lookup_quoted(skb->ifindex, &t))
		return __ma_pass(direction, bytes);

	struct ma_ct_key ct_key = {};
	struct ma_ct_value *entry = NULL;
	int state = ma_ct_lookup(skb->ifindex, &t, &ct_key, &entry);
	int tcp = t.proto == IPPROTO_TCP;
	int syn_only = (t.tcp_flags & (MA_TCP_SYN | MA_TCP_ACK)) == MA_TCP_SYN;

	if (entry) {
		/* A SYN on a closed connection's tuple (port reuse) is a new connection. */
		if (!(tcp && syn_only && (entry->flags & MA_CT_F_CLOSED))) {
			ctx.is_reply = state == MA_CT_REPLY;
			return __ma_tracked(&ct_key, entry, state, &ctx, &t, bytes);
		}
	}

	/* A new connection: the policy of this endpoint in this direction decides. Identities are looked up
	 * only here (and for drops), never for packets of known connections. TCP without SYN is judged the
	 * same way (its entry may have been lost) and flagged as mid-stream. */
	int midstream = tcp && !(t.tcp_flags & MA_TCP_SYN);
	if (midstream)
		ctx.flags |= MA_EVENT_F_MIDSTREAM;
	ctx.src_identity = direction == MA_DIR_EGRESS ? ep->identity : ma_identity_of(t.saddr);
	ctx.dst_identity = direction == MA_DIR_EGRESS ? ma_identity_of(t.daddr) : ep->identity;
	__u32 peer_identity = direction == MA_DIR_EGRESS ? ctx.dst_identity : ctx.src_identity;
	struct ma_policy_result res = {};
	if (flags & MA_EP_ISOLATED) {
		/* A deny or an identity is missing: an allow in ma_policy may cover what should not pass. */
		res.reason = MA_DROP_ISOLATED;
		res.verdict = MA_VERDICT_DENIED;
	} else {
		ma_policy_decide(ep->endpoint_id, peer_identity, direction, t.proto, t.dport, enforce, audit,
				 &res);
	}
	ctx.rule_id = res.rule_id;

	if (res.verdict == MA_VERDICT_DENIED) {
		ma_emit(MA_EVENT_POLICY_VERDICT, res.verdict, res.reason, &ctx, &t, NULL);
		return __ma_drop(res.reason, &ctx, &t, bytes);
	}
	/* A bare RST of an unknown connection ends nothing to track: passed as judged, no entry. */
	if (tcp && (t.tcp_flags & MA_TCP_RST)) {
		ma_emit(MA_EVENT_POLICY_VERDICT, res.verdict, res.reason, &ctx, &t, NULL);
		return __ma_pass(direction, bytes);
	}

	__u64 now = bpf_ktime_get_ns();
	struct ma_ct_value new_entry = {
		.packets_fwd = 1,
		.bytes_fwd = bytes,
		.created_ns = now,
		.last_seen_ns = now,
		.rule_id = res.rule_id,
		.src_identity = ctx.src_identity,
		.dst_identity = ctx.dst_identity,
		.direction = direction,
		.verdict = res.verdict,
		.tcp_flags = t.tcp_flags,
	};
	if (tcp) {
		new_entry.flags = MA_CT_F_SEQ_FWD | (midstream ? MA_CT_F_MIDSTREAM : 0);
		new_entry.next_seq_fwd = t.seq + t.seg_len;
		if (t.tcp_flags & MA_TCP_FIN)
			new_entry.flags |= MA_CT_F_FIN_FWD;
	}
	ma_ct_key_fill(&ct_key, skb->ifindex, &t, 0);
	if (ma_ct_create(&ct_key, &new_entry, tcp && !midstream) != 0)
		return __ma_drop(MA_DROP_CT_FULL, &ctx, &t, bytes);
	ma_wg_count_flow(&wg, direction);

	ma_emit(MA_EVENT_POLICY_VERDICT, res.verdict, res.reason, &ctx, &t, NULL);
	return __ma_pass(direction, bytes);
}

int ma_from_endpoint(struct __sk_buff *skb)
{
	return ma_handle(skb, MA_DIR_EGRESS);
}

int ma_to_endpoint(struct __sk_buff *skb)
{
	return ma_handle(skb, MA_DIR_INGRESS);
}

int ma_from_endpoint6(struct __sk_buff *skb)
{
	return ma_handle_ipv6(skb, MA_DIR_EGRESS);
}

int ma_to_endpoint6(struct __sk_buff *skb)
{
	return ma_handle_ipv6(skb, MA_DIR_INGRESS);
}
