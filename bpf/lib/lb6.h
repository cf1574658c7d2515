/* Socket-level Service translation for IPv6 sockets: IPv6 ClusterIPs through the ma_lb6_* maps, and
 * IPv4-mapped addresses (::ffff:a.b.c.d, what a dual-stack socket uses for IPv4) through the IPv4 maps,
 * so that an IPv4 Service is translated the same whichever family the client's socket has. */
#ifndef MA_LB6_H
#define MA_LB6_H

#include "lb.h"
#include "lb6_maps.h"


static __always_inline int ma_lb6_v4mapped(const __u32 addr[4])
{
	return addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int ma_lb6_same(const __u32 a[4], const __u32 b[4])
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline void ma_lb6_copy(__u32 to[4], const __u32 from[4])
{
	to[0] = from[0];
	to[1] = from[1];
	to[2] = from[2];
	to[3] = from[3];
}

/* The socket context's address, read one 32-bit word at a time (the only access the verifier allows). */
static __always_inline void ma_lb6_ctx_addr(struct bpf_sock_addr *ctx, __u32 addr[4])
{
	addr[0] = ctx->user_ip6[0];
	addr[1] = ctx->user_ip6[1];
	addr[2] = ctx->user_ip6[2];
	addr[3] = ctx->user_ip6[3];
}

static __always_inline void ma_lb6_set_ctx_addr(struct bpf_sock_addr *ctx, const __u32 addr[4])
{
	ctx->user_ip6[0] = addr[0];
	ctx->user_ip6[1] = addr[1];
	ctx->user_ip6[2] = addr[2];
	ctx->user_ip6[3] = addr[3];
}

static __always_inline void ma_lb6_emit(struct bpf_sock_addr *ctx, const struct ma_lb6_service_key *key,
					const struct ma_lb6_slot *slot, __u8 type)
{
	struct ma_lb6_event ev = {};
	ev.ts_ns = bpf_ktime_get_ns();
	ev.cookie = bpf_get_socket_cookie(ctx);
	ev.netns_cookie = bpf_get_netns_cookie(ctx);
	ma_lb6_copy(ev.service_addr, key->addr);
	ev.service_port = key->port;
	ev.protocol = key->protocol;
	ev.type = type;
	if (slot) {
		ma_lb6_copy(ev.backend_addr, slot->addr);
		ev.backend_port = slot->port;
	}
	if (ma_lb6_events.ringbuf_output(&ev, sizeof(ev), BPF_RB_NO_WAKEUP) != 0) {
		__u32 zero = 0;
		__u64 *lost = ma_lb_events_lost.lookup(&zero);
		if (lost)
			*lost += 1;
	}
}

/* The slot holding backend (addr, port) with a non-zero weight, or NULL (as __ma_lb_find). */
static __always_inline struct ma_lb6_slot *__ma_lb6_find(struct ma_lb6_service_value *svc,
							  const __u32 addr[4], __u16 port)
{
	__u32 previous = 0;
	for (int i = 0; i < MA_LB_SLOTS; i++) {
		if (i >= svc->count)
			break;
		struct ma_lb6_slot *slot = &svc->slots[i];
		if (ma_lb6_same(slot->addr, addr) && slot->port == port && slot->weight_end > previous)
			return slot;
		previous = slot->weight_end;
	}
	return NULL;
}

/* Weighted random choice (as __ma_lb_pick). */
static __always_inline struct ma_lb6_slot *__ma_lb6_pick(struct ma_lb6_service_value *svc)
{
	__u32 total = svc->total_weight;
	if (total == 0)
		return NULL;
	__u32 r = bpf_get_prandom_u32() % total;
	for (int i = 0; i < MA_LB_SLOTS; i++) {
		if (i >= svc->count)
			break;
		if (r < svc->slots[i].weight_end)
			return &svc->slots[i];
	}
	return NULL;
}

/* Chooses a backend for a new connection (or datagram) to the IPv6 frontend `key` (as ma_lb_select). */
static __always_inline struct ma_lb6_slot *ma_lb6_select(struct bpf_sock_addr *ctx,
							 struct ma_lb6_service_key *key,
							 struct ma_lb6_service_value *svc)
{
	if (svc->affinity_timeout == 0)
		return __ma_lb6_pick(svc);

	struct ma_lb6_affinity_key akey = {};
	akey.netns_cookie = bpf_get_netns_cookie(ctx);
	ma_lb6_copy(akey.addr, key->addr);
	akey.port = key->port;
	akey.protocol = key->protocol;
	__u64 now = bpf_ktime_get_ns();
	struct ma_lb6_slot *slot = NULL;
	struct ma_lb6_affinity_value *held = ma_lb6_affinity.lookup(&akey);
	if (held && now - held->last_used_ns < (__u64)svc->affinity_timeout * MA_NSEC_PER_SEC)
		slot = __ma_lb6_find(svc, held->backend_addr, held->backend_port);
	if (!slot)
		slot = __ma_lb6_pick(svc);
	if (!slot)
		return NULL;
	struct ma_lb6_affinity_value fresh = {};
	fresh.last_used_ns = now;
	ma_lb6_copy(fresh.backend_addr, slot->addr);
	fresh.backend_port = slot->port;
	ma_lb6_affinity.update(&akey, &fresh);
	return slot;
}

/* connect6/sendmsg6: rewrites the destination to a backend of the Service it names. Returns 1 to let the
 * call proceed (translated or not a Service), 0 to refuse it with ECONNREFUSED. */
static __always_inline int ma_lb6_translate(struct bpf_sock_addr *ctx)
{
	__u8 protocol = ma_lb_protocol(ctx);
	if (protocol == 0)
		return 1;
	struct ma_lb6_service_key key = {};
	ma_lb6_ctx_addr(ctx, key.addr);
	if (ma_lb6_v4mapped(key.addr)) {
		__u32 backend = 0;
		int decided = __ma_lb_translate_v4(ctx, protocol, key.addr[3], &backend);
		if (decided == MA_LB_REFUSED)
			return ma_lb_refuse();
		if (decided == MA_LB_TRANSLATED)
			ctx->user_ip6[3] = backend; /* stays v4-mapped: the socket is IPv6 */
		return 1;
	}
	key.protocol = protocol;
	key.port = (__u16)ctx->user_port;
	struct ma_lb6_service_value *svc = ma_lb6_services.lookup(&key);
	if (!svc)
		return 1;
	struct ma_lb6_slot *slot = ma_lb6_select(ctx, &key, svc);
	if (!slot) {
		ma_lb6_emit(ctx, &key, NULL, MA_LB_EVENT_REFUSED);
		return ma_lb_refuse();
	}
	struct ma_lb6_revnat_key rkey = {};
	rkey.cookie = bpf_get_socket_cookie(ctx);
	ma_lb6_copy(rkey.backend_addr, slot->addr);
	rkey.backend_port = slot->port;
	struct ma_lb6_revnat_value rval = {};
	ma_lb6_copy(rval.addr, key.addr);
	rval.port = key.port;
	ma_lb6_revnat.update(&rkey, &rval);
	ma_lb6_emit(ctx, &key, slot, MA_LB_EVENT_TRANSLATED);
	ma_lb6_set_ctx_addr(ctx, slot->addr);
	ctx->user_port = (__u32)slot->port;
	return 1;
}

/* recvmsg6/getpeername6: shows the Service address in place of the backend's for a socket that asked for
 * the Service (an IPv4-mapped backend through the IPv4 reverse map). */
static __always_inline int ma_lb6_reverse(struct bpf_sock_addr *ctx)
{
	struct ma_lb6_revnat_key rkey = {};
	ma_lb6_ctx_addr(ctx, rkey.backend_addr);
	if (ma_lb6_v4mapped(rkey.backend_addr)) {
		__u32 vip = 0;
		if (__ma_lb_reverse_v4(ctx, rkey.backend_addr[3], &vip))
			ctx->user_ip6[3] = vip;
		return 1;
	}
	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.backend_port = (__u16)ctx->user_port;
	struct ma_lb6_revnat_value *rval = ma_lb6_revnat.lookup(&rkey);
	if (rval) {
		ma_lb6_set_ctx_addr(ctx, rval->addr);
		ctx->user_port = (__u32)rval->port;
	}
	return 1;
}

#endif /* MA_LB6_H */
