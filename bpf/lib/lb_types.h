/* Keys and values of the socket load-balancer's maps: the ABI between bpf/sock_lb.c and the agent.
 * Mirrored by ctypes classes in agent/meshagent/datapath/maps/lb_*.py (one module per map); a privileged
 * test compares sizes and offsets with what BCC compiled. Change both together.
 * Byte order: addresses and ports are network order (suffix _net in Python); all else host order.
 */
#ifndef MA_LB_TYPES_H
#define MA_LB_TYPES_H

#include "common.h"

/* Backends per service frontend. Part of the ABI (the value's size), so not a -D define. */
#define MA_LB_SLOTS 64

/* ma_lb_services: a Service frontend (ClusterIP, port, protocol) -> its ready backends. */
struct ma_lb_service_key {
	__u32 addr; /* network order */
	__u16 port; /* network order */
	__u8 protocol; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
};

/* One backend; weight_end is the running sum of the weights up to and including this slot, so a random
 * number r in [0, total_weight) picks the first slot whose weight_end > r. */
struct ma_lb_slot {
	__u32 addr; /* network order */
	__u16 port; /* network order */
	__u16 pad;
	__u32 weight_end;
};

struct ma_lb_service_value {
	__u32 total_weight; /* 0: no ready backend, the connection is refused */
	__u32 affinity_timeout; /* seconds; 0: no session affinity */
	__u16 count; /* slots in use */
	__u16 flags; /* reserved */
	__u32 pad;
	struct ma_lb_slot slots[MA_LB_SLOTS];
};

/* ma_lb_revnat: (socket cookie, backend) -> the Service address the socket asked for, so that
 * getpeername() and recvfrom() show the Service, not the backend. */
struct ma_lb_revnat_key {
	__u64 cookie;
	__u32 backend_addr; /* network order */
	__u16 backend_port; /* network order */
	__u16 pad;
};

struct ma_lb_revnat_value {
	__u32 addr; /* network order */
	__u16 port; /* network order */
	__u16 pad;
};

/* ma_lb_affinity: ClientIP session affinity. The client is its network namespace (a pod): at connect()
 * time the source address is often not chosen yet, the namespace always is. */
struct ma_lb_affinity_key {
	__u64 netns_cookie;
	__u32 addr; /* service address, network order */
	__u16 port; /* network order */
	__u8 protocol;
	__u8 pad;
};

struct ma_lb_affinity_value {
	__u64 last_used_ns; /* bpf_ktime_get_ns() */
	__u32 backend_addr; /* network order */
	__u16 backend_port; /* network order */
	__u16 pad;
};

/* ma_lb_events: ring buffer records, one per translation decision (connect, or datagram sent). */
#define MA_LB_EVENT_TRANSLATED 1
#define MA_LB_EVENT_REFUSED 2 /* the Service has no usable backend: ECONNREFUSED */

struct ma_lb_event {
	__u64 ts_ns;        /* bpf_ktime_get_ns() */
	__u64 cookie;       /* socket cookie */
	__u64 netns_cookie; /* the client's network namespace */
	__u32 service_addr; /* network order */
	__u32 backend_addr; /* network order, 0 when refused */
	__u16 service_port; /* network order */
	__u16 backend_port; /* network order */
	__u8 protocol;
	__u8 type; /* MA_LB_EVENT_* */
	__u8 pad[2];
};

/* ma_lb_sockhash (opt-in acceleration): an established local TCP socket by its own view of the
 * connection. Ports as the sockops/sk_msg contexts give them: local_port host order, remote_port the
 * context's raw 32-bit value (network order, shifted), so both programs build keys the same way. */
struct ma_lb_sock_key {
	__u32 local_addr; /* network order */
	__u32 remote_addr; /* network order */
	__u32 local_port; /* host order */
	__u32 remote_port; /* raw context value */
};

/* ma_lb_accel_stats: per-CPU counters of the sk_msg program, indexed by MA_LB_ACCEL_*. */
#define MA_LB_ACCEL_REDIRECTED 0 /* messages spliced to the peer socket */
#define MA_LB_ACCEL_PASSED 1     /* messages left to the TCP/IP stack (peer not in the map) */
#define MA_LB_ACCEL_COUNTERS 2

#endif /* MA_LB_TYPES_H */
