/* Every map of the policy datapath, declared in one place. State maps are pinned under MA_PIN_DIR so
 * they outlive the agent: the kernel keeps enforcing while it is down and a restarted agent adopts them.
 * The event ring buffer is not pinned: it belongs to the programs of one agent run. */
#ifndef MA_MAPS_H
#define MA_MAPS_H

#include "types.h"

BPF_TABLE_PINNED("lpm_trie", struct ma_ipcache_key, struct ma_ipcache_value, ma_ipcache,
		 MA_IPCACHE_MAX, MA_PIN("ma_ipcache"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct ma_endpoint_key, struct ma_endpoint_value, ma_endpoints,
		 MA_ENDPOINTS_MAX, MA_PIN("ma_endpoints"));
BPF_TABLE_PINNED("lpm_trie", struct ma_policy_key, struct ma_policy_value, ma_policy,
		 MA_POLICY_MAX, MA_PIN("ma_policy"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct ma_ct_key, struct ma_ct_value, ma_ct_tcp,
		 MA_CT_TCP_MAX, MA_PIN("ma_ct_tcp"));
BPF_TABLE_PINNED("lru_hash", struct ma_ct_key, struct ma_ct_value, ma_ct,
		 MA_CT_MAX, MA_PIN("ma_ct"));
BPF_TABLE_PINNED("lru_hash", struct ma_frag_key, struct ma_frag_value, ma_frags,
		 MA_FRAGS_MAX, MA_PIN("ma_frags"));
BPF_TABLE_PINNED("percpu_array", __u32, struct ma_metrics_value, ma_metrics,
		 MA_METRICS_REASONS * 2, MA_PIN("ma_metrics"));
/* Events that did not fit in the ring buffer, per CPU: losses are counted, never silent. */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, ma_events_lost, 1, MA_PIN("ma_events_lost"));
/* New TCP connections that did not fit in ma_ct_tcp and went to the LRU ma_ct, per CPU. */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, ma_ct_tcp_overflow, 1, MA_PIN("ma_ct_tcp_overflow"));
/* Event budgets: one noisy pod cannot fill the ring buffer for all. */
BPF_TABLE_PINNED("lru_hash", struct ma_event_budget_key, struct ma_event_budget, ma_event_budget,
		 MA_ENDPOINTS_MAX * 16, MA_PIN("ma_event_budget"));
BPF_RINGBUF_OUTPUT(ma_events, MA_EVENTS_PAGES);

#endif /* MA_MAPS_H */
