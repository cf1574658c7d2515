/* Opt-in acceleration: established TCP connections between two sockets of the cgroup are spliced socket
 * to socket (sockops puts each established socket in a sockhash; sk_msg redirects a message to the peer's
 * socket when the peer is there). Only built with -DMA_LB_SOCKMAP.
 *
 * IPv4 sockets go to ma_lb_sockhash, IPv6 ones to ma_lb6_sockhash; an IPv6 socket whose addresses are
 * both v4-mapped (a dual-stack socket talking IPv4) goes to ma_lb_sockhash under its IPv4 key, because
 * its peer may be a plain IPv4 socket and the two must find each other.
 *
 * The connection's handshake went through the tc datapath, so policy allowed it before either socket
 * was added. A peer that is not local is simply not found: the message takes the normal TCP/IP path.
 * The kernel removes a socket from the map when it closes.
 */
#ifndef MA_LB_SOCKMAP_H
#define MA_LB_SOCKMAP_H

#include "lb_maps.h"
#include "lb6.h"

#define MA_AF_INET 2
#define MA_AF_INET6 10

static __always_inline void __ma_lb_accel_count(__u32 index)
{
	__u64 *counter = ma_lb_accel_stats.lookup(&index);
	if (counter)
		*counter += 1;
}

static __always_inline int ma_lb_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	/* BCC cannot parse the helper's result in a condition: keep it in a variable (BCC 0.26). A full map
	 * only means this connection is not accelerated. */
	int rc = 0;
	if (skops->family == MA_AF_INET) {
		struct ma_lb_sock_key key = {};
		key.local_addr = skops->local_ip4;
		key.remote_addr = skops->remote_ip4;
		key.local_port = skops->local_port;
		key.remote_port = skops->remote_port;
		rc = ma_lb_sockhash.sock_hash_update(skops, &key, BPF_NOEXIST);
	} else if (skops->family == MA_AF_INET6) {
		struct ma_lb6_sock_key key = {};
		key.local_addr[0] = skops->local_ip6[0];
		key.local_addr[1] = skops->local_ip6[1];
		key.local_addr[2] = skops->local_ip6[2];
		key.local_addr[3] = skops->local_ip6[3];
		key.remote_addr[0] = skops->remote_ip6[0];
		key.remote_addr[1] = skops->remote_ip6[1];
		key.remote_addr[2] = skops->remote_ip6[2];
		key.remote_addr[3] = skops->remote_ip6[3];
		key.local_port = skops->local_port;
		key.remote_port = skops->remote_port;
		if (ma_lb6_v4mapped(key.local_addr) && ma_lb6_v4mapped(key.remote_addr)) {
			struct ma_lb_sock_key key4 = {};
			key4.local_addr = key.local_addr[3];
			key4.remote_addr = key.remote_addr[3];
			key4.local_port = key.local_port;
			key4.remote_port = key.remote_port;
			rc = ma_lb_sockhash.sock_hash_update(skops, &key4, BPF_NOEXIST);
		} else {
			rc = ma_lb6_sockhash.sock_hash_update(skops, &key, BPF_NOEXIST);
		}
	}
	(void)rc;
	return 1;
}

/* What a redirect helper said: the message goes to the peer, or (no peer in the map, for which the
 * helper says SK_DROP) the normal way. */
static __always_inline int __ma_lb_accel_verdict(int verdict)
{
	__ma_lb_accel_count(verdict == SK_PASS ? MA_LB_ACCEL_REDIRECTED : MA_LB_ACCEL_PASSED);
	return SK_PASS;
}

static __always_inline int ma_lb_sk_msg(struct sk_msg_md *msg)
{
	/* The peer's view of this connection: addresses swapped, ports converted between the forms. */
	__u32 peer_local_port = bpf_ntohl(msg->remote_port);
	__u32 peer_remote_port = bpf_htonl(msg->local_port);
	if (msg->family == MA_AF_INET) {
		struct ma_lb_sock_key peer = {};
		peer.local_addr = msg->remote_ip4;
		peer.remote_addr = msg->local_ip4;
		peer.local_port = peer_local_port;
		peer.remote_port = peer_remote_port;
		return __ma_lb_accel_verdict(ma_lb_sockhash.msg_redirect_hash(msg, &peer, BPF_F_INGRESS));
	}
	if (msg->family != MA_AF_INET6)
		return SK_PASS;
	struct ma_lb6_sock_key peer = {};
	peer.local_addr[0] = msg->remote_ip6[0];
	peer.local_addr[1] = msg->remote_ip6[1];
	peer.local_addr[2] = msg->remote_ip6[2];
	peer.local_addr[3] = msg->remote_ip6[3];
	peer.remote_addr[0] = msg->local_ip6[0];
	peer.remote_addr[1] = msg->local_ip6[1];
	peer.remote_addr[2] = msg->local_ip6[2];
	peer.remote_addr[3] = msg->local_ip6[3];
	peer.local_port = peer_local_port;
	peer.remote_port = peer_remote_port;
	if (ma_lb6_v4mapped(peer.local_addr) && ma_lb6_v4mapped(peer.remote_addr)) {
		struct ma_lb_sock_key peer4 = {};
		peer4.local_addr = peer.local_addr[3];
		peer4.remote_addr = peer.remote_addr[3];
		peer4.local_port = peer.local_port;
		peer4.remote_port = peer.remote_port;
		return __ma_lb_accel_verdict(ma_lb_sockhash.msg_redirect_hash(msg, &peer4, BPF_F_INGRESS));
	}
	return __ma_lb_accel_verdict(ma_lb6_sockhash.msg_redirect_hash(msg, &peer, BPF_F_INGRESS));
}

#endif /* MA_LB_SOCKMAP_H */
