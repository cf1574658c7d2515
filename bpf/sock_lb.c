/* Socket-level Service load-balancing: cgroup v2 socket hooks that translate a Service's ClusterIP:port
 * to one backend once per connection (per datagram for unconnected UDP), and translate back what the
 * application reads, so it only ever sees the Service address. Attached to a cgroup by
 * meshagent.datapath.socklb; maps in lib/lb_maps.h (IPv4) and lib/lb6_maps.h (IPv6). */
#include "lib/lb.h"
#include "lib/lb6.h"

/* connect(): TCP and connected UDP. */
int ma_sock_connect4(struct bpf_sock_addr *ctx)
{
	return ma_lb_translate(ctx);
}

/* sendto()/sendmsg() with an address on an unconnected UDP socket. */
int ma_sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return ma_lb_translate(ctx);
}

/* recvfrom()/recvmsg() on an unconnected UDP socket: the reply's source becomes the Service. */
int ma_sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return ma_lb_reverse(ctx);
}

/* getpeername(): the peer of a translated socket is the Service. */
int ma_sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return ma_lb_reverse(ctx);
}

/* The same four hooks for IPv6 sockets: IPv6 Services, and IPv4 Services reached through v4-mapped
 * addresses on dual-stack sockets. */
int ma_sock_connect6(struct bpf_sock_addr *ctx)
{
	return ma_lb6_translate(ctx);
}

int ma_sock_sendmsg6(struct bpf_sock_addr *ctx)
{
	return ma_lb6_translate(ctx);
}

int ma_sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	return ma_lb6_reverse(ctx);
}

int ma_sock_getpeername6(struct bpf_sock_addr *ctx)
{
	return ma_lb6_reverse(ctx);
}

#ifdef MA_LB_SOCKMAP
#include "lib/lb_sockmap.h"

/* sockops on the same cgroup: established TCP sockets enter ma_lb_sockhash or ma_lb6_sockhash. */
int ma_sock_ops(struct bpf_sock_ops *skops)
{
	return ma_lb_sockops(skops);
}

/* sk_msg on both sockhashes: a send on a socket in either goes straight to its local peer. */
int ma_sock_msg(struct sk_msg_md *msg)
{
	return ma_lb_sk_msg(msg);
}
#endif
