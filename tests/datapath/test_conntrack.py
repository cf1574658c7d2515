"""Connection tracking and its events with real TCP connections."""

from __future__ import annotations

import pytest
from meshagent.datapath.datapath import Datapath
from meshagent.datapath.maps.conntrack import Timeouts
from meshagent.model.events import EventType
from meshagent.model.kernel_state import Direction, Verdict
from meshagent.testing.topology import Topology

from tests.datapath.helpers import EventLog, endpoint, state

pytestmark = pytest.mark.kernel


def test_close_event_carries_counters_both_ways(datapath: Datapath, topo: Topology, events: EventLog) -> None:
    a = topo.add_pod("a", "10.244.2.10")
    b = topo.add_pod("b", "10.244.2.20")
    b.serve(tcp=(80,))
    datapath.apply(state([endpoint(a, 1), endpoint(b, 2)], [a, b]))

    size = 50_000
    result = a.probe("tcp", b.ip, 80, size=size)
    assert result["ok"], result
    closes = events.wait_for(lambda e: e.type == EventType.CONN_CLOSE and e.endpoint_id == 2)
    assert closes, events.events
    close = closes[0]
    # The close event names the connection as it began: client -> server, seen entering b.
    assert (close.saddr, close.daddr, close.sport, close.dport) == (a.ip, b.ip, result["sport"], 80)
    assert close.direction == Direction.INGRESS and close.verdict == Verdict.ALLOWED
    # Payload plus 40 bytes of headers per packet at least, each way; the echo returns every byte.
    assert close.bytes_fwd > size and close.bytes_rev > size
    assert close.packets_fwd >= 3 and close.packets_rev >= 3

    tracked = [c for c in datapath.connections() if c.ifindex == b.ifindex and c.sport == result["sport"]]
    assert len(tracked) == 1 and tracked[0].closed
    assert tracked[0].bytes_fwd == close.bytes_fwd or tracked[0].bytes_fwd > close.bytes_fwd


def test_rst_answering_a_syn_closes_the_entry(datapath: Datapath, topo: Topology, events: EventLog) -> None:
    a = topo.add_pod("a", "10.244.2.11")
    b = topo.add_pod("b", "10.244.2.21")
    datapath.apply(state([endpoint(a, 1), endpoint(b, 2)], [a, b]))
    # Nothing listens on b:9: the SYN is answered by RST (acknowledging the SYN), which closes the entry;
    # the packet path never deletes one: the reaper removes it after the closed timeout.
    result = a.probe("tcp", b.ip, 9)
    assert not result["ok"] and result.get("error") == "ConnectionRefusedError"
    assert events.wait_for(lambda e: e.type == EventType.CONN_CLOSE and e.dport == 9)
    tracked = [c for c in datapath.connections() if c.dport == 9]
    assert tracked and all(c.closed for c in tracked), tracked
    datapath.expire_conntrack(now_ns=max(c.last_seen_ns for c in tracked) + int(11e9))
    assert not [c for c in datapath.connections() if c.dport == 9]


def test_new_syn_on_closed_tuple_is_evaluated_again(
    datapath: Datapath, topo: Topology, events: EventLog
) -> None:
    a = topo.add_pod("a", "10.244.2.12")
    b = topo.add_pod("b", "10.244.2.22")
    datapath.apply(state([endpoint(a, 1), endpoint(b, 2)], [a, b]))
    # The server closes first, so it is the server that waits in TIME_WAIT and the client may reuse its
    # port at once: the same tuple, a new connection after a clean FIN/FIN close.
    server = b.popen("python3", "-c", _CLOSING_SERVER, stdout=-1, stderr=-1)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = a.run("python3", "-c", _REUSING_CLIENT % b.ip)
        assert client.stdout.split() == ["ok", "ok"], client.stderr
    finally:
        server.kill()
        server.wait()
    verdicts = events.wait_for(
        lambda e: e.type == EventType.POLICY_VERDICT and e.dport == 80 and e.endpoint_id == 2
    )
    assert len({e.sport for e in verdicts}) == 1 and len(verdicts) == 2, verdicts
    closes = events.wait_for(
        lambda e: e.type == EventType.CONN_CLOSE and e.dport == 80 and e.endpoint_id == 2
    )
    assert closes


_CLOSING_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(8); print("ready", flush=True)
for _ in range(2):
    c, _ = s.accept(); c.sendall(b"x"); c.close()
"""

_REUSING_CLIENT = """
import socket, time
port = None
for _ in range(2):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port or 0)); port = s.getsockname()[1]
    s.settimeout(3); s.connect(("%s", 80))
    print("ok" if s.recv(1) == b"x" and s.recv(1) == b"" else "bad", flush=True)
    s.close(); time.sleep(0.2)
"""


def test_expiry_reports_udp_and_removes_closed_tcp(datapath: Datapath, topo: Topology) -> None:
    a = topo.add_pod("a", "10.244.2.13")
    b = topo.add_pod("b", "10.244.2.23")
    b.serve(tcp=(80,), udp=(53,))
    datapath.apply(state([endpoint(a, 1), endpoint(b, 2)], [a, b]))
    udp = a.probe("udp", b.ip, 53, size=100)
    tcp = a.probe("tcp", b.ip, 80)
    assert udp["ok"] and tcp["ok"]
    quiet = Timeouts(tcp=3600, tcp_closed=0, udp=0, icmp=3600, other=3600)
    closes = datapath.expire_conntrack(timeouts=quiet)
    udp_closes = [e for e in closes if e.protocol == 17 and e.sport == udp["sport"]]
    # One per endpoint that saw it: leaving a (egress) and entering b (ingress).
    assert sorted((e.endpoint_id, e.direction) for e in udp_closes) == [
        (1, Direction.EGRESS),
        (2, Direction.INGRESS),
    ]
    for close in udp_closes:
        assert close.type == EventType.CONN_CLOSE and close.verdict == Verdict.ALLOWED
        assert (close.saddr, close.daddr, close.dport) == (a.ip, b.ip, 53)
        assert close.packets_fwd == 1 and close.packets_rev == 1 and close.bytes_fwd > 100
    assert not [e for e in closes if e.protocol == 6], "TCP closed by FIN was reported by the kernel already"
    remaining = datapath.connections()
    assert not [c for c in remaining if c.sport in (udp["sport"], tcp["sport"])]
