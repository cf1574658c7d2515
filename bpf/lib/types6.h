/* Map keys and values of the IPv6 datapath (ipv6.h). Separate maps from IPv4's, so that IPv4 keys stay
 * as small as they are and the IPv4 path hashes and compares exactly what it did before. Values are
 * shared with IPv4 where they do not hold an address (identities, conntrack entries, fragment ports).
 * Mirrored by ctypes classes in agent/meshagent/datapath/maps/ (ipcache6.py, endpoints6.py,
 * conntrack6.py, frags6.py); a privileged test compares sizes and offsets with what BCC compiled.
 * Addresses are 16 bytes in network order, as on the wire.
 */
#ifndef MA_TYPES6_H
#define MA_TYPES6_H

#include "types.h"

struct ma_ipv6_addr {
	__u32 words[4]; /* network order */
};

/* ma_ipcache6: LPM trie, IPv6 prefix -> identity (the same identities as ma_ipcache). */
struct ma_ipcache6_key {
	__u32 prefixlen;
	struct ma_ipv6_addr addr;
};

/* ma_endpoints6: host-side interface of a local pod -> the only IPv6 source address the pod may use.
 * A pod without an entry has no IPv6 address: it may send nothing but link-scope traffic. The rest of
 * what the datapath knows of the pod (identity, enforcement) is its ma_endpoints entry. */
struct ma_endpoint6_value {
	struct ma_ipv6_addr addr;
};

/* ma_ct6_tcp and ma_ct6: connection tracking for IPv6, as ma_ct_tcp and ma_ct (conntrack.h). */
struct ma_ct6_key {
	__u32 ifindex;
	struct ma_ipv6_addr saddr;
	struct ma_ipv6_addr daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* ma_frags6: ports of fragmented IPv6 datagrams, keyed by the fragment header's identification. */
struct ma_frag6_key {
	struct ma_ipv6_addr saddr;
	struct ma_ipv6_addr daddr;
	__u32 id;
	__u8 proto; /* the header after the fragment header */
	__u8 pad[3];
};

/* ma_events6: the records of IPv6 packets, in a ring buffer of their own (the IPv4 record keeps its
 * size): an IPv4 record whose address fields are 0, and the IPv6 addresses after it. */
struct ma_event6 {
	struct ma_event base;
	struct ma_ipv6_addr saddr;
	struct ma_ipv6_addr daddr;
};

#endif /* MA_TYPES6_H */
