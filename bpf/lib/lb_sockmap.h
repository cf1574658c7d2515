/* Opt-in acceleration: established TCP connections between two sockets of the cgroup are spliced socket
 * to socket (sockops puts each established IPv4 socket in ma_lb_sockhash; sk_msg redirects a message to
 * the peer's socket when the peer is there). Only built with -DMA_LB_SOCKMAP.
 *
 * The connection's handshake went through the tc datapath, so policy allowed it before either socket
 * was added. A peer that is not local (or an IPv6/dual-stack socket, never added) is simply not found:
 * the message takes the normal TCP/IP path. The kernel removes a socket from the map when it closes.
 */
#ifndef MA_LB_SOCKMAP_H
#define MA_LB_SOCKMAP_H

#include "lb_maps.h"

#define MA_AF_INET 2

static __always_inline void __ma_lb_accel_count(__u32 index)
{
	__u64 *counter = ma_lb_accel_stats.lookup(&index);
	if (counter)
		*counter += 1;
}

static __always_inline int ma_lb_sockops(struct bpf_sock_ops *skops)
{
	if (skops->family != MA_AF_INET)
		return 1;
	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	struct ma_lb_sock_key key = {};
	key.local_addr = skops->local_ip4;
	key.remote_addr = skops->remote_ip4;
	key.local_port = skops->local_port;
	key.remote_port = skops->remote_port;
	/* BCC cannot parse the helper's result in a condition: keep it in a variable (BCC 0.26). */
	int rc = ma_lb_sockhash.sock_hash_update(skops, &key, BPF_NOEXIST);
	(void)rc; /* a full map only means this connection is not accelerated */
	return 1;
}

static __always_inline int ma_lb_sk_msg(struct sk_msg_md *msg)
{
	if (msg->family != MA_AF_INET)
		return SK_PASS;
	/* The peer's view of this connection: addresses swapped, ports converted between the forms. */
	struct ma_lb_sock_key peer = {};
	peer.local_addr = msg->remote_ip4;
	peer.remote_addr = msg->local_ip4;
	peer.local_port = bpf_ntohl(msg->remote_port);
	peer.remote_port = bpf_htonl(msg->local_port);
	int verdict = ma_lb_sockhash.msg_redirect_hash(msg, &peer, BPF_F_INGRESS);
	if (verdict == SK_PASS) {
		__ma_lb_accel_count(MA_LB_ACCEL_REDIRECTED);
		return SK_PASS;
	}
	/* No peer in the map: the helper says SK_DROP, but the message must go the normal way. */
	__ma_lb_accel_count(MA_LB_ACCEL_PASSED);
	return SK_PASS;
}

#endif /* MA_LB_SOCKMAP_H */
