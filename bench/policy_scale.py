"""Policy compiler at scale: 1,000 pods in 50 namespaces with 500 NetworkPolicies (+ admin policies).

Figures: full compile time, incremental time for one pod relabel and one policy edit (median of several,
the diff they produce), and the entries the kernel maps would hold. Two node views: one node of ten
(~100 local endpoints, the usual case) and every pod local (the worst case for one agent).
The compile figures are pure Python: the time to turn a change into a map diff (the datapath's write is
extra).

With root (and the `iptables` command), also the same rules as iptables rules: one NetworkPolicy whose
ingress allows N peers (N-1 ipBlock /32s and, last, the client pod), compiled by us into the BPF maps and,
side by side, written as N iptables rules in the node's FORWARD chain (first match wins, the client's rule
last, as for a peer late in a policy); new-connection rate (connect, 1-byte exchange, close) at N = 10,
1,000 and 10,000 through real network namespaces. Rounds alternate the set-ups so noise hits both.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from meshagent.datapath.datapath import Datapath
from meshagent.datapath.loader import Capacities
from meshagent.model.admin_policy import AdminAction, AdminNetworkPolicy, AdminPort, AdminRule, AdminSelector
from meshagent.model.cluster import ContainerPort, LocalEndpoint, Namespace, Pod
from meshagent.model.kernel_state import KernelState, Protocol
from meshagent.model.netpol import IPBlock, NetworkPolicy, PolicyPeer, PolicyPort, PolicyRule, PolicyType
from meshagent.model.selectors import LabelSelector, SelectorOperator, SelectorRequirement
from meshagent.policy.compiler import PolicyCompiler
from meshagent.policy.diff import KernelDiff
from meshagent.policy.rules import RuleKind
from meshagent.testing.benchtools import bench_line, median

NAMESPACES = 50
PODS_PER_NS = 20
POLICIES_PER_NS = 10
NODES = 10
APPS = [f"app{i}" for i in range(10)]


def sel(**labels: str) -> LabelSelector:
    return LabelSelector(frozenset(labels.items()))


def build(rng: random.Random) -> tuple[list[Namespace], list[Pod], list[NetworkPolicy | AdminNetworkPolicy]]:
    namespaces = [
        Namespace(f"ns{n}", frozenset({("team", f"t{n % 5}"), ("env", "prod" if n % 2 else "dev")}))
        for n in range(NAMESPACES)
    ]
    pods = []
    for n in range(NAMESPACES):
        for i in range(PODS_PER_NS):
            index = n * PODS_PER_NS + i
            app = APPS[i % len(APPS)]
            pods.append(
                Pod(
                    namespace=f"ns{n}",
                    name=f"pod{i}",
                    labels=frozenset(
                        {
                            ("app", app),
                            ("tier", "fe" if i % 3 else "be"),
                            ("pod-template-hash", f"{rng.getrandbits(32):08x}"),
                        }
                    ),
                    ip=IPv4Address(f"10.{n}.{i // 200}.{i % 200 + 1}"),
                    node=f"node{index % NODES}",
                    ports=(ContainerPort("http", 8080), ContainerPort("metrics", 9090)),
                )
            )
    policies: list[NetworkPolicy | AdminNetworkPolicy] = []
    for n in range(NAMESPACES):
        ns = f"ns{n}"
        policies.append(NetworkPolicy(ns, "default-deny", LabelSelector(), frozenset({PolicyType.INGRESS})))
        for k in range(POLICIES_PER_NS - 1):
            app = APPS[k % len(APPS)]
            kind = k % 4
            if kind == 0:  # from pods of the same namespace, numbered port
                rule = PolicyRule(
                    (PolicyPeer(pod_selector=sel(app=APPS[(k + 1) % 10])),), (PolicyPort(Protocol.TCP, 8080),)
                )
            elif kind == 1:  # from other teams' namespaces, named port
                rule = PolicyRule(
                    (
                        PolicyPeer(
                            namespace_selector=sel(team=f"t{(n + 1) % 5}"),
                            pod_selector=LabelSelector(
                                match_expressions=(
                                    SelectorRequirement("tier", SelectorOperator.IN, frozenset({"fe"})),
                                )
                            ),
                        ),
                    ),
                    (PolicyPort(Protocol.TCP, name="http"),),
                )
            elif kind == 2:  # from a CIDR with an except, a port range
                rule = PolicyRule(
                    (
                        PolicyPeer(
                            ip_block=IPBlock(
                                IPv4Network(f"192.168.{n}.0/24"), (IPv4Network(f"192.168.{n}.128/25"),)
                            )
                        ),
                    ),
                    (PolicyPort(Protocol.TCP, 9000, 9100),),
                )
            else:  # egress to the monitoring namespace
                rule = PolicyRule(
                    (PolicyPeer(namespace_selector=sel(team="t0")),), (PolicyPort(Protocol.UDP, 53),)
                )
                policies.append(
                    NetworkPolicy(ns, f"p{k}", sel(app=app), frozenset({PolicyType.EGRESS}), egress=(rule,))
                )
                continue
            policies.append(
                NetworkPolicy(ns, f"p{k}", sel(app=app), frozenset({PolicyType.INGRESS}), ingress=(rule,))
            )
    policies.append(
        AdminNetworkPolicy(
            "deny-dev-to-prod",
            10,
            AdminSelector(sel(env="prod")),
            ingress=(
                AdminRule(
                    "dev",
                    AdminAction.DENY,
                    (AdminSelector(sel(env="dev")),),
                    (AdminPort(Protocol.TCP, 22, 22),),
                ),
            ),
        )
    )
    policies.append(
        AdminNetworkPolicy(
            "allow-monitoring",
            5,
            AdminSelector(LabelSelector()),
            ingress=(
                AdminRule(
                    "scrape",
                    AdminAction.ALLOW,
                    (AdminSelector(sel(team="t0"), sel(app="app0")),),
                    (AdminPort(name="metrics"),),
                ),
            ),
        )
    )
    return namespaces, pods, policies


def measure(label: str, *, all_local: bool, repeats: int, seed: int) -> None:
    rng = random.Random(seed)
    namespaces, pods, policies = build(rng)
    local_pods = [p for p in pods if all_local or p.node == "node0"]
    compiler = PolicyCompiler()
    start = time.perf_counter()
    compiler.load(
        namespaces=namespaces,
        pods=pods,
        policies=policies,
        local=[(p.key, LocalEndpoint(i + 1, 100 + i)) for i, p in enumerate(local_pods)],
    )
    full_s = time.perf_counter() - start
    state = compiler.state()
    datapath, kernel_full_s = _kernel(state)
    kernel_ms: dict[str, list[float]] = {"relabel": [], "edit": [], "admin": []}

    def to_kernel(what: str, diff: KernelDiff) -> None:
        if datapath is not None:
            started = time.perf_counter()
            result = datapath.apply_diff(diff)
            kernel_ms[what].append((time.perf_counter() - started) * 1000)
            assert result.ok, result.errors

    relabel_ms, relabel_diff, edit_ms, edit_diff = [], [], [], []
    admin_ms: list[float] = []
    admin_diff: list[int] = []
    ingress_policies = {p.key: p for p in policies if isinstance(p, NetworkPolicy) and p.ingress}
    for r in range(repeats):
        pod = compiler.pods[rng.choice(local_pods).key]
        labels = dict(pod.labels)
        labels["app"] = APPS[(APPS.index(labels["app"]) + 1 + r) % len(APPS)]
        start = time.perf_counter()
        diff = compiler.upsert_pod(replace(pod, labels=frozenset(labels.items())))
        relabel_ms.append((time.perf_counter() - start) * 1000)
        relabel_diff.append(diff.size)
        to_kernel("relabel", diff)

        # Edit a policy that selects a local endpoint (others do not change this node's maps).
        selecting = [
            pk
            for p in local_pods
            for pk in compiler.policies_selecting(p.key)
            if pk[0] is RuleKind.NETWORK_POLICY and (pk[1], pk[2]) in ingress_policies
        ]
        current = ingress_policies[rng.choice(selecting)[1:]]
        port = PolicyPort(Protocol.TCP, 8000 + r)
        edited = replace(current, ingress=(replace(current.ingress[0], ports=(port,)),))
        start = time.perf_counter()
        diff = compiler.upsert_policy(edited)
        ingress_policies[edited.key] = edited
        edit_ms.append((time.perf_counter() - start) * 1000)
        edit_diff.append(diff.size)
        to_kernel("edit", diff)

        # An admin policy whose subject is every pod: a new port in its rule.
        anp = next(p for p in compiler.admin_policies if p.name == "allow-monitoring")
        rule = anp.ingress[0]
        edited_anp = replace(
            anp,
            ingress=(replace(rule, ports=(*rule.ports[:1], AdminPort(Protocol.TCP, 9000 + r, 9000 + r))),),
        )
        start = time.perf_counter()
        diff = compiler.upsert_policy(edited_anp)
        admin_ms.append((time.perf_counter() - start) * 1000)
        admin_diff.append(diff.size)
        to_kernel("admin", diff)

    figures = {
        "pods": len(pods),
        "namespaces": len(namespaces),
        "policies": len(policies),
        "local_endpoints": len(local_pods),
        "identities": len({compiler.identity_of(p.key) for p in pods}),
        "full_compile_s": full_s,
        "policy_entries": len(state.policy),
        "ipcache_entries": len(state.ipcache),
        "relabel_ms_median": median(relabel_ms),
        "relabel_ms_max": max(relabel_ms),
        "relabel_diff_median": median([float(d) for d in relabel_diff]),
        "policy_edit_ms_median": median(edit_ms),
        "policy_edit_ms_max": max(edit_ms),
        "policy_edit_diff_median": median([float(d) for d in edit_diff]),
        "admin_edit_ms_median": median(admin_ms),
        "admin_edit_ms_max": max(admin_ms),
        "admin_edit_diff_median": median([float(d) for d in admin_diff]),
    }
    if datapath is not None:
        figures |= {
            "kernel_full_apply_s": kernel_full_s,
            "kernel_relabel_ms_median": median(kernel_ms["relabel"]),
            "kernel_policy_edit_ms_median": median(kernel_ms["edit"]),
            "kernel_admin_edit_ms_median": median(kernel_ms["admin"]),
            "change_to_kernel_relabel_ms_median": median(
                [a + b for a, b in zip(relabel_ms, kernel_ms["relabel"], strict=True)]
            ),
            "change_to_kernel_policy_edit_ms_median": median(
                [a + b for a, b in zip(edit_ms, kernel_ms["edit"], strict=True)]
            ),
        }
        datapath.uninstall()
    print(bench_line(f"policy_scale[{label}]", figures), flush=True)


def _kernel(state: KernelState) -> tuple[Datapath | None, float]:
    """As root: the compiled state written into real BPF maps (no interfaces: map updates only), so the
    figures include the kernel side of each change (Datapath.apply_diff)."""
    if os.geteuid() != 0:
        return None, float("nan")
    capacities = Capacities(policy=max(262144, 2 * len(state.policy)), endpoints=2048)
    datapath = Datapath(
        pin_dir=Path("/sys/fs/bpf") / f"meshagent-bench-{uuid.uuid4().hex[:8]}",
        capacities=capacities,
        attach_endpoints=False,
    )
    datapath.load()
    started = time.perf_counter()
    result = datapath.apply(state)
    assert result.ok, result.errors[:3]
    return datapath, time.perf_counter() - started


ECHO_PORT = 7000


def _rules_policy(count: int) -> NetworkPolicy:
    peers = [
        PolicyPeer(ip_block=IPBlock(IPv4Network(f"10.99.{i // 250}.{i % 250 + 1}/32")))
        for i in range(count - 1)
    ]
    peers.append(PolicyPeer(pod_selector=sel(app="client")))
    return NetworkPolicy(
        "bench",
        "server-in",
        sel(app="server"),
        frozenset({PolicyType.INGRESS}),
        ingress=(PolicyRule(tuple(peers), (PolicyPort(Protocol.TCP, ECHO_PORT),)),),
    )


def _iptables_rules(policy: NetworkPolicy, client_ip: IPv4Address, server_ip: IPv4Address) -> str:
    """The policy as iptables rules: established first (as every implementation does), then one rule
    per peer in order, then drop for the isolated pod."""
    lines = [
        "*filter",
        ":FORWARD ACCEPT [0:0]",
        "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
    ]
    for peer in policy.ingress[0].peers or ():
        source = f"{peer.ip_block.cidr}" if peer.ip_block is not None else f"{client_ip}/32"
        lines.append(f"-A FORWARD -s {source} -d {server_ip}/32 -p tcp --dport {ECHO_PORT} -j ACCEPT")
    lines += [f"-A FORWARD -d {server_ip}/32 -j DROP", "COMMIT", ""]
    return "\n".join(lines)


def iptables_comparison(*, quick: bool) -> int:
    import shutil
    import subprocess
    import uuid
    from pathlib import Path

    from meshagent.datapath.datapath import Datapath
    from meshagent.model.kernel_state import KernelState
    from meshagent.testing.benchtools import build_tcpbench
    from meshagent.testing.topology import Topology

    if shutil.which("iptables-restore") is None:
        print("policy_scale: iptables comparison skipped: no iptables-restore (apt-get install iptables)")
        return 0
    seconds = 1.0 if quick else 3.0
    rounds = 1 if quick else 2
    tool = build_tcpbench()
    pin_dir = Path("/sys/fs/bpf") / f"meshagent-bench-{uuid.uuid4().hex[:8]}"
    with Topology() as topo:
        client = topo.add_pod("client", "10.244.9.10")
        server = topo.add_pod("server", "10.244.9.20")
        client.run("sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
        echo = server.popen(str(tool), "server", str(ECHO_PORT), stdout=subprocess.PIPE)
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        datapath = Datapath(pin_dir=pin_dir, netns=topo.node)
        datapath.load()

        def iptables_restore(text: str) -> None:
            subprocess.run(
                ["ip", "netns", "exec", topo.node, "iptables-restore"], input=text, text=True, check=True
            )

        def rate() -> float:
            result = client.run(
                str(tool),
                "crr",
                str(server.ip),
                str(ECHO_PORT),
                str(seconds),
                "4",
                timeout=seconds + 30,
                check=True,
            )
            return float(result.stdout.strip())

        try:
            for count in (10, 1000, 10000):
                policy = _rules_policy(count)
                compiler = PolicyCompiler()
                compiler.load(
                    namespaces=[Namespace("bench")],
                    pods=[
                        # Dual-stack pods: the agent must know both addresses (an undeclared IPv6
                        # source is spoofed); the measured traffic is IPv4, as iptables' rules are.
                        Pod("bench", "client", frozenset({("app", "client")}), client.ip, ipv6=client.ipv6),
                        Pod("bench", "server", frozenset({("app", "server")}), server.ip, ipv6=server.ipv6),
                    ],
                    policies=[policy],
                    local=[(("bench", "server"), LocalEndpoint(2, server.ifindex))],
                )
                state = compiler.state()
                rules_text = _iptables_rules(policy, client.ip, server.ip)
                ours: list[float] = []
                theirs: list[float] = []
                for round_index in range(rounds):
                    for setup in ("ours", "iptables") if round_index % 2 == 0 else ("iptables", "ours"):
                        if setup == "ours":
                            iptables_restore("*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n")
                            applied = datapath.apply(state)
                            assert applied.ok, applied.errors
                            datapath.flush_conntrack()
                            ours.append(rate())
                        else:
                            datapath.apply(KernelState())
                            iptables_restore(rules_text)
                            theirs.append(rate())
                print(
                    bench_line(
                        f"policy_scale[iptables_{count}_rules]",
                        {
                            "rules": count,
                            "our_policy_entries": len(state.policy),
                            "our_ipcache_entries": len(state.ipcache),
                            "iptables_rules": rules_text.count("-A FORWARD"),
                            "ours_conn_per_s": median(ours),
                            "iptables_conn_per_s": median(theirs),
                        },
                        ratio=median(ours) / median(theirs) if median(theirs) else None,
                    ),
                    flush=True,
                )
        finally:
            subprocess.run(
                ["ip", "netns", "exec", topo.node, "iptables", "-F", "FORWARD"], capture_output=True
            )
            datapath.apply(KernelState())
            datapath.uninstall()
            echo.kill()
            echo.wait()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, one node view only")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-iptables", action="store_true", help="skip the packet comparison")
    args = parser.parse_args()
    repeats = 5 if args.quick else 20
    measure("one_node_of_10", all_local=False, repeats=repeats, seed=args.seed)
    if not args.quick:
        measure("all_local", all_local=True, repeats=repeats, seed=args.seed)
    if args.no_iptables:
        return 0
    if os.geteuid() != 0:
        print("policy_scale: iptables comparison skipped: needs root (network namespaces, BPF)")
        return 0
    return iptables_comparison(quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
