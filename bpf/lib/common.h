/* Shared includes, constants and small helpers for every meshagent BPF program. */
#ifndef MA_COMMON_H
#define MA_COMMON_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/icmpv6.h>
#include <uapi/linux/pkt_cls.h>

/* Where pinned maps live. The agent passes -DMA_PIN_DIR=... ; tests use a per-run directory. */
#ifndef MA_PIN_DIR
#define MA_PIN_DIR "/sys/fs/bpf/meshagent"
#endif
#define MA_PIN(name) MA_PIN_DIR "/" name

/* Map capacities; the agent may override each with a -D define. */
#ifndef MA_IPCACHE_MAX
#define MA_IPCACHE_MAX 65536
#endif
#ifndef MA_ENDPOINTS_MAX
#define MA_ENDPOINTS_MAX 1024
#endif
#ifndef MA_POLICY_MAX
#define MA_POLICY_MAX 262144
#endif
#ifndef MA_CT_MAX
#define MA_CT_MAX 262144
#endif
#ifndef MA_CT_TCP_MAX
#define MA_CT_TCP_MAX 262144
#endif
#ifndef MA_FRAGS_MAX
#define MA_FRAGS_MAX 8192
#endif
/* Events each endpoint may send per second, and how many at once (a token bucket, events.h); 0 is no
 * limit. */
#ifndef MA_EVENT_RATE
#define MA_EVENT_RATE 200000
#endif
#ifndef MA_EVENT_BURST
#define MA_EVENT_BURST 20000
#endif
/* How far, in sequence space, an RST may be from the next sequence number expected in its direction and
 * still end the connection (conntrack.h). */
#ifndef MA_CT_RST_WINDOW
#define MA_CT_RST_WINDOW 65535
#endif
#ifndef MA_EVENTS_PAGES
#define MA_EVENTS_PAGES 1024 /* 4 MiB of ring buffer */
#endif

/* Direction relative to the endpoint (pod); matches meshagent.model.kernel_state.Direction. */
#define MA_DIR_INGRESS 0 /* towards the pod: tc egress of its host-side veth */
#define MA_DIR_EGRESS 1  /* from the pod: tc ingress of its host-side veth */

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

#endif /* MA_COMMON_H */
