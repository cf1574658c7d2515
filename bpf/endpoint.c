/* tc programs on the host-side interface of each local endpoint (pod), direct-action mode.
 *
 *   ma_from_endpoint: tc ingress of the host-side veth = traffic leaving the pod (pod egress)
 *   ma_to_endpoint:   tc egress of the host-side veth  = traffic entering the pod (pod ingress)
 *
 * Interfaces that are not in ma_endpoints pass untouched.
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

/* A packet of a known connection: count it, follow TCP teardown. */
static __always_inline int __ma_tracked(struct ma_ct_key *key, struct ma_ct_value *entry, int state,
					struct ma_event_ctx *ctx, const struct ma_tuple *t, __u32 bytes)
{
	__u8 direction = ctx->direction;

	ma_ct_account(entry, state, bytes, t->tcp_flags);
	if (t->proto == IPPROTO_TCP) {
		int rst = t->tcp_flags & MA_TCP_RST;
		int fin_both = (entry->flags & (MA_CT_F_FIN_FWD | MA_CT_F_FIN_REV)) ==
			       (MA_CT_F_FIN_FWD | MA_CT_F_FIN_REV);

		if (rst || (fin_both && !(entry->flags & MA_CT_F_CLOSED))) {
			/* A close event describes the connection as it began, not the packet that ended it. */
			struct ma_tuple orig = {
				.saddr = key->saddr, .daddr = key->daddr,
				.sport = key->sport, .dport = key->dport,
				.proto = key->proto, .tcp_flags = entry->tcp_flags,
			};
			ctx->direction = entry->direction;
			ctx->is_reply = 0;
			ctx->rule_id = entry->rule_id;
			ctx->src_identity = entry->src_identity;
			ctx->dst_identity = entry->dst_identity;
			entry->flags |= MA_CT_F_CLOSED;
			ma_emit(MA_EVENT_CONN_CLOSE, entry->verdict, MA_DROP_NONE, ctx, &orig, entry);
			if (rst)
				ma_ct.delete(key);
		}
	}
	return __ma_pass(direction, bytes);
}

static __always_inline int ma_handle(struct __sk_buff *skb, __u8 direction)
{
	struct ma_endpoint_key ep_key = { .ifindex = skb->ifindex };
	struct ma_endpoint_value *ep = ma_endpoints.lookup(&ep_key);

	if (!ep)
		return TC_ACT_OK;

	__u8 flags = ep->flags;
	int enforce = flags & (direction == MA_DIR_INGRESS ? MA_EP_ENFORCE_INGRESS : MA_EP_ENFORCE_EGRESS);
	int audit = flags & (direction == MA_DIR_INGRESS ? MA_EP_AUDIT_INGRESS : MA_EP_AUDIT_EGRESS);
	int under_policy = flags & (MA_EP_ENFORCE_INGRESS | MA_EP_ENFORCE_EGRESS);
	__u32 bytes = skb->len;

	struct ma_tuple t = {};
	struct ma_event_ctx ctx = {
		.endpoint_id = ep->endpoint_id,
		.ifindex = skb->ifindex,
		.direction = direction,
	};

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return __ma_drop(MA_DROP_MALFORMED, &ctx, &t, bytes);

	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		/* No IPv6 enforcement yet: a pod under policy gets no IPv6 but neighbour discovery, so IPv6
		 * can never be a way around its policy. */
		if (!under_policy || ma_is_ipv6_nd(skb, sizeof(*eth)))
			return __ma_pass(direction, bytes);
		return __ma_drop(MA_DROP_IPV6_UNSUPPORTED, &ctx, &t, bytes);
	}
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;

	int rc = ma_parse_ipv4(skb, sizeof(*eth), &t);
	if (rc == MA_PARSE_MALFORMED)
		return __ma_drop(MA_DROP_MALFORMED, &ctx, &t, bytes);

	if (direction == MA_DIR_EGRESS && t.saddr != ep->addr) {
		ctx.src_identity = ma_identity_of(t.saddr);
		ctx.dst_identity = ma_identity_of(t.daddr);
		return __ma_drop(MA_DROP_SPOOFED_SOURCE, &ctx, &t, bytes);
	}

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

	struct ma_ct_key ct_key = {};
	struct ma_ct_value *entry = NULL;
	int state = ma_ct_lookup(skb->ifindex, &t, &ct_key, &entry);

	if (entry) {
		int syn_only = (t.tcp_flags & (MA_TCP_SYN | MA_TCP_ACK)) == MA_TCP_SYN;
		/* A SYN on a closed connection's tuple (port reuse) is a new connection. */
		if (!(t.proto == IPPROTO_TCP && syn_only && (entry->flags & MA_CT_F_CLOSED))) {
			ctx.is_reply = state == MA_CT_REPLY;
			return __ma_tracked(&ct_key, entry, state, &ctx, &t, bytes);
		}
	}

	/* A new connection: the policy of this endpoint in this direction decides. Identities are looked up
	 * only here (and for drops), never for packets of known connections. */
	ctx.src_identity = direction == MA_DIR_EGRESS ? ep->identity : ma_identity_of(t.saddr);
	ctx.dst_identity = direction == MA_DIR_EGRESS ? ma_identity_of(t.daddr) : ep->identity;
	__u32 peer_identity = direction == MA_DIR_EGRESS ? ctx.dst_identity : ctx.src_identity;
	struct ma_policy_result res = {};
	ma_policy_decide(ep->endpoint_id, peer_identity, direction, t.proto, t.dport, enforce, audit, &res);
	ctx.rule_id = res.rule_id;

	if (res.verdict == MA_VERDICT_DENIED) {
		ma_emit(MA_EVENT_POLICY_VERDICT, res.verdict, res.reason, &ctx, &t, NULL);
		return __ma_drop(res.reason, &ctx, &t, bytes);
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
	ma_ct_key_fill(&ct_key, skb->ifindex, &t, 0);
	if (ma_ct.update(&ct_key, &new_entry) != 0)
		return __ma_drop(MA_DROP_CT_FULL, &ctx, &t, bytes);

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
