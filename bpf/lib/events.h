/* Events to the agent through the ring buffer. No wake-up per event: the agent drains the buffer in
 * batches on a short timer (per-event wake-ups slow the packet path). A record that does not
 * fit is counted in ma_events_lost so the loss is reported, never silent. */
#ifndef MA_EVENTS_H
#define MA_EVENTS_H

#include "maps.h"
#include "parse.h"

struct ma_event_ctx {
	__u32 endpoint_id;
	__u32 ifindex;
	__u32 rule_id;
	__u32 src_identity;
	__u32 dst_identity;
	__u8 direction;
	__u8 is_reply;
	__u8 flags; /* MA_EVENT_F_* besides REPLY */
};

/* Takes one event from its token bucket (MA_EVENT_RATE a second, up to MA_EVENT_BURST at once): the
 * endpoint's own for what it sends, its sender's (by identity) for what it receives. When the bucket is
 * empty the event is counted as suppressed instead, so that one pod's flood leaves room in the ring buffer
 * for the others and its losses are still reported. Updates from two CPUs may race on the bucket: the
 * budget is approximate, the suppressed count is exact. */
static __always_inline int __ma_event_budget_take(const struct ma_event_ctx *ctx, __u64 now)
{
	if (MA_EVENT_RATE == 0)
		return 1;
	const __u64 cost = 1000000000ULL;
	const __u64 cap = (__u64)MA_EVENT_BURST * cost;
	struct ma_event_budget_key key = {
		.ifindex = ctx->ifindex,
		.peer_identity = ctx->direction == MA_DIR_INGRESS ? ctx->src_identity : 0,
	};
	struct ma_event_budget *budget = ma_event_budget.lookup(&key);
	if (!budget) {
		struct ma_event_budget fresh = { .tokens = cap - cost, .last_ns = now };
		ma_event_budget.update(&key, &fresh);
		return 1;
	}
	__u64 elapsed = now - budget->last_ns;
	if (elapsed > cost)
		elapsed = cost; /* a second refills at most MA_EVENT_RATE; capped below anyway */
	__u64 tokens = budget->tokens + elapsed * (__u64)MA_EVENT_RATE;
	if (tokens > cap)
		tokens = cap;
	budget->last_ns = now;
	if (tokens < cost) {
		budget->tokens = tokens;
		__sync_fetch_and_add(&budget->suppressed, 1);
		return 0;
	}
	budget->tokens = tokens - cost;
	return 1;
}

/* Fills a zeroed record (IPv4's on the stack, IPv6's in its ring buffer: ipv6.h). */
static __always_inline void ma_event_fill(struct ma_event *ev, __u64 now, __u8 type, __u8 verdict, __u8 reason,
					  const struct ma_event_ctx *ctx, const struct ma_tuple *t,
					  const struct ma_ct_value *counters)
{
	ev->ts_ns = now;
	ev->type = type;
	ev->verdict = verdict;
	ev->reason = reason;
	ev->direction = ctx->direction;
	ev->endpoint_id = ctx->endpoint_id;
	ev->ifindex = ctx->ifindex;
	ev->rule_id = ctx->rule_id;
	ev->src_identity = ctx->src_identity;
	ev->dst_identity = ctx->dst_identity;
	ev->saddr = t->saddr;
	ev->daddr = t->daddr;
	ev->sport = t->sport;
	ev->dport = t->dport;
	ev->proto = t->proto;
	/* ICMP has no flags: the byte carries its type (the record keeps its size). */
	ev->tcp_flags = t->proto == IPPROTO_ICMP || t->proto == IPPROTO_ICMPV6 ? t->icmp_type : t->tcp_flags;
	ev->icmp_code = t->icmp_code;
	ev->flags = (ctx->is_reply ? MA_EVENT_F_REPLY : 0) | ctx->flags;
	if (counters) {
		ev->packets_fwd = counters->packets_fwd;
		ev->bytes_fwd = counters->bytes_fwd;
		ev->packets_rev = counters->packets_rev;
		ev->bytes_rev = counters->bytes_rev;
	}
}

static __always_inline void ma_event_lost(void)
{
	__u32 zero = 0;
	__u64 *lost = ma_events_lost.lookup(&zero);
	if (lost)
		*lost += 1;
}

static __always_inline void ma_emit(__u8 type, __u8 verdict, __u8 reason, const struct ma_event_ctx *ctx,
				    const struct ma_tuple *t, const struct ma_ct_value *counters)
{
	struct ma_event ev = {};
	__u64 now = bpf_ktime_get_ns();

	if (!__ma_event_budget_take(ctx, now))
		return;
	ma_event_fill(&ev, now, type, verdict, reason, ctx, t, counters);
	if (ma_events.ringbuf_output(&ev, sizeof(ev), BPF_RB_NO_WAKEUP) != 0)
		ma_event_lost();
}

#endif /* MA_EVENTS_H */
