/* Socket-level Service load-balancing: cgroup v2 socket hooks that translate a Service's ClusterIP:port
 * to one backend once per connection (per datagram for unconnected UDP), and translate back what the
 * application reads, so it only ever sees the Service address. Attached to a cgroup by
 * meshagent.datapath.socklb; maps in lib/lb_maps.h. */
#include "lib/lb.h"

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
