/* Keys and values of the socket load-balancer's IPv6 maps: the same records as lb_types.h with 128-bit
 * addresses. Separate maps (not a family field in the IPv4 ones) keep the IPv4 ABI and its pinned maps
 * unchanged, and keep an IPv4 Service value at its size (a slot would grow from 12 to 24 bytes).
 * Mirrored by ctypes classes in agent/meshagent/datapath/maps/lb6_*.py; a privileged test compares sizes
 * and offsets with what BCC compiled. Change both together.
 * Byte order: addresses and ports are network order; an address is four 32-bit words because the
 * socket hooks' context gives and takes it that way (user_ip6[4]).
 */
#ifndef MA_LB6_TYPES_H
#define MA_LB6_TYPES_H

#include "lb_types.h"

/* ma_lb6_services: an IPv6 Service frontend (ClusterIP, port, protocol) -> its ready IPv6 backends. */
struct ma_lb6_service_key {
	__u32 addr[4]; /* network order */
	__u16 port;    /* network order */
	__u8 protocol; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
};

/* One backend; weight_end as in struct ma_lb_slot. */
struct ma_lb6_slot {
	__u32 addr[4]; /* network order */
	__u16 port;    /* network order */
	__u16 pad;
	__u32 weight_end;
};

struct ma_lb6_service_value {
	__u32 total_weight;     /* 0: no ready backend, the connection is refused */
	__u32 affinity_timeout; /* seconds; 0: no session affinity */
	__u16 count;            /* slots in use */
	__u16 flags;            /* reserved */
	__u32 pad;
	struct ma_lb6_slot slots[MA_LB_SLOTS];
};

/* ma_lb6_revnat: (socket cookie, IPv6 backend) -> the IPv6 Service address the socket asked for. */
struct ma_lb6_revnat_key {
	__u64 cookie;
	__u32 backend_addr[4]; /* network order */
	__u16 backend_port;    /* network order */
	__u16 pad;
	__u32 pad2;
};

struct ma_lb6_revnat_value {
	__u32 addr[4]; /* network order */
	__u16 port;    /* network order */
	__u16 pad;
};

/* ma_lb6_affinity: ClientIP session affinity for IPv6 frontends, the client being its network namespace
 * as in struct ma_lb_affinity_key. */
struct ma_lb6_affinity_key {
	__u64 netns_cookie;
	__u32 addr[4]; /* service address, network order */
	__u16 port;    /* network order */
	__u8 protocol;
	__u8 pad;
	__u32 pad2;
};

struct ma_lb6_affinity_value {
	__u64 last_used_ns;    /* bpf_ktime_get_ns() */
	__u32 backend_addr[4]; /* network order */
	__u16 backend_port;    /* network order */
	__u16 pad;
	__u32 pad2;
};

/* ma_lb6_events: ring buffer records for IPv6 frontends (types MA_LB_EVENT_* as for IPv4). */
struct ma_lb6_event {
	__u64 ts_ns;           /* bpf_ktime_get_ns() */
	__u64 cookie;          /* socket cookie */
	__u64 netns_cookie;    /* the client's network namespace */
	__u32 service_addr[4]; /* network order */
	__u32 backend_addr[4]; /* network order, zero when refused */
	__u16 service_port;    /* network order */
	__u16 backend_port;    /* network order */
	__u8 protocol;
	__u8 type; /* MA_LB_EVENT_* */
	__u8 pad[2];
};

/* ma_lb6_sockhash (opt-in acceleration): an established local IPv6 TCP socket by its own view of the
 * connection, ports as in struct ma_lb_sock_key. A socket whose addresses are both v4-mapped goes to the
 * IPv4 sockhash under its IPv4 key instead, so that it finds an AF_INET peer (and an AF_INET peer finds
 * it). */
struct ma_lb6_sock_key {
	__u32 local_addr[4];  /* network order */
	__u32 remote_addr[4]; /* network order */
	__u32 local_port;     /* host order */
	__u32 remote_port;    /* raw context value */
};

#endif /* MA_LB6_TYPES_H */
