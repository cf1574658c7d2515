/* Node-to-node encryption (WireGuard) in the endpoint programs: which packets of a pod cross to or come
 * from another node encrypted, counted per remote node, and in strict mode plaintext ones dropped.
 *
 * A packet towards a pod came in encrypted when the node received it on the WireGuard device (its
 * ingress interface, which forwarding keeps). A packet from a pod leaves encrypted when the node's routing
 * table sends it out of the device (a FIB lookup, so a remote pod without a route through the device yet
 * counts as plaintext). Only packets to or from remote nodes' pod ranges (ma_wg_remote, and ma_wg_remote6
 * for IPv6 in wireguard6.h) are judged. */
#ifndef MA_WIREGUARD_H
#define MA_WIREGUARD_H

#include "common.h"
#include "types.h"

#define MA_WG_MODE_OFF 0
#define MA_WG_MODE_PERMISSIVE 1
#define MA_WG_MODE_STRICT 2

#define MA_WG_PLAINTEXT 1
#define MA_WG_ENCRYPTED 2

#define MA_DROP_UNENCRYPTED 20 /* strict mode: pod traffic to or from a remote node that is not encrypted */
#define MA_EVENT_F_ENCRYPTED 0x80 /* the packet crossed between nodes through the WireGuard device */

/* ma_wg_config[0], written by the agent (agent/encryption.py). */
struct ma_wg_config {
	__u32 mode;    /* MA_WG_MODE_* */
	__u32 ifindex; /* the WireGuard device in the node's namespace, 0: none */
};

/* ma_wg_remote: remote nodes' pod ranges. */
struct ma_wg_remote_key {
	__u32 prefixlen;
	__u32 addr; /* network order */
};

struct ma_wg_remote_value {
	__u32 node_id; /* crc32 of the node's name: stable across agent restarts */
	__u32 flags;   /* reserved */
};

/* ma_wg_stats: per remote node, direction and encrypted or not (counted with atomic adds). */
struct ma_wg_stats_key {
	__u32 node_id;
	__u8 direction; /* MA_DIR_* */
	__u8 encrypted;
	__u8 pad[2];
};

struct ma_wg_stats_value {
	__u64 packets;
	__u64 bytes;
	__u64 flows; /* new connections */
};

struct ma_wg_verdict {
	__u32 node_id;
	__u8 cls; /* 0: not between nodes; MA_WG_PLAINTEXT or MA_WG_ENCRYPTED */
};

#ifndef MA_WG_REMOTE_MAX
#define MA_WG_REMOTE_MAX 4096
#endif

BPF_TABLE_PINNED("array", __u32, struct ma_wg_config, ma_wg_config, 1, MA_PIN("ma_wg_config"));
BPF_TABLE_PINNED("lpm_trie", struct ma_wg_remote_key, struct ma_wg_remote_value, ma_wg_remote,
		 MA_WG_REMOTE_MAX, MA_PIN("ma_wg_remote"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct ma_wg_stats_key, struct ma_wg_stats_value, ma_wg_stats,
		 MA_WG_REMOTE_MAX * 4, MA_PIN("ma_wg_stats"));

static __always_inline int __ma_wg_leaves_by(struct __sk_buff *skb, const struct ma_tuple *t, __u32 ifindex)
{
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.l4_protocol = t->proto;
	fib.sport = t->sport;
	fib.dport = t->dport;
	fib.ipv4_src = t->saddr;
	fib.ipv4_dst = t->daddr;
	fib.ifindex = skb->ifindex;
	int rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	/* The egress interface is known once a route matched, whether or not a neighbour entry exists (the
	 * WireGuard device has none) or the packet needs fragmenting. */
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH && rc != BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return 0;
	return fib.ifindex == ifindex;
}

/* One packet between this node's pods and a remote node, in ma_wg_stats (both families). */
static __always_inline void __ma_wg_count(__u32 node_id, __u8 direction, int encrypted, __u32 bytes)
{
	struct ma_wg_stats_key skey = { .node_id = node_id, .direction = direction, .encrypted = encrypted };
	struct ma_wg_stats_value *stats = ma_wg_stats.lookup(&skey);
	if (stats) {
		__sync_fetch_and_add(&stats->packets, 1);
		__sync_fetch_and_add(&stats->bytes, bytes);
	} else {
		struct ma_wg_stats_value fresh = { .packets = 1, .bytes = bytes };
		ma_wg_stats.update(&skey, &fresh);
	}
}

/* Classifies a pod's IPv4 packet (IPv6: ma_wg_classify6 in wireguard6.h); returns 1 when strict mode must
 * drop it. */
static __always_inline int ma_wg_classify(struct __sk_buff *skb, __u8 direction, const struct ma_tuple *t,
					  __u32 bytes, struct ma_wg_verdict *v)
{
	__u32 zero = 0;
	struct ma_wg_config *cfg = ma_wg_config.lookup(&zero);
	if (!cfg || cfg->mode == MA_WG_MODE_OFF)
		return 0;
	struct ma_wg_remote_key key = {
		.prefixlen = 32,
		.addr = direction == MA_DIR_EGRESS ? t->daddr : t->saddr,
	};
	struct ma_wg_remote_value *remote = ma_wg_remote.lookup(&key);
	if (!remote)
		return 0;
	int encrypted;
	if (direction == MA_DIR_INGRESS)
		encrypted = cfg->ifindex && skb->ingress_ifindex == cfg->ifindex;
	else
		encrypted = cfg->ifindex && __ma_wg_leaves_by(skb, t, cfg->ifindex);
	v->node_id = remote->node_id;
	v->cls = encrypted ? MA_WG_ENCRYPTED : MA_WG_PLAINTEXT;
	__ma_wg_count(remote->node_id, direction, encrypted, bytes);
	return !encrypted && cfg->mode == MA_WG_MODE_STRICT;
}

/* A new connection between nodes, counted as a flow of its kind. */
static __always_inline void ma_wg_count_flow(const struct ma_wg_verdict *v, __u8 direction)
{
	if (!v->cls)
		return;
	struct ma_wg_stats_key skey = {
		.node_id = v->node_id, .direction = direction, .encrypted = v->cls == MA_WG_ENCRYPTED,
	};
	struct ma_wg_stats_value *stats = ma_wg_stats.lookup(&skey);
	if (stats)
		__sync_fetch_and_add(&stats->flows, 1);
}

#endif /* MA_WIREGUARD_H */
