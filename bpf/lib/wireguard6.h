/* Node-to-node encryption for IPv6 pod traffic: what wireguard.h does for IPv4, with the remote nodes'
 * IPv6 pod ranges (ma_wg_remote6) and an AF_INET6 FIB lookup. The mode, the device and the counters are
 * the IPv4 ones: a remote node is counted once, whichever family its pods' packets have. */
#ifndef MA_WIREGUARD6_H
#define MA_WIREGUARD6_H

#include "wireguard.h"
#include "types6.h"
#include "parse6.h"

/* ma_wg_remote6: remote nodes' IPv6 pod ranges, values as in ma_wg_remote. */
struct ma_wg_remote6_key {
	__u32 prefixlen;
	struct ma_ipv6_addr addr; /* network order */
};

BPF_TABLE_PINNED("lpm_trie", struct ma_wg_remote6_key, struct ma_wg_remote_value, ma_wg_remote6,
		 MA_WG_REMOTE_MAX, MA_PIN("ma_wg_remote6"), BPF_F_NO_PREALLOC);

static __always_inline int __ma_wg_leaves_by6(struct __sk_buff *skb, const struct ma_tuple6 *t, __u32 ifindex)
{
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET6;
	fib.l4_protocol = t->l4.proto;
	fib.sport = t->l4.sport;
	fib.dport = t->l4.dport;
	__builtin_memcpy(fib.ipv6_src, &t->saddr, sizeof(fib.ipv6_src));
	__builtin_memcpy(fib.ipv6_dst, &t->daddr, sizeof(fib.ipv6_dst));
	fib.ifindex = skb->ifindex;
	int rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	/* As for IPv4: a matched route names the egress interface, neighbour entry or not. */
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH && rc != BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return 0;
	return fib.ifindex == ifindex;
}

/* ma_wg_classify for an IPv6 packet of a pod; returns 1 when strict mode must drop it. */
static __always_inline int ma_wg_classify6(struct __sk_buff *skb, __u8 direction, const struct ma_tuple6 *t,
					   __u32 bytes, struct ma_wg_verdict *v)
{
	__u32 zero = 0;
	struct ma_wg_config *cfg = ma_wg_config.lookup(&zero);
	if (!cfg || cfg->mode == MA_WG_MODE_OFF)
		return 0;
	struct ma_wg_remote6_key key = { .prefixlen = 128 };
	key.addr = direction == MA_DIR_EGRESS ? t->daddr : t->saddr;
	struct ma_wg_remote_value *remote = ma_wg_remote6.lookup(&key);
	if (!remote)
		return 0;
	int encrypted;
	if (direction == MA_DIR_INGRESS)
		encrypted = cfg->ifindex && skb->ingress_ifindex == cfg->ifindex;
	else
		encrypted = cfg->ifindex && __ma_wg_leaves_by6(skb, t, cfg->ifindex);
	v->node_id = remote->node_id;
	v->cls = encrypted ? MA_WG_ENCRYPTED : MA_WG_PLAINTEXT;
	__ma_wg_count(remote->node_id, direction, encrypted, bytes);
	return !encrypted && cfg->mode == MA_WG_MODE_STRICT;
}

#endif /* MA_WIREGUARD6_H */
