"""The relay's pieces without servers: the sort buffer, reading a response's time off the wire, peer
addresses, and the command's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from meshagent.cli.main import cli
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.relay.merge import SortBuffer
from meshagent.relay.peers import PeerSpec, PeerSpecError, parse_peer
from meshagent.relay.wire import WireError, is_flow, response_time_ns

from tests.cliparse import parse

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "relay"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_sort_buffer_orders_by_time_and_releases_when_full_or_drained() -> None:
    clock = FakeClock()
    buffer = SortBuffer(capacity=3, drain_s=1.0, clock=clock)
    for t in (30, 10, 20):
        buffer.push(t, str(t).encode())
    assert buffer.pop_ready() == []  # neither full nor waited long enough
    buffer.push(5, b"5")
    assert buffer.pop_ready() == [b"5"]  # over capacity: the oldest by time leaves
    assert buffer.wait_s() == 1.0
    clock.now += 1.0
    buffer.push(25, b"25")
    # The head waited its drain time: it and whatever is as old in arrival leave, in time order.
    assert buffer.pop_ready() == [b"10", b"20"]
    assert buffer.drain() == [b"25", b"30"]
    assert len(buffer) == 0 and buffer.wait_s() is None
    with pytest.raises(ValueError, match="at least one"):
        SortBuffer(capacity=0)


def test_response_time_is_read_off_the_wire() -> None:
    resp = opb.GetFlowsResponse(node_name="n")
    resp.flow.time.FromNanoseconds(1_700_000_000_123_456_789)
    resp.flow.l4.TCP.destination_port = 80
    resp.time.FromNanoseconds(1_700_000_000_999_000_000)
    raw = resp.SerializeToString()
    assert response_time_ns(raw) == 1_700_000_000_999_000_000
    assert is_flow(raw)
    resp.ClearField("time")  # then the flow's own time
    assert response_time_ns(resp.SerializeToString()) == 1_700_000_000_123_456_789
    lost = opb.GetFlowsResponse(lost_events=pb.LostEvent(num_events_lost=3))
    assert response_time_ns(lost.SerializeToString()) == 0
    assert not is_flow(lost.SerializeToString())
    with pytest.raises(WireError):
        response_time_ns(raw[:-3])


def test_peer_addresses() -> None:
    assert parse_peer("node-1=/run/a.sock") == PeerSpec("unix:///run/a.sock", "node-1")
    assert parse_peer("unix:///run/a.sock") == PeerSpec("unix:///run/a.sock", "")
    assert parse_peer("10.0.0.5:4245") == PeerSpec("10.0.0.5:4245", "")
    for bad, why in (("=1.2.3.4:4245", "empty node name"), ("n=", "no address"), ("n=host", "host:port")):
        with pytest.raises(PeerSpecError, match=why):
            parse_peer(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "at least one --peer"),
        (["--peer", "a=/x.sock", "--listen", "127.0.0.1:0"], "without TLS needs --insecure"),
        (["--peer", "a=/x.sock"], "nothing to listen on"),
        (["--peer", "a=nohost"], "host:port"),
        (["--peer", "/x.sock", "--peer", "/x.sock", "--listen-socket", "/tmp/r.sock"], "given twice"),
    ],
)
def test_relay_command_refuses_bad_settings(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["relay", *args], env={"MESHAGENT_RELAY_PEERS": ""})
    assert result.exit_code != 0
    assert message in result.output, result.output


def test_the_relay_deployment_runs_a_command_that_parses(tmp_path: Path) -> None:
    """deploy/relay: its command line parses with the real CLI (its certificate paths made to exist), it
    serves where the Service points, and its Role grants only the list of pods that discovery makes."""
    docs = {
        doc["kind"]: doc
        for name in ("deployment.yaml", "service.yaml", "role.yaml")
        for doc in yaml.safe_load_all((DEPLOY / name).read_text())
    }
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    words = [*container["command"], *container["args"]]
    assert words[:2] == ["meshagent", "relay"]
    argv = []
    for word in words[1:]:
        word = word.replace("$(POD_NAMESPACE)", "meshagent")
        if "=/etc/meshagent/" in word:
            flag, path = word.split("=", 1)
            assert any(path.startswith(m + "/") for m in mounted), f"{path} is not mounted"
            local = tmp_path / path.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text("")
            word = f"{flag}={local}"
        argv.append(word)
    ctx = parse(argv)
    assert ctx.params["discover_namespace"] == "meshagent"
    assert ctx.params["listen"].endswith(":4245")
    port = container["ports"][0]
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == port["name"]
    assert int(ctx.params["listen"].rsplit(":", 1)[1]) == port["containerPort"]
    assert docs["Role"]["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
