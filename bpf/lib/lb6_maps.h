/* The socket load-balancer's IPv6 maps, pinned under MA_PIN_DIR next to the IPv4 ones. */
#ifndef MA_LB6_MAPS_H
#define MA_LB6_MAPS_H

#include "lb6_types.h"
#include "lb_maps.h"

#ifndef MA_LB6_SERVICES_MAX
#define MA_LB6_SERVICES_MAX 16384
#endif
#ifndef MA_LB6_REVNAT_MAX
#define MA_LB6_REVNAT_MAX 262144
#endif
#ifndef MA_LB6_AFFINITY_MAX
#define MA_LB6_AFFINITY_MAX 65536
#endif

/* Not preallocated: a value is ~1.5 KiB and most clusters have few IPv6 Services, if any. */
BPF_TABLE_PINNED("hash", struct ma_lb6_service_key, struct ma_lb6_service_value, ma_lb6_services,
		 MA_LB6_SERVICES_MAX, MA_PIN("ma_lb6_services"), BPF_F_NO_PREALLOC);
/* LRU: entries of closed sockets age out instead of needing a close hook. */
BPF_TABLE_PINNED("lru_hash", struct ma_lb6_revnat_key, struct ma_lb6_revnat_value, ma_lb6_revnat,
		 MA_LB6_REVNAT_MAX, MA_PIN("ma_lb6_revnat"));
BPF_TABLE_PINNED("lru_hash", struct ma_lb6_affinity_key, struct ma_lb6_affinity_value, ma_lb6_affinity,
		 MA_LB6_AFFINITY_MAX, MA_PIN("ma_lb6_affinity"));

/* Its own ring buffer, so that each ring holds one record type (the IPv4 record stays as it is); both are
 * drained together. Losses share ma_lb_events_lost. */
BPF_RINGBUF_OUTPUT(ma_lb6_events, MA_LB_EVENTS_PAGES);

#ifdef MA_LB_SOCKMAP
/* Not pinned, like ma_lb_sockhash; same capacity. */
BPF_SOCKHASH(ma_lb6_sockhash, struct ma_lb6_sock_key, MA_LB_SOCKHASH_MAX);
#endif

#endif /* MA_LB6_MAPS_H */
