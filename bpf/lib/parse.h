/* Packet parsing: Ethernet, IPv4 (with options and fragments), TCP/UDP/SCTP/ICMP, bounds-checked.
 *
 * TCP: sequence and acknowledgement numbers and the segment's length are kept, so that conntrack can
 * tell an RST the endpoint's kernel would accept from one it ignores (conntrack.h).
 *
 * ICMP errors (destination unreachable, time exceeded, parameter problem) quote the header of the packet
 * that caused them: that inner header and its ports are parsed too, so that conntrack can pass the error
 * as related to the connection it quotes (path-MTU discovery needs "fragmentation needed" to arrive).
 *
 * Fragments: the first fragment carries the L4 header and is judged like any packet; its ports are
 * remembered in ma_frags keyed by (saddr, daddr, IP id, protocol) so that later fragments of the same
 * datagram are judged by the same connection. A non-first fragment whose first fragment was not seen
 * (reordered, or never sent) cannot be attributed and is dropped for a pod under policy in that direction
 * (reason FRAG_NO_FIRST); for a pod not under policy it passes.
 */
#ifndef MA_PARSE_H
#define MA_PARSE_H

#include "common.h"

#define MA_PARSE_OK 0
#define MA_PARSE_MALFORMED -1
#define MA_PARSE_FRAG_NO_L4 1 /* non-first fragment: ports must come from ma_frags */

/* A connection tuple in the packet's own direction. Addresses in network order, ports in host order. */
struct ma_tuple {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags;   /* TCP flags byte (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 ...) */
	__u8 is_fragment; /* part of a fragmented datagram (first or later) */
	__u8 more_frags;
	__u16 ip_id;      /* host order */
	__u16 pad;
	__u32 seq;        /* TCP: host order */
	__u32 ack_seq;    /* TCP: host order */
	__u32 seg_len;    /* TCP: sequence space the segment takes (payload, plus one for SYN and FIN) */
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 icmp_error;  /* an ICMP error whose quoted header was parsed into inner_* */
	__u8 inner_proto;
	__u32 inner_saddr; /* network order: the quoted packet's own source */
	__u32 inner_daddr;
	__u16 inner_sport;
	__u16 inner_dport;
};

#define MA_TCP_FIN 0x01
#define MA_TCP_SYN 0x02
#define MA_TCP_RST 0x04
#define MA_TCP_ACK 0x10

/* ICMPv4 error types whose quoted header names a connection. */
#define MA_ICMP_DEST_UNREACH 3
#define MA_ICMP_TIME_EXCEEDED 11
#define MA_ICMP_PARAMETERPROB 12

static __always_inline int __ma_is_icmp_error(__u8 type)
{
	return type == MA_ICMP_DEST_UNREACH || type == MA_ICMP_TIME_EXCEEDED || type == MA_ICMP_PARAMETERPROB;
}

/* ICMP echo is a connection keyed by its identifier: requests put it in sport, replies in dport, so that
 * a reply's reversed tuple finds the request's conntrack entry. Other ICMP types carry no ports. */
static __always_inline void __ma_icmp_ports(struct icmphdr *icmp, struct ma_tuple *t)
{
	__u16 id = bpf_ntohs(icmp->un.echo.id);

	if (icmp->type == ICMP_ECHO) {
		t->sport = id;
		t->dport = 0;
	} else if (icmp->type == ICMP_ECHOREPLY) {
		t->sport = 0;
		t->dport = id;
	}
}

/* Parses the header an ICMP error quotes (at `inner`, right after the 8-byte ICMP header): an IPv4
 * header and the first 8 bytes of its payload, which hold the ports. Anything short or odd leaves
 * icmp_error at 0, and the error is judged as a packet of its own. */
static __always_inline void __ma_parse_icmp_quote(void *inner, void *data_end, struct ma_tuple *t)
{
	struct iphdr *ip = inner;

	if ((void *)(ip + 1) > data_end)
		return;
	if (ip->version != 4 || ip->ihl < 5 || (bpf_ntohs(ip->frag_off) & 0x1fff))
		return;
	void *l4 = inner + ip->ihl * 4;
	__u16 *ports = l4;
	if ((void *)(ports + 4) > data_end)
		return;
	t->inner_saddr = ip->saddr;
	t->inner_daddr = ip->daddr;
	t->inner_proto = ip->protocol;
	switch (ip->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		t->inner_sport = bpf_ntohs(ports[0]);
		t->inner_dport = bpf_ntohs(ports[1]);
		break;
	case IPPROTO_ICMP: {
		/* A quoted echo request or reply: its identifier is the connection's port (as below). */
		struct icmphdr *icmp = l4;
		struct ma_tuple quoted = {};
		__ma_icmp_ports(icmp, &quoted);
		t->inner_sport = quoted.sport;
		t->inner_dport = quoted.dport;
		break;
	}
	default:
		break;
	}
	t->icmp_error = 1;
}

/* Parses an IPv4 packet starting at data + l3_off into t. */
static __always_inline int ma_parse_ipv4(struct __sk_buff *skb, __u32 l3_off, struct ma_tuple *t)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + l3_off;

	if ((void *)(ip + 1) > data_end)
		return MA_PARSE_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return MA_PARSE_MALFORMED;

	t->saddr = ip->saddr;
	t->daddr = ip->daddr;
	t->proto = ip->protocol;
	t->ip_id = bpf_ntohs(ip->id);

	__u16 frag = bpf_ntohs(ip->frag_off);
	t->more_frags = (frag & 0x2000) ? 1 : 0;
	t->is_fragment = (t->more_frags || (frag & 0x1fff)) ? 1 : 0;
	if (frag & 0x1fff)
		return MA_PARSE_FRAG_NO_L4;

	/* ihl counts 32-bit words and includes IP options. */
	void *l4 = (void *)ip + ip->ihl * 4;

	switch (ip->protocol) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > data_end)
			return MA_PARSE_MALFORMED;
		t->sport = bpf_ntohs(tcp->source);
		t->dport = bpf_ntohs(tcp->dest);
		t->tcp_flags = ((__u8 *)tcp)[13];
		t->seq = bpf_ntohl(tcp->seq);
		t->ack_seq = bpf_ntohl(tcp->ack_seq);
		__u32 headers = ip->ihl * 4 + tcp->doff * 4;
		__u32 total = bpf_ntohs(ip->tot_len);
		t->seg_len = total > headers ? total - headers : 0;
		if (t->tcp_flags & MA_TCP_SYN)
			t->seg_len += 1;
		if (t->tcp_flags & MA_TCP_FIN)
			t->seg_len += 1;
		break;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		/* UDP and SCTP both start with 16-bit source and destination ports. */
		__u16 *ports = l4;
		if ((void *)(ports + 2) > data_end)
			return MA_PARSE_MALFORMED;
		t->sport = bpf_ntohs(ports[0]);
		t->dport = bpf_ntohs(ports[1]);
		break;
	}
	case IPPROTO_ICMP: {
		struct icmphdr *icmp = l4;
		if ((void *)(icmp + 1) > data_end)
			return MA_PARSE_MALFORMED;
		__ma_icmp_ports(icmp, t);
		t->icmp_type = icmp->type;
		t->icmp_code = icmp->code;
		if (__ma_is_icmp_error(icmp->type))
			__ma_parse_icmp_quote((void *)(icmp + 1), data_end, t);
		break;
	}
	default:
		break;
	}
	return MA_PARSE_OK;
}

/* True for ICMPv6 neighbour discovery (router/neighbour solicitation and advertisement, redirect),
 * which must keep working even for a pod whose IPv6 is otherwise dropped. Only with hop limit 255: a
 * receiver discards ND with any other (RFC 4861), and only an off-link sender would need another. */
static __always_inline int ma_is_ipv6_nd(struct __sk_buff *skb, __u32 l3_off)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + l3_off;

	if ((void *)(ip6 + 1) > data_end)
		return 0;
	if (ip6->nexthdr != IPPROTO_ICMPV6 || ip6->hop_limit != 255)
		return 0;
	struct icmp6hdr *icmp6 = (void *)(ip6 + 1);
	if ((void *)(icmp6 + 1) > data_end)
		return 0;
	return icmp6->icmp6_type >= 133 && icmp6->icmp6_type <= 137;
}

#endif /* MA_PARSE_H */
