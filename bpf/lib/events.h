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
};

static __always_inline void ma_emit(__u8 type, __u8 verdict, __u8 reason, const struct ma_event_ctx *ctx,
				    const struct ma_tuple *t, const struct ma_ct_value *counters)
{
	struct ma_event ev = {};

	ev.ts_ns = bpf_ktime_get_ns();
	ev.type = type;
	ev.verdict = verdict;
	ev.reason = reason;
	ev.direction = ctx->direction;
	ev.endpoint_id = ctx->endpoint_id;
	ev.ifindex = ctx->ifindex;
	ev.rule_id = ctx->rule_id;
	ev.src_identity = ctx->src_identity;
	ev.dst_identity = ctx->dst_identity;
	ev.saddr = t->saddr;
	ev.daddr = t->daddr;
	ev.sport = t->sport;
	ev.dport = t->dport;
	ev.proto = t->proto;
	ev.tcp_flags = t->tcp_flags;
	ev.flags = ctx->is_reply ? MA_EVENT_F_REPLY : 0;
	if (counters) {
		ev.packets_fwd = counters->packets_fwd;
		ev.bytes_fwd = counters->bytes_fwd;
		ev.packets_rev = counters->packets_rev;
		ev.bytes_rev = counters->bytes_rev;
	}
	if (ma_events.ringbuf_output(&ev, sizeof(ev), BPF_RB_NO_WAKEUP) != 0) {
		__u32 zero = 0;
		__u64 *lost = ma_events_lost.lookup(&zero);
		if (lost)
			*lost += 1;
	}
}

#endif /* MA_EVENTS_H */
