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

static __always_inline void ma_ct_account(struct ma_ct_value *entry, int state, __u32 bytes, __u8 tcp_flags)
{
	if (state == MA_CT_REPLY) {
		__sync_fetch_and_add(&entry->packets_rev, 1);
		__sync_fetch_and_add(&entry->bytes_rev, bytes);
		if (tcp_flags & MA_TCP_FIN)
			entry->flags |= MA_CT_F_FIN_REV;
	} else {
		__sync_fetch_and_add(&entry->packets_fwd, 1);
		__sync_fetch_and_add(&entry->bytes_fwd, bytes);
		if (tcp_flags & MA_TCP_FIN)
			entry->flags |= MA_CT_F_FIN_FWD;
	}
	entry->tcp_flags |= tcp_flags;
	entry->last_seen_ns = bpf_ktime_get_ns();
}

#endif /* MA_CONNTRACK_H */
