/* Connection tracking: policy is evaluated on a connection's first packet only; later packets of either
 * direction find the entry and pass, counted both ways.
 *
 * Tables: TCP connections begun by a SYN go to ma_ct_tcp, which never evicts (when it is full they go to
 * ma_ct as a fallback); all else goes to the LRU ma_ct. A spray of datagrams or of mid-stream segments
 * can evict only entries of its own kind, never an established TCP connection.
 *
 * TCP teardown is never forced from outside: an entry is never deleted by the packet path (the agent's
 * reaper removes closed entries after a short idle time). An RST closes the entry only when its sequence
 * number is within MA_CT_RST_WINDOW of the next one expected in its direction, like the endpoint's own
 * kernel, which ignores an RST outside its window; an RST outside is passed untouched and changes
 * nothing. A FIN counts only in the same window. FIN both ways, or an accepted RST, marks the entry
 * closed; a later SYN on the same tuple starts a new connection.
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

/* Finds the entry for the packet; fills key with the entry's key. TCP looks in ma_ct_tcp first, where
 * every connection begun by a SYN is. */
static __always_inline int ma_ct_lookup(__u32 ifindex, const struct ma_tuple *t, struct ma_ct_key *key,
					struct ma_ct_value **entry)
{
	if (t->proto == IPPROTO_TCP) {
		ma_ct_key_fill(key, ifindex, t, 0);
		*entry = ma_ct_tcp.lookup(key);
		if (*entry)
			return MA_CT_ESTABLISHED;
		ma_ct_key_fill(key, ifindex, t, 1);
		*entry = ma_ct_tcp.lookup(key);
		if (*entry)
			return MA_CT_REPLY;
	}
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

/* The connection an ICMP error quotes, for the endpoint on ifindex: the quoted packet is one the
 * endpoint sent (error entering it) or received (error leaving it), in either of the connection's
 * directions. */
static __always_inline struct ma_ct_value *ma_ct_lookup_quoted(__u32 ifindex, const struct ma_tuple *t)
{
	struct ma_tuple quoted = {
		.saddr = t->inner_saddr, .daddr = t->inner_daddr,
		.sport = t->inner_sport, .dport = t->inner_dport,
		.proto = t->inner_proto,
	};
	struct ma_ct_key key = {};
	struct ma_ct_value *entry = NULL;

	ma_ct_lookup(ifindex, &quoted, &key, &entry);
	return entry;
}

/* Stores a new connection's entry: TCP begun by a SYN in ma_ct_tcp, falling back to the LRU table when
 * that is full (counted: the agent reports the pressure); all else in ma_ct. Non-zero when neither
 * takes it. */
static __always_inline int ma_ct_create(struct ma_ct_key *key, struct ma_ct_value *entry, int tcp_syn)
{
	if (tcp_syn) {
		if (ma_ct_tcp.update(key, entry) == 0)
			return 0;
		__u32 zero = 0;
		__u64 *overflow = ma_ct_tcp_overflow.lookup(&zero);
		if (overflow)
			*overflow += 1;
	}
	return ma_ct.update(key, entry);
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
	} else {
		entry->packets_fwd += 1;
		entry->bytes_fwd += bytes;
	}
	if ((entry->tcp_flags | tcp_flags) != entry->tcp_flags)
		entry->tcp_flags |= tcp_flags;
	/* The coarse clock (same base, a tick behind at most) reads a cached value instead of the clock
	 * source on every packet; last_seen only needs a quarter of a second. */
	__u64 now = bpf_ktime_get_coarse_ns();
	if (now - entry->last_seen_ns > MA_CT_TOUCH_NS)
		entry->last_seen_ns = now;
}

/* Distance between two sequence numbers, modulo 2^32. */
static __always_inline __u32 __ma_seq_distance(__u32 a, __u32 b)
{
	__s32 d = (__s32)(a - b);
	return d < 0 ? (__u32)(-d) : (__u32)d;
}

/* Whether a TCP segment's sequence number is where the connection is in its direction: within the window
 * of the next one expected. When that is not known yet (an entry carried over from an older layout), an
 * RST must at least acknowledge exactly what the other side sent, as RFC 793 asks of an RST answering a
 * SYN; other segments are taken. */
static __always_inline int ma_ct_tcp_in_window(const struct ma_ct_value *entry, int reply,
					       const struct ma_tuple *t)
{
	__u8 known = reply ? MA_CT_F_SEQ_REV : MA_CT_F_SEQ_FWD;
	__u8 other_known = reply ? MA_CT_F_SEQ_FWD : MA_CT_F_SEQ_REV;
	__u32 next = reply ? entry->next_seq_rev : entry->next_seq_fwd;
	__u32 other_next = reply ? entry->next_seq_fwd : entry->next_seq_rev;

	if (entry->flags & known)
		return __ma_seq_distance(t->seq, next) <= MA_CT_RST_WINDOW;
	if (!(t->tcp_flags & MA_TCP_RST))
		return 1;
	return (t->tcp_flags & MA_TCP_ACK) && (entry->flags & other_known) && t->ack_seq == other_next;
}

/* Remembers the sequence number after this segment in its direction (the furthest seen). */
static __always_inline void ma_ct_tcp_track_seq(struct ma_ct_value *entry, int reply, const struct ma_tuple *t)
{
	__u8 known = reply ? MA_CT_F_SEQ_REV : MA_CT_F_SEQ_FWD;
	__u32 end = t->seq + t->seg_len;
	__u32 *next = reply ? &entry->next_seq_rev : &entry->next_seq_fwd;

	if (!(entry->flags & known)) {
		*next = end;
		entry->flags |= known;
	} else if ((__s32)(end - *next) > 0) {
		*next = end;
	}
}

#endif /* MA_CONNTRACK_H */
