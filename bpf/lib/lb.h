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

/* What a lookup of an IPv4 Service address decided (the callers own the context's address fields, since
 * an IPv4 hook and an IPv6 hook with a v4-mapped address hold the same IPv4 address in different ones). */
#define MA_LB_NOT_A_SERVICE 0
#define MA_LB_TRANSLATED 1
#define MA_LB_REFUSED 2

/* Chooses a backend of the IPv4 Service (vip, ctx's port, protocol): on MA_LB_TRANSLATED *backend is the
 * backend's address, ctx's port is rewritten and the reverse entry is recorded. */
static __always_inline int __ma_lb_translate_v4(struct bpf_sock_addr *ctx, __u8 protocol, __u32 vip,
						__u32 *backend)
{
	struct ma_lb_service_key key = {};
	key.protocol = protocol;
	key.addr = vip;
	key.port = (__u16)ctx->user_port;
	struct ma_lb_service_value *svc = ma_lb_services.lookup(&key);
	if (!svc)
		return MA_LB_NOT_A_SERVICE;
	struct ma_lb_slot *slot = ma_lb_select(ctx, &key, svc);
	if (!slot) {
		ma_lb_emit(ctx, &key, NULL, MA_LB_EVENT_REFUSED);
		return MA_LB_REFUSED;
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
	*backend = slot->addr;
	ctx->user_port = (__u32)slot->port;
	return MA_LB_TRANSLATED;
}

/* Refuses the call: without bpf_set_retval the program's 0 would surface as EPERM; a client expects
 * "refused" and must learn it at once rather than time out. */
static __always_inline int ma_lb_refuse(void)
{
	bpf_set_retval(-MA_ECONNREFUSED);
	return 0;
}

/* Rewrites the destination of ctx to a backend of the Service it names. Returns 1 to let the call
 * proceed (translated or not a Service), 0 to refuse it with ECONNREFUSED. */
static __always_inline int ma_lb_translate(struct bpf_sock_addr *ctx)
{
	__u8 protocol = ma_lb_protocol(ctx);
	if (protocol == 0)
		return 1;
	__u32 backend = 0;
	int decided = __ma_lb_translate_v4(ctx, protocol, ctx->user_ip4, &backend);
	if (decided == MA_LB_REFUSED)
		return ma_lb_refuse();
	if (decided == MA_LB_TRANSLATED)
		ctx->user_ip4 = backend;
	return 1;
}

/* The Service address an IPv4 backend (ctx's port) stands for on this socket: 1 and *vip set (and ctx's
 * port rewritten) when the socket asked for a Service. */
static __always_inline int __ma_lb_reverse_v4(struct bpf_sock_addr *ctx, __u32 backend, __u32 *vip)
{
	struct ma_lb_revnat_key rkey = {};
	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.backend_addr = backend;
	rkey.backend_port = (__u16)ctx->user_port;
	struct ma_lb_revnat_value *rval = ma_lb_revnat.lookup(&rkey);
	if (!rval)
		return 0;
	*vip = rval->addr;
	ctx->user_port = (__u32)rval->port;
	return 1;
}

/* Shows the Service address in place of the backend's for a socket that asked for the Service. */
static __always_inline int ma_lb_reverse(struct bpf_sock_addr *ctx)
{
	__u32 vip = 0;
	if (__ma_lb_reverse_v4(ctx, ctx->user_ip4, &vip))
		ctx->user_ip4 = vip;
	return 1;
}

#endif /* MA_LB_H */
