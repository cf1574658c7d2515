/* Packet parsing: Ethernet, IPv4 (with options and fragments), TCP/UDP/SCTP/ICMP, bounds-checked.
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
};

#define MA_TCP_FIN 0x01
#define MA_TCP_SYN 0x02
#define MA_TCP_RST 0x04
#define MA_TCP_ACK 0x10

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
		break;
	}
	default:
		break;
	}
	return MA_PARSE_OK;
}

/* True for ICMPv6 neighbour discovery (router/neighbour solicitation and advertisement, redirect),
 * which must keep working even for a pod whose IPv6 is otherwise dropped. */
static __always_inline int ma_is_ipv6_nd(struct __sk_buff *skb, __u32 l3_off)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + l3_off;

	if ((void *)(ip6 + 1) > data_end)
		return 0;
	if (ip6->nexthdr != IPPROTO_ICMPV6)
		return 0;
	struct icmp6hdr *icmp6 = (void *)(ip6 + 1);
	if ((void *)(icmp6 + 1) > data_end)
		return 0;
	return icmp6->icmp6_type >= 133 && icmp6->icmp6_type <= 137;
}

#endif /* MA_PARSE_H */
