"""The service map server against a real observer (gRPC over a unix socket): the event stream, an edge's
panel, the policy trace from manifests, and an unreachable flow server reported and retried."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from meshagent.cli.main import main
from meshagent.cli.manifests import load_manifests
from meshagent.demo import manifests as demo_manifests
from meshagent.model.events import DropReason, EventType
from meshagent.model.kernel_state import Direction, Verdict
from meshagent.relay.peers import PeerSpec
from meshagent.ui.app import ListenError, split_listen

from tests.observer import helpers as h
from tests.relay.helpers import relay_for, serve_node
from tests.ui.helpers import EventStream, running_map
from tests.waiting import wait_until


def test_snapshot_then_a_drop_arrives_as_a_delta(tmp_path: Path) -> None:
    pipeline = h.make_pipeline()
    pipeline.on_events(h.sample_events())
    with h.serve(pipeline, tmp_path / "observer.sock") as served, running_map(served.target) as ui:
        stream = EventStream(ui.url)
        try:
            kind, snapshot = stream.next()
            assert kind == "snapshot"
            # The snapshot may come before the feed has read the held flows: wait for them in deltas.
            edges = {e["id"] for e in snapshot["edges"]}
            while "shop/client>shop/server:80/TCP" not in edges:
                kind, message = stream.next()
                edges |= {e["id"] for e in message.get("edges", [])}
            sent = time.monotonic()
            pipeline.on_events(
                [
                    h.event(
                        type=EventType.DROP,
                        verdict=Verdict.DENIED,
                        drop=DropReason.POLICY_DEFAULT_DENY,
                        direction=Direction.INGRESS,
                        dport=6379,
                    )
                ]
            )
            while True:
                kind, message = stream.next()
                if kind != "delta":
                    continue
                new = [e for e in message["edges"] if e["id"] == "shop/client>shop/server:6379/TCP"]
                if new:
                    break
            assert time.monotonic() - sent < 2.0
            assert new[0]["counts"][1] == 1  # dropped
            assert message["status"]["state"] == "connected"
        finally:
            stream.close()
        panel = ui.get_json("api/edge?id=shop/client%3Edata/db:5432/TCP")
        assert {(u["role"], u["policy"]) for u in panel["policy_uses"]} == {
            ("denied", "AdminNetworkPolicy deny-db"),
            ("audited", "AdminNetworkPolicy deny-db"),
        }
        assert any("explicit deny rule" in line for line in panel["why"])
        assert {r["verdict"] for r in panel["recent"]} == {"dropped", "audit"}
        assert panel["trace"] is None  # no manifests given
        status = ui.get_json("api/status")
        assert status["edges"] >= 6 and status["flows_seen"] == len(h.sample_events()) + 1


def test_unreachable_server_is_reported_then_retried(tmp_path: Path) -> None:
    sock = tmp_path / "later.sock"
    with running_map(f"unix://{sock}") as ui:
        assert wait_until(lambda: ui.get_json("api/status")["state"] == "unreachable", timeout=10)
        status = ui.get_json("api/status")
        assert status["message"] and status["retry_in_s"] > 0
        pipeline = h.make_pipeline()
        pipeline.on_events(h.sample_events())
        with h.serve(pipeline, sock):
            assert wait_until(
                lambda: ui.get_json("api/status")["flows_seen"] == len(h.sample_events()), timeout=15
            )
            assert ui.get_json("api/status")["state"] == "connected"
        # The server went away: said so, and nothing counted twice when it is back.
        assert wait_until(lambda: ui.get_json("api/status")["state"] != "connected", timeout=10)
        with h.serve(pipeline, sock):
            assert wait_until(lambda: ui.get_json("api/status")["state"] == "connected", timeout=15)
            time.sleep(0.5)
            assert ui.get_json("api/status")["flows_seen"] == len(h.sample_events())


def test_a_node_the_relay_cannot_reach_is_reported_until_it_is_back(tmp_path: Path) -> None:
    """Through a relay the map is connected, but a node whose agent is down leaves its flows out: the
    status names that node (the page shows it), and forgets it once the relay reads the node again."""
    with (
        serve_node(tmp_path, "node-a"),
        relay_for(
            tmp_path,
            [
                PeerSpec(f"unix://{tmp_path / 'node-a.sock'}", "node-a"),
                PeerSpec(f"unix://{tmp_path / 'node-b.sock'}", "node-b"),  # nobody serves it yet
            ],
        ) as (_, relay_sock),
        running_map(f"unix://{relay_sock}") as ui,
    ):
        assert wait_until(lambda: ui.get_json("api/status")["unavailable_nodes"], timeout=10)
        status = ui.get_json("api/status")
        assert status["state"] == "connected"
        assert [n["node"] for n in status["unavailable_nodes"]] == ["node-b"]
        assert status["unavailable_nodes"][0]["message"]
        assert wait_until(lambda: ui.get_json("api/status")["flows_seen"] == len(h.sample_events()), 10)
        with serve_node(tmp_path, "node-b") as node_b:
            assert wait_until(lambda: not ui.get_json("api/status")["unavailable_nodes"], timeout=15)
            seen = ui.get_json("api/status")["flows_seen"]
            node_b.pipeline.on_events([h.event(dport=9003, ts_ns=time.monotonic_ns())])
            assert wait_until(lambda: ui.get_json("api/status")["flows_seen"] > seen, timeout=15)


def test_edge_panel_traces_the_policy_from_manifests(tmp_path: Path) -> None:
    directory = tmp_path / "manifests"
    demo_manifests.write(directory, "node-a")
    pods = {p.name: p for p in demo_manifests.PODS}
    stray, cart = pods["stray"], pods["cart"]
    pipeline = h.make_pipeline()
    pipeline.on_events(
        [
            h.event(
                type=EventType.DROP,
                verdict=Verdict.DENIED,
                drop=DropReason.POLICY_DEFAULT_DENY,
                direction=Direction.INGRESS,
                saddr=stray.ip,
                daddr=cart.ip,
                dport=8080,
                src_identity=0,
                dst_identity=0,
            )
        ]
    )
    with (
        h.serve(pipeline, tmp_path / "observer.sock") as served,
        running_map(served.target, manifests=lambda: load_manifests(directory)) as ui,
    ):
        assert wait_until(lambda: ui.get_json("api/status")["edges"] == 1, timeout=10)
        edge_id = "world>world:8080/TCP"  # the static enricher knows neither pod: both ends are the world
        panel = ui.get_json("api/edge?id=" + edge_id.replace(">", "%3E"))
        trace = panel["trace"]
        assert trace["verdict"] == "DENIED"
        assert trace["from"].startswith("default/stray") and trace["to"].startswith("shop/cart")
        (ingress,) = [d for d in trace["directions"] if d["direction"] == "ingress to"]
        assert "default-deny" in " ".join(ingress["isolated_by"])


def test_listen_address_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert split_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert split_listen("[::1]:8090") == ("::1", 8090)
    for bad in ("8090", "localhost:", "host:99999", ":80"):
        with pytest.raises(ListenError):
            split_listen(bad)
    assert main(["ui", "--listen", "nowhere"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_a_busy_listen_port_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", "--server", "unix:///nonexistent.sock", "--listen", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
