/* Every map key and value: the ABI between the kernel programs and the agent.
 * Each struct is mirrored by a ctypes class in agent/meshagent/datapath/maps/ (one module per map) and a
 * privileged test compares sizes and offsets with what BCC compiled. Change both together.
 * Byte order: fields holding addresses are network order (suffix _net in Python); all else host order.
 */
#ifndef MA_TYPES_H
#define MA_TYPES_H

#include "common.h"

/* ma_ipcache: LPM trie, address prefix -> identity. */
struct ma_ipcache_key {
	__u32 prefixlen;
	__u32 addr; /* network order */
};

struct ma_ipcache_value {
	__u32 identity;
	__u32 flags; /* reserved */
};

/* ma_endpoints: host-side interface of a local pod -> what the datapath needs to know about it. */
struct ma_endpoint_key {
	__u32 ifindex;
};

#define MA_EP_ENFORCE_INGRESS 0x01
#define MA_EP_ENFORCE_EGRESS 0x02
#define MA_EP_AUDIT_INGRESS 0x04
#define MA_EP_AUDIT_EGRESS 0x08
/* Held fail-closed by the agent: a write this endpoint's rules need (one of its denies, or an identity)
 * failed, so what ma_policy says is not the whole truth; no new connection passes, whatever it allows. */
#define MA_EP_ISOLATED 0x10

struct ma_endpoint_value {
	__u32 endpoint_id;
	__u32 identity;
	__u32 addr; /* network order: the only source address the pod may use */
	__u8 flags; /* MA_EP_* */
	__u8 pad[3];
};

/* ma_policy: LPM trie keyed by (endpoint, peer identity, direction, protocol, port).
 * The trie matches bits in memory order after prefixlen: endpoint_id (32), peer_identity (32),
 * direction (8) are always matched whole; protocol (8) and dport (16) may be left out of the prefix to
 * act as wildcards. A port range becomes a few prefix-aligned blocks of dport, so dport is network order
 * (its most significant bits first). Peer identity 0 is "any peer": the datapath looks up both the
 * peer's identity and 0, and a deny from either lookup wins.
 */
#define MA_POLICY_PREFIX_FULL 96    /* all fields */
#define MA_POLICY_PREFIX_ANY_PROTO 72 /* endpoint, identity, direction */
#define MA_POLICY_PREFIX_ANY_PORT 80  /* ... and protocol */

struct ma_policy_key {
	__u32 prefixlen;
	__u32 endpoint_id;
	__u32 peer_identity;
	__u8 direction;
	__u8 protocol;
	__u16 dport; /* network order */
};

#define MA_ACTION_ALLOW 1
#define MA_ACTION_DENY 2
#define MA_POLICY_F_AUDIT 0x01 /* a deny that only reports: the connection passes as audited */

struct ma_policy_value {
	__u32 rule_id;
	__u8 action; /* MA_ACTION_* */
	__u8 flags;  /* MA_POLICY_F_* */
	__u16 pad;
};

/* ma_ct_tcp and ma_ct: connection tracking, one entry per (endpoint interface, connection), keyed by the
 * tuple of the connection's first packet. Keying by interface keeps two local pods' views of one
 * connection apart, so each pod's own policy is evaluated. TCP connections begun by a SYN live in
 * ma_ct_tcp, a plain hash that never evicts; everything else (UDP, ICMP, other protocols, and TCP first
 * seen mid-stream) lives in the LRU ma_ct, so that no spray of datagrams can push out an established TCP
 * connection. Both maps have the same key and value. */
struct ma_ct_key {
	__u32 ifindex;
	__u32 saddr; /* network order */
	__u32 daddr; /* network order */
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

#define MA_CT_F_FIN_FWD 0x01
#define MA_CT_F_FIN_REV 0x02
#define MA_CT_F_CLOSED 0x04 /* FIN both ways or an accepted RST: a new SYN on this tuple is a new connection */
#define MA_CT_F_SEQ_FWD 0x08  /* next_seq_fwd is known */
#define MA_CT_F_SEQ_REV 0x10  /* next_seq_rev is known */
#define MA_CT_F_MIDSTREAM 0x20 /* TCP first seen without a SYN (e.g. its entry was lost): judged then */

struct ma_ct_value {
	__u64 packets_fwd;
	__u64 bytes_fwd;
	__u64 packets_rev;
	__u64 bytes_rev;
	__u64 created_ns;
	__u64 last_seen_ns;
	__u32 rule_id;
	__u32 src_identity;
	__u32 dst_identity;
	__u8 direction;  /* MA_DIR_* of the first packet */
	__u8 verdict;    /* MA_VERDICT_* given to the connection */
	__u8 flags;      /* MA_CT_F_* */
	__u8 tcp_flags;  /* union of TCP flags seen */
	/* Appended (a migration copies older, shorter entries zero-filled: both unknown). The sequence
	 * number after the last segment seen each way, for the RST check. */
	__u32 next_seq_fwd;
	__u32 next_seq_rev;
};

/* ma_frags: ports of fragmented datagrams, learnt from the first fragment. */
struct ma_frag_key {
	__u32 saddr; /* network order */
	__u32 daddr; /* network order */
	__u16 ip_id;
	__u8 proto;
	__u8 pad;
};

struct ma_frag_value {
	__u16 sport;
	__u16 dport;
};

/* ma_metrics: per-CPU array indexed by reason * 2 + direction; reason 0 counts forwarded packets. */
#define MA_METRICS_REASONS 32
struct ma_metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* ma_events: ring buffer records. */
#define MA_EVENT_POLICY_VERDICT 1
#define MA_EVENT_DROP 2
#define MA_EVENT_CONN_CLOSE 3

#define MA_VERDICT_ALLOWED 1
#define MA_VERDICT_DENIED 2
#define MA_VERDICT_AUDITED 3

#define MA_DROP_NONE 0
#define MA_DROP_POLICY_DENIED 1
#define MA_DROP_POLICY_DEFAULT_DENY 2
#define MA_DROP_SPOOFED_SOURCE 3
#define MA_DROP_MALFORMED 4
#define MA_DROP_CT_FULL 5
#define MA_DROP_FRAG_NO_FIRST 6
#define MA_DROP_IPV6_UNSUPPORTED 7 /* IPv6 with no IPv6 program in ma_ipv6_progs to judge it: fail closed */
/* 8 is reserved (UNKNOWN_L4, never emitted). */
#define MA_DROP_ETHERTYPE 9   /* neither IPv4, ARP nor IPv6 (802.1Q, QinQ, ...) to or from a pod under policy */
#define MA_DROP_NO_ENDPOINT 10 /* our programs on an interface with no endpoint entry: fail closed */
#define MA_DROP_ISOLATED 11    /* a new connection of an endpoint held fail-closed (MA_EP_ISOLATED) */

#define MA_EVENT_F_REPLY 0x01
#define MA_EVENT_F_MIDSTREAM 0x02 /* TCP without SYN of a connection conntrack did not know */

/* ma_event_budget: token buckets for events (events.h), one per endpoint interface for what the endpoint
 * sends, and one per (interface, source identity) for what it receives: a flood towards a pod is charged
 * to its senders, not to the pod's other peers. */
struct ma_event_budget_key {
	__u32 ifindex;
	__u32 peer_identity; /* ingress: the source's identity; egress: 0 */
};

struct ma_event_budget {
	__u64 tokens;     /* in event-nanoseconds: one event costs 1e9 */
	__u64 last_ns;
	__u64 suppressed; /* events not sent because the bucket was empty */
};

struct ma_event {
	__u64 ts_ns;
	__u64 packets_fwd;
	__u64 bytes_fwd;
	__u64 packets_rev;
	__u64 bytes_rev;
	__u32 endpoint_id;
	__u32 ifindex;
	__u32 saddr; /* network order */
	__u32 daddr; /* network order */
	__u32 rule_id;
	__u32 src_identity;
	__u32 dst_identity;
	__u16 sport;
	__u16 dport;
	__u8 type;      /* MA_EVENT_* */
	__u8 verdict;   /* MA_VERDICT_*, 0 for none */
	__u8 reason;    /* MA_DROP_* */
	__u8 direction; /* MA_DIR_* */
	__u8 proto;
	__u8 tcp_flags; /* TCP: the flags; ICMP: the ICMP type */
	__u8 flags; /* MA_EVENT_F_* */
	__u8 icmp_code;
};

#endif /* MA_TYPES_H */
