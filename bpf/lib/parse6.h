/* IPv6 parsing: the fixed header, a bounded walk of extension headers, TCP/UDP/SCTP/ICMPv6.
 *
 * Extension headers (hop-by-hop, routing, destination options, authentication, fragment) are walked up
 * to MA_IPV6_EXT_MAX of them; a chain longer than that is malformed (dropped for a pod under policy), so
 * that no chain can hide the transport header from the policy.
 *
 * Fragments: the fragment header's offset and identification play the roles of IPv4's fields. The first
 * fragment (offset 0) carries the transport header and is judged like any packet; later ones take their
 * ports from ma_frags6, as for IPv4 (parse.h).
 *
 * ICMPv6 errors (destination unreachable, packet too big, time exceeded, parameter problem) quote the
 * packet that caused them: its addresses and ports are parsed when the quoted header is followed
 * directly by the transport header, so that the error passes as related to that connection. A quote
 * with extension headers is judged as a packet of its own.
 *
 * A packet whose transport header (TCP or UDP) follows the fixed header directly is read in place, the
 * cheapest way; anything else past the fixed header is read with bpf_skb_load_bytes at offsets the walk
 * computes, which keeps the verifier's view simple whatever the chain looks like.
 */
#ifndef MA_PARSE6_H
#define MA_PARSE6_H

#include "parse.h"
#include "types6.h"

#ifndef MA_IPV6_EXT_MAX
#define MA_IPV6_EXT_MAX 8
#endif

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif
#define MA_IPV6_HOPOPTS 0
#define MA_IPV6_ROUTING 43
#define MA_IPV6_FRAGMENT 44
#define MA_IPV6_AUTH 51
#define MA_IPV6_NONXT 59
#define MA_IPV6_DSTOPTS 60

#define MA_ICMP6_DEST_UNREACH 1
#define MA_ICMP6_PKT_TOOBIG 2
#define MA_ICMP6_TIME_EXCEED 3
#define MA_ICMP6_PARAMPROB 4
#define MA_ICMP6_ECHO_REQUEST 128
#define MA_ICMP6_ECHO_REPLY 129

/* An IPv6 packet's tuple: the transport part (ports, TCP state, ICMP type) in `l4`, as for IPv4, whose
 * own address fields stay 0; the addresses here. */
struct ma_tuple6 {
	struct ma_tuple l4;
	struct ma_ipv6_addr saddr;
	struct ma_ipv6_addr daddr;
	struct ma_ipv6_addr inner_saddr; /* the quoted packet's, for an ICMPv6 error */
	struct ma_ipv6_addr inner_daddr;
	__u32 frag_id;  /* host order */
	__u8 hop_limit;
	__u8 pad[3];
};

struct __ma_ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset in 8-byte units << 3, M flag in bit 0 */
	__be32 identification;
};

static __always_inline int ma_ipv6_addr_eq(const struct ma_ipv6_addr *a, const struct ma_ipv6_addr *b)
{
	return a->words[0] == b->words[0] && a->words[1] == b->words[1] && a->words[2] == b->words[2] &&
	       a->words[3] == b->words[3];
}

/* fe80::/10 (link-local) or :: (unspecified, duplicate address detection). */
static __always_inline int ma_ipv6_link_local_source(const struct ma_ipv6_addr *a)
{
	if ((a->words[0] & bpf_htonl(0xffc00000)) == bpf_htonl(0xfe800000))
		return 1;
	return (a->words[0] | a->words[1] | a->words[2] | a->words[3]) == 0;
}

/* fe80::/10 or a multicast address of link-local scope (ff02::/16). */
static __always_inline int ma_ipv6_link_scope_dest(const struct ma_ipv6_addr *a)
{
	if ((a->words[0] & bpf_htonl(0xffc00000)) == bpf_htonl(0xfe800000))
		return 1;
	return (a->words[0] & bpf_htonl(0xff0f0000)) == bpf_htonl(0xff020000);
}

/* Multicast listener discovery (RFC 2710, 3810): query, report, done, version 2 report. */
static __always_inline int ma_is_icmp6_mld(__u8 type)
{
	return type == 130 || type == 131 || type == 132 || type == 143;
}

/* Parses the transport header an ICMPv6 error quotes, at `off` (right after the 8-byte ICMPv6 header). */
static __always_inline void __ma_parse_icmp6_quote(struct __sk_buff *skb, __u32 off, struct ma_tuple6 *t)
{
	__u8 fixed[8]; /* version and flow label, payload length, next header, hop limit */
	__u16 ports[2];

	if (bpf_skb_load_bytes(skb, off, fixed, sizeof(fixed)) < 0 || (fixed[0] >> 4) != 6)
		return;
	if (bpf_skb_load_bytes(skb, off + 40, ports, sizeof(ports)) < 0)
		return;
	__u8 nexthdr = fixed[6];
	switch (nexthdr) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		t->l4.inner_sport = bpf_ntohs(ports[0]);
		t->l4.inner_dport = bpf_ntohs(ports[1]);
		break;
	case IPPROTO_ICMPV6: {
		/* A quoted echo: type, code, checksum, then the identifier (the connection's port). */
		__u8 type = ((__u8 *)ports)[0];
		__u16 id = 0;
		if (bpf_skb_load_bytes(skb, off + 40 + 4, &id, sizeof(id)) < 0)
			return;
		if (type == MA_ICMP6_ECHO_REQUEST)
			t->l4.inner_sport = bpf_ntohs(id);
		else if (type == MA_ICMP6_ECHO_REPLY)
			t->l4.inner_dport = bpf_ntohs(id);
		else
			return;
		break;
	}
	default:
		return;
	}
	/* Source and destination follow each other, in the header as in the tuple. */
	if (bpf_skb_load_bytes(skb, off + 8, &t->inner_saddr, 32) < 0)
		return;
	t->l4.inner_proto = nexthdr;
	t->l4.icmp_error = 1;
}

/* Parses the transport header at `off` (protocol t->l4.proto). */
static __always_inline int __ma_parse6_l4(struct __sk_buff *skb, __u32 off, __u32 end, struct ma_tuple6 *t)
{
	switch (t->l4.proto) {
	case IPPROTO_TCP: {
		struct tcphdr tcp;
		if (bpf_skb_load_bytes(skb, off, &tcp, sizeof(tcp)) < 0)
			return MA_PARSE_MALFORMED;
		t->l4.sport = bpf_ntohs(tcp.source);
		t->l4.dport = bpf_ntohs(tcp.dest);
		t->l4.tcp_flags = ((__u8 *)&tcp)[13];
		t->l4.seq = bpf_ntohl(tcp.seq);
		t->l4.ack_seq = bpf_ntohl(tcp.ack_seq);
		__u32 headers = off + tcp.doff * 4;
		t->l4.seg_len = end > headers ? end - headers : 0;
		if (t->l4.tcp_flags & MA_TCP_SYN)
			t->l4.seg_len += 1;
		if (t->l4.tcp_flags & MA_TCP_FIN)
			t->l4.seg_len += 1;
		break;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__u16 ports[2];
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return MA_PARSE_MALFORMED;
		t->l4.sport = bpf_ntohs(ports[0]);
		t->l4.dport = bpf_ntohs(ports[1]);
		break;
	}
	case IPPROTO_ICMPV6: {
		struct icmp6hdr icmp6;
		if (bpf_skb_load_bytes(skb, off, &icmp6, sizeof(icmp6)) < 0)
			return MA_PARSE_MALFORMED;
		__u16 id = bpf_ntohs(icmp6.icmp6_dataun.u_echo.identifier);
		t->l4.icmp_type = icmp6.icmp6_type;
		t->l4.icmp_code = icmp6.icmp6_code;
		/* Echo is a connection keyed by its identifier, as for ICMPv4 (parse.h). */
		if (icmp6.icmp6_type == MA_ICMP6_ECHO_REQUEST)
			t->l4.sport = id;
		else if (icmp6.icmp6_type == MA_ICMP6_ECHO_REPLY)
			t->l4.dport = id;
		else if (icmp6.icmp6_type >= MA_ICMP6_DEST_UNREACH && icmp6.icmp6_type <= MA_ICMP6_PARAMPROB)
			__ma_parse_icmp6_quote(skb, off + sizeof(icmp6), t);
		break;
	}
	default:
		break;
	}
	return MA_PARSE_OK;
}

/* The common case read in place: the fixed header followed directly by TCP or UDP, both within the
 * packet's linear data. Returns 0 when the packet is anything else, for the general walk to parse. */
static __always_inline int __ma_parse_ipv6_direct(struct __sk_buff *skb, __u32 l3_off, struct ma_tuple6 *t)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + l3_off;

	if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
		return 0;
	__u32 end = l3_off + sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	if (ip6->nexthdr == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)(ip6 + 1);
		if ((void *)(tcp + 1) > data_end)
			return 0;
		t->l4.sport = bpf_ntohs(tcp->source);
		t->l4.dport = bpf_ntohs(tcp->dest);
		t->l4.tcp_flags = ((__u8 *)tcp)[13];
		t->l4.seq = bpf_ntohl(tcp->seq);
		t->l4.ack_seq = bpf_ntohl(tcp->ack_seq);
		__u32 headers = l3_off + sizeof(*ip6) + tcp->doff * 4;
		t->l4.seg_len = end > headers ? end - headers : 0;
		if (t->l4.tcp_flags & MA_TCP_SYN)
			t->l4.seg_len += 1;
		if (t->l4.tcp_flags & MA_TCP_FIN)
			t->l4.seg_len += 1;
	} else if (ip6->nexthdr == IPPROTO_UDP) {
		__u16 *ports = (void *)(ip6 + 1);
		if ((void *)(ports + 2) > data_end)
			return 0;
		t->l4.sport = bpf_ntohs(ports[0]);
		t->l4.dport = bpf_ntohs(ports[1]);
	} else {
		return 0;
	}
	__builtin_memcpy(&t->saddr, &ip6->saddr, sizeof(t->saddr));
	__builtin_memcpy(&t->daddr, &ip6->daddr, sizeof(t->daddr));
	t->hop_limit = ip6->hop_limit;
	t->l4.proto = ip6->nexthdr;
	return 1;
}

/* Parses an IPv6 packet starting at data + l3_off into t. */
static __always_inline int ma_parse_ipv6(struct __sk_buff *skb, __u32 l3_off, struct ma_tuple6 *t)
{
	__u8 fixed[8]; /* version and flow label, payload length, next header, hop limit */

	if (__ma_parse_ipv6_direct(skb, l3_off, t))
		return MA_PARSE_OK;

	if (bpf_skb_load_bytes(skb, l3_off, fixed, sizeof(fixed)) < 0 || (fixed[0] >> 4) != 6)
		return MA_PARSE_MALFORMED;
	/* Source and destination follow each other, in the header as in the tuple. */
	if (bpf_skb_load_bytes(skb, l3_off + 8, &t->saddr, 32) < 0)
		return MA_PARSE_MALFORMED;
	t->hop_limit = fixed[7];

	__u32 off = l3_off + 40;
	__u32 end = off + (((__u32)fixed[4] << 8) | fixed[5]);
	__u8 next = fixed[6];

#pragma unroll
	for (int i = 0; i < MA_IPV6_EXT_MAX; i++) {
		switch (next) {
		case MA_IPV6_HOPOPTS:
		case MA_IPV6_ROUTING:
		case MA_IPV6_DSTOPTS:
		case MA_IPV6_AUTH: {
			__u8 hdr[2];
			if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
				return MA_PARSE_MALFORMED;
			/* Lengths in 8-byte units not counting the first 8; AH's in 4-byte units less 2. */
			off += next == MA_IPV6_AUTH ? ((__u32)hdr[1] + 2) * 4 : ((__u32)hdr[1] + 1) * 8;
			next = hdr[0];
			break;
		}
		case MA_IPV6_FRAGMENT: {
			struct __ma_ipv6_frag_hdr frag;
			if (bpf_skb_load_bytes(skb, off, &frag, sizeof(frag)) < 0)
				return MA_PARSE_MALFORMED;
			__u16 frag_off = bpf_ntohs(frag.frag_off);
			t->l4.is_fragment = 1;
			t->l4.more_frags = frag_off & 1;
			t->frag_id = bpf_ntohl(frag.identification);
			off += sizeof(frag);
			next = frag.nexthdr;
			if (frag_off & 0xfff8) {
				t->l4.proto = next;
				return MA_PARSE_FRAG_NO_L4;
			}
			continue;
		}
		default:
			t->l4.proto = next;
			return __ma_parse6_l4(skb, off, end, t);
		}
	}
	/* Still an extension header after MA_IPV6_EXT_MAX of them. */
	return MA_PARSE_MALFORMED;
}

#endif /* MA_PARSE6_H */
