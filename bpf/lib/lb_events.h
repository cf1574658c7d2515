/* Translation events to the agent: which Service a socket asked for and which backend it got (or that it
 * was refused), so flows can show both. Written without a wake-up (the agent drains in batches);
 * a record that does not fit is counted in ma_lb_events_lost. */
#ifndef MA_LB_EVENTS_H
#define MA_LB_EVENTS_H

#include "lb_maps.h"

static __always_inline void ma_lb_emit(struct bpf_sock_addr *ctx, const struct ma_lb_service_key *key,
				       const struct ma_lb_slot *slot, __u8 type)
{
	struct ma_lb_event ev = {};
	ev.ts_ns = bpf_ktime_get_ns();
	ev.cookie = bpf_get_socket_cookie(ctx);
	ev.netns_cookie = bpf_get_netns_cookie(ctx);
	ev.service_addr = key->addr;
	ev.service_port = key->port;
	ev.protocol = key->protocol;
	ev.type = type;
	if (slot) {
		ev.backend_addr = slot->addr;
		ev.backend_port = slot->port;
	}
	if (ma_lb_events.ringbuf_output(&ev, sizeof(ev), BPF_RB_NO_WAKEUP) != 0) {
		__u32 zero = 0;
		__u64 *lost = ma_lb_events_lost.lookup(&zero);
		if (lost)
			*lost += 1;
	}
}

#endif /* MA_LB_EVENTS_H */
