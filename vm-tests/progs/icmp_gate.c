// tc ingress program for the kernel matrix's own smoke test (vm-tests/test_tc_datapath.py):
// counts IPv4 ICMP packets and drops them while vmt_gate[0] is non-zero. Only UAPI headers, because the
// guest kernels are compiled against Debian's headers of their own release.
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/pkt_cls.h>

#define VMT_SEEN 0
#define VMT_DROPPED 1

BPF_ARRAY(vmt_counts, u64, 2);
BPF_ARRAY(vmt_gate, u32, 1);

static __always_inline void vmt_count(int slot)
{
    u64 *value = vmt_counts.lookup(&slot);
    if (value)
        __sync_fetch_and_add(value, 1);
}

int vmt_ingress(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
        return TC_ACT_OK;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_ICMP)
        return TC_ACT_OK;
    vmt_count(VMT_SEEN);
    int zero = 0;
    u32 *gate = vmt_gate.lookup(&zero);
    if (gate && *gate) {
        vmt_count(VMT_DROPPED);
        return TC_ACT_SHOT;
    }
    return TC_ACT_OK;
}
