/* Socket-level Service translation: backend choice (weighted random, ClientIP affinity), reverse
 * translation by socket cookie, refusal when a Service has no ready backend. */
#ifndef MA_LB_H
#define MA_LB_H

#include "lb_maps.h"
#include "lb_events.h"

#define MA_ECONNREFUSED 111
#define MA_NSEC_PER_SEC 1000000000ULL

/* Only stream and datagram sockets of TCP and UDP are translated. */
static __always_inline __u8 ma_lb_protocol(struct bpf_sock_addr *ctx)
{
	if (ctx->type == 1 /* SOCK_STREAM */ && ctx->protocol == IPPROTO_TCP)
		return IPPROTO_TCP;
	if (ctx->type == 2 /* SOCK_DGRAM */ && ctx->protocol == IPPROTO_UDP)
		return IPPROTO_UDP;
	return 0;
}

/* The slot that holds backend (addr, port) with a non-zero weight, or NULL: an affinity entry is honoured
 * only while its backend is still ready in the Service's current list. */
static __always_inline struct ma_lb_slot *__ma_lb_find(struct ma_lb_service_value *svc, __u32 addr,
							__u16 port)
{
	__u32 previous = 0;
	for (int i = 0; i < MA_LB_SLOTS; i++) {
		if (i >= svc->count)
			break;
		struct ma_lb_slot *slot = &svc->slots[i];
		if (slot->addr == addr && slot->port == port && slot->weight_end > previous)
			return slot;
		previous = slot->weight_end;
	}
	return NULL;
}

/* Weighted random choice: the first slot whose running weight sum exceeds r. */
static __always_inline struct ma_lb_slot *__ma_lb_pick(struct ma_lb_service_value *svc)
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

/* Chooses a backend for a new connection (or datagram) to the frontend `key`. */
static __always_inline struct ma_lb_slot *ma_lb_select(struct bpf_sock_addr *ctx,
						       struct ma_lb_service_key *key,
						       struct ma_lb_service_value *svc)
{
	if (svc->affinity_timeout == 0)
		return __ma_lb_pick(svc);

	struct ma_lb_affinity_key akey = {};
	akey.netns_cookie = bpf_get_netns_cookie(ctx);
	akey.addr = key->addr;
	akey.port = key->port;
	akey.protocol = key->protocol;
	__u64 now = bpf_ktime_get_ns();
	struct ma_lb_slot *slot = NULL;
	struct ma_lb_affinity_value *held = ma_lb_affinity.lookup(&akey);
	if (held && now - held->last_used_ns < (__u64)svc->affinity_timeout * MA_NSEC_PER_SEC)
		slot = __ma_lb_find(svc, held->backend_addr, held->backend_port);
	if (!slot)
		slot = __ma_lb_pick(svc);
	if (!slot)
		return NULL;
	struct ma_lb_affinity_value fresh = {};
	fresh.last_used_ns = now;
	fresh.backend_addr = slot->addr;
	fresh.backend_port = slot->port;
	ma_lb_affinity.update(&akey, &fresh);
	return slot;
}

/* Rewrites the destination of ctx to a backend of the Service it names. Returns 1 to let the call
 * proceed (translated or not a Service), 0 to refuse it with ECONNREFUSED. */
static __always_inline int ma_lb_translate(struct bpf_sock_addr *ctx)
{
	struct ma_lb_service_key key = {};
	key.protocol = ma_lb_protocol(ctx);
	if (key.protocol == 0)
		return 1;
	key.addr = ctx->user_ip4;
	key.port = (__u16)ctx->user_port;
	struct ma_lb_service_value *svc = ma_lb_services.lookup(&key);
	if (!svc)
		return 1;
	struct ma_lb_slot *slot = ma_lb_select(ctx, &key, svc);
	if (!slot) {
		ma_lb_emit(ctx, &key, NULL, MA_LB_EVENT_REFUSED);
		/* Without this the program's 0 would surface as EPERM; a client expects "refused" and must
		 * learn it at once rather than time out. */
		bpf_set_retval(-MA_ECONNREFUSED);
		return 0;
	}
	struct ma_lb_revnat_key rkey = {};
	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.backend_addr = slot->addr;
	rkey.backend_port = slot->port;
	struct ma_lb_revnat_value rval = {};
	rval.addr = key.addr;
	rval.port = key.port;
	ma_lb_revnat.update(&rkey, &rval);
	ma_lb_emit(ctx, &key, slot, MA_LB_EVENT_TRANSLATED);
	ctx->user_ip4 = slot->addr;
	ctx->user_port = (__u32)slot->port;
	return 1;
}

/* Shows the Service address in place of the backend's for a socket that asked for the Service. */
static __always_inline int ma_lb_reverse(struct bpf_sock_addr *ctx)
{
	struct ma_lb_revnat_key rkey = {};
	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.backend_addr = ctx->user_ip4;
	rkey.backend_port = (__u16)ctx->user_port;
	struct ma_lb_revnat_value *rval = ma_lb_revnat.lookup(&rkey);
	if (rval) {
		ctx->user_ip4 = rval->addr;
		ctx->user_port = (__u32)rval->port;
	}
	return 1;
}

#endif /* MA_LB_H */
