"""`make demo`: a throw-away node with three pods, the datapath attached, and policy at work.

Everything happens in network namespaces this demo creates (no route off the machine) and is removed at
the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import sys
import time
import uuid
from ipaddress import IPv4Network
from pathlib import Path

from meshagent.datapath.datapath import Datapath
from meshagent.model.events import DatapathEvent, EventType
from meshagent.model.kernel_state import (
    Action,
    Direction,
    EndpointEntry,
    IPCacheEntry,
    KernelState,
    PolicyEntry,
    Protocol,
)
from meshagent.testing.topology import Pod, Topology

IDENTITIES = {"frontend": 1001, "backend": 1002, "intruder": 1003}
PORT = 8080


def _state(pods: dict[str, Pod], *, isolate_backend: bool, audit: bool = False) -> KernelState:
    endpoints = frozenset(
        EndpointEntry(
            pod.ifindex,
            index + 1,
            IDENTITIES[name],
            pod.ip,
            enforce_ingress=isolate_backend and name == "backend",
            audit_ingress=audit and name == "backend",
        )
        for index, (name, pod) in enumerate(pods.items())
    )
    ipcache = frozenset(IPCacheEntry(IPv4Network(f"{p.ip}/32"), IDENTITIES[n]) for n, p in pods.items())
    policy = frozenset(
        {
            PolicyEntry(
                endpoint_id=2,
                direction=Direction.INGRESS,
                peer_identity=IDENTITIES["frontend"],
                protocol=Protocol.TCP,
                port_lo=PORT,
                port_hi=PORT,
                action=Action.ALLOW,
                rule_id=1,
            )
        }
    )
    return KernelState(
        endpoints=endpoints, ipcache=ipcache, policy=policy if isolate_backend else frozenset()
    )


def _describe(event: DatapathEvent, names: dict[str, str]) -> str:
    src, dst = names.get(str(event.saddr), str(event.saddr)), names.get(str(event.daddr), str(event.daddr))
    what = {EventType.POLICY_VERDICT: "verdict", EventType.DROP: "drop", EventType.CONN_CLOSE: "close"}[
        event.type
    ]
    detail = event.verdict.name if event.verdict else event.drop_reason.name
    if event.type == EventType.DROP:
        detail = event.drop_reason.name
    if event.type == EventType.CONN_CLOSE:
        detail = f"{event.packets_fwd}+{event.packets_rev} packets, {event.bytes_fwd}+{event.bytes_rev} bytes"
    rule = f" rule={event.rule_id}" if event.rule_id else ""
    return (
        f"  {what:<8} {event.direction.name.lower():<7} {src}:{event.sport} -> {dst}:{event.dport} "
        f"{detail}{rule}"
    )


def _try(client: Pod, server: Pod, label: str) -> None:
    result = client.probe("tcp", server.ip, PORT, timeout=0.5)
    outcome = "connected" if result["ok"] else f"blocked ({result.get('error', 'no answer')})"
    print(f"  {label:<32} {outcome}")


def main() -> int:
    events: list[DatapathEvent] = []
    pin_dir = Path("/sys/fs/bpf") / f"meshagent-demo-{uuid.uuid4().hex[:6]}"
    with Topology() as topo:
        pods = {
            "frontend": topo.add_pod("frontend", "10.244.0.10"),
            "backend": topo.add_pod("backend", "10.244.0.20"),
            "intruder": topo.add_pod("intruder", "10.244.0.30"),
        }
        names = {str(p.ip): n for n, p in pods.items()}
        pods["backend"].serve(tcp=(PORT,))
        print(f"node namespace {topo.node}: pods " + ", ".join(f"{n} {p.ip}" for n, p in pods.items()))
        datapath = Datapath(pin_dir=pin_dir, netns=topo.node)
        started = time.monotonic()
        datapath.load()
        print(f"datapath compiled and loaded in {time.monotonic() - started:.1f} s")
        datapath.start_events(events.append)
        try:
            steps = [
                ("1. no policy selects backend: everything is allowed", dict(isolate_backend=False)),
                (
                    "2. backend accepts only frontend on TCP 8080 (a map update, no restart)",
                    dict(isolate_backend=True),
                ),
                (
                    "3. the same policy in audit mode: would-be drops pass and are reported",
                    dict(isolate_backend=True, audit=True),
                ),
            ]
            for title, options in steps:
                print(f"\n{title}")
                result = datapath.apply(_state(pods, **options))
                datapath.flush_conntrack()
                events.clear()
                _try(pods["frontend"], pods["backend"], "frontend -> backend:8080")
                _try(pods["intruder"], pods["backend"], "intruder -> backend:8080")
                time.sleep(0.1)
                print(f"  ({result.written} map entries written, {result.deleted} removed) events:")
                for event in events:
                    if event.direction == Direction.INGRESS or event.type == EventType.DROP:
                        print(_describe(event, names))
            drops = {
                f"{reason.name.lower()}/{direction.name.lower()}": c.packets
                for (reason, direction), c in datapath.counters().items()
                if c.packets and reason
            }
            print(f"\ndrop counters: {drops}; events lost: {datapath.lost_events()}")
        finally:
            datapath.apply(KernelState())
            datapath.uninstall()
    print("cleaned up: namespaces, tc filters and pinned maps removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
