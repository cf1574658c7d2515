/* Connection tracking: policy is evaluated on a connection's first packet only; later packets of either
 * direction find the entry and pass, counted both ways. TCP RST ends an entry at once; FIN seen in both
 * directions marks it closed (it stays for the last ACK, and a later SYN on the same tuple starts anew).
 */
#ifndef MA_CONNTRACK_H
#define MA_CONNTRACK_H

#include "maps.h"
#include "parse.h"

#define MA_CT_NEW 0
#define MA_CT_ESTABLISHED 1 /* packet in the connection's original direction */
#define MA_CT_REPLY 2       /* packet in the opposite direction */

static __always_inline void ma_ct_key_fill(struct ma_ct_key *key, __u32 ifindex, const struct ma_tuple *t,
					   int reverse)
{
	key->ifindex = ifindex;
	key->proto = t->proto;
	if (reverse) {
		key->saddr = t->daddr;
		key->daddr = t->saddr;
		key->sport = t->dport;
		key->dport = t->sport;
	} else {
		key->saddr = t->saddr;
		key->daddr = t->daddr;
		key->sport = t->sport;
		key->dport = t->dport;
	}
}

/* Finds the entry for the packet; fills key with the entry's key. */
static __always_inline int ma_ct_lookup(__u32 ifindex, const struct ma_tuple *t, struct ma_ct_key *key,
					struct ma_ct_value **entry)
{
	ma_ct_key_fill(key, ifindex, t, 0);
	*entry = ma_ct.lookup(key);
	if (*entry)
		return MA_CT_ESTABLISHED;
	ma_ct_key_fill(key, ifindex, t, 1);
	*entry = ma_ct.lookup(key);
	if (*entry)
		return MA_CT_REPLY;
	return MA_CT_NEW;
}

/* How stale last_seen may get before a packet refreshes it; expiry works in seconds, so this saves a
 * store (and the cache line it dirties for the other CPU) on almost every packet. */
#define MA_CT_TOUCH_NS 250000000ULL

static __always_inline void ma_ct_account(struct ma_ct_value *entry, int state, __u32 bytes, __u8 tcp_flags)
{
	/* Counters are statistics: plain adds, not atomic ones. Two CPUs adding to the same entry at the same
	 * instant may lose an increment; a locked add on every packet costs far more. */
	if (state == MA_CT_REPLY) {
		entry->packets_rev += 1;
		entry->bytes_rev += bytes;
		if (tcp_flags & MA_TCP_FIN)
			entry->flags |= MA_CT_F_FIN_REV;
	} else {
		entry->packets_fwd += 1;
		entry->bytes_fwd += bytes;
		if (tcp_flags & MA_TCP_FIN)
			entry->flags |= MA_CT_F_FIN_FWD;
	}
	if ((entry->tcp_flags | tcp_flags) != entry->tcp_flags)
		entry->tcp_flags |= tcp_flags;
	__u64 now = bpf_ktime_get_ns();
	if (now - entry->last_seen_ns > MA_CT_TOUCH_NS)
		entry->last_seen_ns = now;
}

#endif /* MA_CONNTRACK_H */
