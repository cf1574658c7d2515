/* Every map of the socket load-balancer, declared in one place and pinned under MA_PIN_DIR like the
 * policy datapath's, so that translation keeps working while the agent is down. */
#ifndef MA_LB_MAPS_H
#define MA_LB_MAPS_H

#include "lb_types.h"

#ifndef MA_LB_SERVICES_MAX
#define MA_LB_SERVICES_MAX 16384
#endif
#ifndef MA_LB_REVNAT_MAX
#define MA_LB_REVNAT_MAX 262144
#endif
#ifndef MA_LB_AFFINITY_MAX
#define MA_LB_AFFINITY_MAX 65536
#endif

/* Not preallocated: a value is ~800 bytes and most clusters use a fraction of the capacity. */
BPF_TABLE_PINNED("hash", struct ma_lb_service_key, struct ma_lb_service_value, ma_lb_services,
		 MA_LB_SERVICES_MAX, MA_PIN("ma_lb_services"), BPF_F_NO_PREALLOC);
/* LRU: entries of closed sockets age out instead of needing a close hook. */
BPF_TABLE_PINNED("lru_hash", struct ma_lb_revnat_key, struct ma_lb_revnat_value, ma_lb_revnat,
		 MA_LB_REVNAT_MAX, MA_PIN("ma_lb_revnat"));
BPF_TABLE_PINNED("lru_hash", struct ma_lb_affinity_key, struct ma_lb_affinity_value, ma_lb_affinity,
		 MA_LB_AFFINITY_MAX, MA_PIN("ma_lb_affinity"));

#ifndef MA_LB_EVENTS_PAGES
#define MA_LB_EVENTS_PAGES 64 /* 256 KiB */
#endif
/* Not pinned: it belongs to one agent run's reader. Losses are counted per CPU, never silent. */
BPF_RINGBUF_OUTPUT(ma_lb_events, MA_LB_EVENTS_PAGES);
BPF_TABLE("percpu_array", __u32, __u64, ma_lb_events_lost, 1);

#ifdef MA_LB_SOCKMAP
#ifndef MA_LB_SOCKHASH_MAX
#define MA_LB_SOCKHASH_MAX 65536
#endif
/* Not pinned: it holds live sockets, and the sockops program attached to the cgroup keeps it alive. */
BPF_SOCKHASH(ma_lb_sockhash, struct ma_lb_sock_key, MA_LB_SOCKHASH_MAX);
BPF_TABLE("percpu_array", __u32, __u64, ma_lb_accel_stats, MA_LB_ACCEL_COUNTERS);
#endif

#endif /* MA_LB_MAPS_H */
