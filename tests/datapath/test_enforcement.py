"""L4 policy enforcement with real packets between pods in network namespaces."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from meshagent.datapath.datapath import Datapath
from meshagent.model.events import DropReason, EventType
from meshagent.model.kernel_state import (
    IDENTITY_ANY,
    Action,
    Direction,
    PolicyEntry,
    Protocol,
    Verdict,
)
from meshagent.testing.topology import Pod, Topology

from tests.datapath.helpers import EventLog, endpoint, identity_of, state

pytestmark = pytest.mark.kernel

DENIED_TIMEOUT = 0.5


def allow_in(
    endpoint_id: int,
    peer: int,
    protocol: Protocol,
    lo: int = 0,
    hi: int | None = None,
    rule_id: int = 10,
    action: Action = Action.ALLOW,
    audit: bool = False,
    direction: Direction = Direction.INGRESS,
) -> PolicyEntry:
    return PolicyEntry(
        endpoint_id=endpoint_id,
        direction=direction,
        peer_identity=peer,
        protocol=protocol,
        port_lo=lo,
        port_hi=lo if hi is None else hi,
        action=action,
        rule_id=rule_id,
        audit=audit,
    )


@pytest.fixture
def trio(topo: Topology, tmp_path: Path) -> tuple[Pod, Pod, Pod]:
    """Client pods a and c, server pod b with TCP 80, 81, 8080 and UDP 53 echo servers."""
    a = topo.add_pod("a", "10.244.1.10")
    b = topo.add_pod("b", "10.244.1.20")
    c = topo.add_pod("c", "10.244.1.30")
    b.serve(tcp=(80, 81, 8080), udp=(53,), log=tmp_path / "b.log")
    return a, b, c


def server_log(tmp_path: Path) -> str:
    path = tmp_path / "b.log"
    return path.read_text() if path.exists() else ""


def test_no_policy_allows_everything_and_reports_verdicts(
    datapath: Datapath, trio: tuple[Pod, Pod, Pod], events: EventLog
) -> None:
    a, b, c = trio
    datapath.apply(state([endpoint(a, 1), endpoint(b, 2), endpoint(c, 3)], trio))
    result = a.probe("tcp", b.ip, 80)
    assert result["ok"], result
    assert a.probe("udp", b.ip, 53)["ok"]
    assert a.ping(b.ip)
    found = events.wait_for(
        lambda e: e.type == EventType.POLICY_VERDICT and e.dport == 80 and e.direction == Direction.INGRESS
    )
    assert found, events.events
    event = found[0]
    assert (event.saddr, event.daddr, event.sport, event.protocol) == (a.ip, b.ip, result["sport"], 6)
    assert event.verdict == Verdict.ALLOWED and event.rule_id == 0
    assert event.src_identity == identity_of(a) and event.dst_identity == identity_of(b)
    assert event.endpoint_id == 2 and event.ifindex == b.ifindex


def test_ingress_allow_by_identity_and_port(
    datapath: Datapath, trio: tuple[Pod, Pod, Pod], events: EventLog, tmp_path: Path
) -> None:
    a, b, c = trio
    policy = [allow_in(2, identity_of(a), Protocol.TCP, 80, rule_id=42)]
    datapath.apply(
        state([endpoint(a, 1), endpoint(b, 2, enforce_ingress=True), endpoint(c, 3)], trio, policy)
    )

    allowed = a.probe("tcp", b.ip, 80)
    assert allowed["ok"], allowed
    wrong_port = a.probe("tcp", b.ip, 81, timeout=DENIED_TIMEOUT)
    assert not wrong_port["ok"]
    wrong_peer = c.probe("tcp", b.ip, 80, timeout=DENIED_TIMEOUT)
    assert not wrong_peer["ok"]

    # The denied SYNs never reached the server: it logged only the allowed connection.
    lines = server_log(tmp_path).splitlines()
    assert lines == [f"tcp {a.ip}:{allowed['sport']} 80"], lines

    verdict = events.wait_for(
        lambda e: e.type == EventType.POLICY_VERDICT and e.verdict == Verdict.ALLOWED and e.endpoint_id == 2
    )
    assert verdict and verdict[0].rule_id == 42
    drops = events.wait_for(lambda e: e.type == EventType.DROP and e.saddr == c.ip)
    assert drops and drops[0].drop_reason == DropReason.POLICY_DEFAULT_DENY
    assert drops[0].direction == Direction.INGRESS and drops[0].dport == 80


def test_port_range_and_protocol(datapath: Datapath, trio: tuple[Pod, Pod, Pod]) -> None:
    a, b, _c = trio
    policy = [
        allow_in(2, IDENTITY_ANY, Protocol.TCP, 79, 80),  # range covering 80, not 81
        allow_in(2, IDENTITY_ANY, Protocol.UDP, 50, 60),
        allow_in(2, IDENTITY_ANY, Protocol.TCP, 8000, 8100),
    ]
    datapath.apply(state([endpoint(a, 1), endpoint(b, 2, enforce_ingress=True)], trio, policy))
    assert a.probe("tcp", b.ip, 80)["ok"]
    assert a.probe("tcp", b.ip, 8080)["ok"]
    assert not a.probe("tcp", b.ip, 81, timeout=DENIED_TIMEOUT)["ok"]
    assert a.probe("udp", b.ip, 53)["ok"]
    assert not a.ping(b.ip), "ICMP is not in the policy"

    datapath.apply(
        state(
            [endpoint(a, 1), endpoint(b, 2, enforce_ingress=True)],
            trio,
            [*policy, allow_in(2, IDENTITY_ANY, Protocol.ICMP)],
        )
    )
    assert a.ping(b.ip)


def test_egress_policy_and_replies_through_conntrack(
    datapath: Datapath, trio: tuple[Pod, Pod, Pod], events: EventLog
) -> None:
    a, b, c = trio
    # a may only talk to b on TCP 80; a is also isolated for ingress with nothing allowed, so the replies
    # it receives pass only because conntrack knows the connection.
    policy = [allow_in(1, identity_of(b), Protocol.TCP, 80, direction=Direction.EGRESS, rule_id=5)]
    eps = [endpoint(a, 1, enforce_ingress=True, enforce_egress=True), endpoint(b, 2)]
    datapath.apply(state(eps, trio, policy))

    assert a.probe("tcp", b.ip, 80, size=100_000)["ok"], "replies must pass through conntrack"
    assert not a.probe("tcp", b.ip, 81, timeout=DENIED_TIMEOUT)["ok"]
    assert not a.probe("udp", b.ip, 53, timeout=DENIED_TIMEOUT)["ok"]
    assert not c.probe("tcp", a.ip, 80, timeout=DENIED_TIMEOUT)["ok"], "a accepts nothing new"
    drops = events.wait_for(
        lambda e: e.type == EventType.DROP and e.direction == Direction.EGRESS and e.dport == 81
    )
    assert drops and drops[0].endpoint_id == 1 and drops[0].drop_reason == DropReason.POLICY_DEFAULT_DENY


def test_deny_wins_over_allow(datapath: Datapath, trio: tuple[Pod, Pod, Pod], events: EventLog) -> None:
    a, b, c = trio
    policy = [
        allow_in(2, identity_of(a), Protocol.ANY, rule_id=1),  # everything from a ...
        allow_in(
            2, IDENTITY_ANY, Protocol.TCP, 80, action=Action.DENY, rule_id=2
        ),  # ... but TCP 80 from anyone
        allow_in(2, identity_of(c), Protocol.TCP, 81, rule_id=3),  # c may use 81 ...
        allow_in(2, identity_of(c), Protocol.TCP, action=Action.DENY, rule_id=4),  # ... a broader deny wins
    ]
    datapath.apply(
        state([endpoint(a, 1), endpoint(b, 2, enforce_ingress=True), endpoint(c, 3)], trio, policy)
    )
    assert not a.probe("tcp", b.ip, 80, timeout=DENIED_TIMEOUT)["ok"]
    assert a.probe("tcp", b.ip, 81)["ok"]
    assert not c.probe("tcp", b.ip, 81, timeout=DENIED_TIMEOUT)["ok"]
    drops = events.wait_for(lambda e: e.type == EventType.DROP and e.drop_reason == DropReason.POLICY_DENIED)
    assert {(e.saddr, e.dport, e.rule_id) for e in drops} >= {(a.ip, 80, 2)}
    assert events.wait_for(lambda e: e.type == EventType.DROP and e.saddr == c.ip and e.rule_id == 4)


def test_deny_applies_without_isolation(datapath: Datapath, trio: tuple[Pod, Pod, Pod]) -> None:
    a, b, c = trio
    policy = [allow_in(2, identity_of(c), Protocol.ANY, action=Action.DENY, rule_id=9)]
    datapath.apply(state([endpoint(a, 1), endpoint(b, 2), endpoint(c, 3)], trio, policy))
    assert a.probe("tcp", b.ip, 80)["ok"]
    assert not c.probe("tcp", b.ip, 80, timeout=DENIED_TIMEOUT)["ok"]


def test_audit_mode_passes_and_reports(
    datapath: Datapath, trio: tuple[Pod, Pod, Pod], events: EventLog
) -> None:
    a, b, c = trio
    policy = [allow_in(2, identity_of(c), Protocol.TCP, 81, action=Action.DENY, audit=True, rule_id=77)]
    eps = [endpoint(a, 1), endpoint(b, 2, enforce_ingress=True, audit_ingress=True), endpoint(c, 3)]
    datapath.apply(state(eps, trio, policy))

    assert a.probe("tcp", b.ip, 80)["ok"], "default deny in audit mode passes"
    assert c.probe("tcp", b.ip, 81)["ok"], "an audited deny rule passes"
    audited = events.wait_for(lambda e: e.verdict == Verdict.AUDITED and e.saddr == a.ip)
    assert audited and audited[0].drop_reason == DropReason.POLICY_DEFAULT_DENY
    audited_rule = events.wait_for(lambda e: e.verdict == Verdict.AUDITED and e.saddr == c.ip)
    assert audited_rule and audited_rule[0].rule_id == 77
    assert audited_rule[0].drop_reason == DropReason.POLICY_DENIED
    policy_drops = [
        e
        for e in events.events
        if e.type == EventType.DROP
        and e.drop_reason in (DropReason.POLICY_DENIED, DropReason.POLICY_DEFAULT_DENY)
    ]
    assert not policy_drops, "audit never drops"


def test_spoofed_source_is_dropped(datapath: Datapath, trio: tuple[Pod, Pod, Pod], events: EventLog) -> None:
    a, b, _c = trio
    datapath.apply(state([endpoint(a, 1), endpoint(b, 2)], trio))
    a.run("ip", "addr", "add", "10.244.1.99/32", "dev", "eth0", check=True)
    assert not a.probe("tcp", b.ip, 80, bind="10.244.1.99", timeout=DENIED_TIMEOUT)["ok"]
    assert a.probe("tcp", b.ip, 80)["ok"]
    drops = events.wait_for(lambda e: e.drop_reason == DropReason.SPOOFED_SOURCE)
    assert drops and str(drops[0].saddr) == "10.244.1.99" and drops[0].endpoint_id == 1
    counters = datapath.counters()
    assert counters[(DropReason.SPOOFED_SOURCE, Direction.EGRESS)].packets >= 1


def test_policy_update_applies_to_next_connection_without_reattach(
    datapath: Datapath, trio: tuple[Pod, Pod, Pod], tmp_path: Path
) -> None:
    a, b, _c = trio
    eps = [endpoint(a, 1), endpoint(b, 2, enforce_ingress=True)]
    allow = [allow_in(2, identity_of(a), Protocol.TCP, 80)]
    datapath.apply(state(eps, trio, allow))
    assert a.probe("tcp", b.ip, 80)["ok"]

    # An established connection keeps working when the policy is withdrawn; new ones are denied.
    long_lived = a.popen("python3", "-c", _SLOW_CLIENT % (b.ip, 80), stdout=-1, stderr=-1)
    try:
        assert long_lived.stdout is not None and long_lived.stdout.readline().strip() == "connected"
        result = datapath.apply(state(eps, trio, []))
        assert result.attached == 0 and result.detached == 0, "a policy change is only a map update"
        assert not a.probe("tcp", b.ip, 80, timeout=DENIED_TIMEOUT)["ok"]
        out, _ = long_lived.communicate(timeout=10)
        assert out.strip() == "echoed", out
    finally:
        long_lived.kill()

    datapath.apply(state(eps, trio, allow))
    assert a.probe("tcp", b.ip, 80)["ok"]


# Connects, says so, waits for the policy change, then exchanges data on the same connection.
_SLOW_CLIENT = """
import socket, sys, time
s = socket.create_connection(("%s", %d), timeout=5)
print("connected", flush=True)
time.sleep(1.5)
s.sendall(b"still here")
print("echoed" if s.recv(100) == b"still here" else "lost", flush=True)
"""


def _eventually(check: Callable[[], bool], *, attempts: int = 5) -> bool:
    for _ in range(attempts):
        if check():
            return True
        time.sleep(0.5)
    return False


def _host_link_local(topo: Topology, pod: Pod) -> str:
    """The link-local IPv6 address of the pod's host-side veth, read in the node namespace."""
    for _ in range(50):  # the address appears once the link is up and DAD is done
        out = subprocess.run(
            ["ip", "-n", topo.node, "-j", "-6", "addr", "show", "dev", pod.host_ifname],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for info in json.loads(out):
            for address in info.get("addr_info", []):
                if address.get("scope") == "link" and not address.get("tentative"):
                    return str(address["local"])
        time.sleep(0.1)
    raise AssertionError("the host-side veth has no link-local address")


def test_fragmented_udp_follows_its_first_fragment(datapath: Datapath, trio: tuple[Pod, Pod, Pod]) -> None:
    a, b, c = trio
    policy = [allow_in(2, identity_of(a), Protocol.UDP, 53)]
    datapath.apply(
        state([endpoint(a, 1), endpoint(b, 2, enforce_ingress=True), endpoint(c, 3)], trio, policy)
    )
    # 4000 bytes over a 1500-byte MTU: three fragments each way; the later ones carry no ports.
    assert a.probe("udp", b.ip, 53, size=4000)["ok"]
    assert not c.probe("udp", b.ip, 53, size=4000, timeout=DENIED_TIMEOUT)["ok"]
