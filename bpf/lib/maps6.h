/* Maps of the IPv6 datapath, pinned like their IPv4 counterparts (maps.h), sized by the same capacities. */
#ifndef MA_MAPS6_H
#define MA_MAPS6_H

#include "maps.h"
#include "types6.h"
#include "parse6.h"

BPF_TABLE_PINNED("lpm_trie", struct ma_ipcache6_key, struct ma_ipcache_value, ma_ipcache6,
		 MA_IPCACHE_MAX, MA_PIN("ma_ipcache6"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct ma_endpoint_key, struct ma_endpoint6_value, ma_endpoints6,
		 MA_ENDPOINTS_MAX, MA_PIN("ma_endpoints6"));
BPF_TABLE_PINNED("hash", struct ma_ct6_key, struct ma_ct_value, ma_ct6_tcp,
		 MA_CT_TCP_MAX, MA_PIN("ma_ct6_tcp"));
BPF_TABLE_PINNED("lru_hash", struct ma_ct6_key, struct ma_ct_value, ma_ct6,
		 MA_CT_MAX, MA_PIN("ma_ct6"));
BPF_TABLE_PINNED("lru_hash", struct ma_frag6_key, struct ma_frag_value, ma_frags6,
		 MA_FRAGS_MAX, MA_PIN("ma_frags6"));
/* The IPv6 programs, by direction (MA_DIR_*), entered by a tail call from the endpoint programs: IPv6 gets
 * a stack of its own, and the IPv4 path is compiled exactly as without it. Pinned, because a program
 * array is emptied when the last reference from user space goes: the kernel must keep judging IPv6 while
 * no agent runs. */
BPF_TABLE_PINNED("prog", int, int, ma_ipv6_progs, 2, MA_PIN("ma_ipv6_progs"));

/* Events of IPv6 packets (ma_event6), read like ma_events; not pinned, as ma_events is not. */
BPF_RINGBUF_OUTPUT(ma_events6, MA_EVENTS_PAGES);

/* Per-CPU working space of the IPv6 programs, whose tuple and keys do not fit on the BPF stack beside
 * the rest. A tc program runs to its end on its CPU, so no other packet uses the slot meanwhile. Not
 * pinned: it holds nothing between packets. */
struct ma_v6_scratch {
	struct ma_tuple6 t;
	struct ma_ct6_key ct_key;
	struct ma_frag6_key frag_key;
};
BPF_PERCPU_ARRAY(ma_v6_scratch, struct ma_v6_scratch, 1);

#endif /* MA_MAPS6_H */
