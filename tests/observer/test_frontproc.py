"""The observer front process as a process: start-up errors, restart after a crash, exit with the agent.
(Every served-API test also runs against it: conftest.SERVING_MODES.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from meshagent.observer.client import ObserverClient
from meshagent.observer.metrics import FlowMetrics
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.server import ObserverServer, ServerConfig, ServerConfigError
from meshagent.observer.service import ObserverService
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.observer import helpers as h
from tests.waiting import wait_until


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purpose.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_socket_it_cannot_bind_fails_the_start_with_the_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    server = ObserverServer(
        ObserverService(h.make_pipeline()),
        ServerConfig(unix_socket=blocker / "observer.sock", front_process=True),
    )
    with pytest.raises(ServerConfigError, match="cannot listen on unix:"):
        server.start()


def test_a_killed_front_process_is_started_again(tmp_path: Path) -> None:
    pipeline = h.make_pipeline()
    pipeline.on_events(h.sample_events())
    with h.serve(pipeline, tmp_path / "observer.sock", front_process=True) as s:
        link = s.server.front
        assert link is not None and link.pid is not None
        metrics = FlowMetrics(node_name="node-a", version="test")
        link.on_restart = metrics.front_restarted
        first = link.pid
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: link.restarts == 1 and link.pid != first, timeout=15, interval=0.05), (
            "not restarted"
        )
        exposition = generate_latest(metrics.registry).decode()
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples
        }
        assert samples["meshagent_observer_front_restarts_total"] == 1
        with ObserverClient(f"unix://{s.socket}", timeout_s=5) as c:
            got = [r for r in c.get_flows(opb.GetFlowsRequest(number=3)) if r.HasField("flow")]
        assert len(got) == 3
        second = link.pid
        assert second is not None
    assert wait_until(lambda: not _alive(second), timeout=15, interval=0.05), (
        "the front process outlived its server"
    )


def test_the_front_process_exits_when_the_agent_dies(tmp_path: Path) -> None:
    sock = tmp_path / "observer.sock"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from pathlib import Path
        from tests.observer import helpers as h
        from meshagent.observer.server import ObserverServer, ServerConfig
        from meshagent.observer.service import ObserverService
        config = ServerConfig(unix_socket=Path({str(sock)!r}), front_process=True)
        server = ObserverServer(ObserverService(h.make_pipeline()), config)
        server.start()
        print(server.front.pid, flush=True)
        time.sleep(600)
        """
    )
    agent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None
        front = int(agent.stdout.readline())
        assert _alive(front)
        with ObserverClient(f"unix://{sock}", timeout_s=5) as c:
            assert c.server_status().max_flows == 4096
        agent.kill()  # no clean-up: as in an OOM kill
        agent.wait()
        assert wait_until(lambda: not _alive(front), timeout=15, interval=0.05), (
            "the front process outlived the agent"
        )
        with pytest.raises(grpc.RpcError), ObserverClient(f"unix://{sock}", timeout_s=2) as c:
            c.server_status()
    finally:
        agent.kill()
        agent.wait()


def test_a_control_message_too_large_is_resource_exhausted_not_lost() -> None:
    from meshagent.observer.grpcwire import RpcError, Status
    from meshagent.observer.ipc import Result
    from meshagent.observer.link import CONTROL_MAX, control_pair, send_control

    a, b = control_pair()
    with a, b:
        with pytest.raises(RpcError) as err:
            send_control(a, Result(1, Status.OK, "", b"x" * (CONTROL_MAX + 1)))
        assert err.value.status == Status.RESOURCE_EXHAUSTED
    # Where the kernel's buffer is the smaller limit (no CAP_NET_ADMIN), the same error, not a hang.
    small_a, small_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with small_a, small_b:
        small_a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        with pytest.raises(RpcError) as err:
            send_control(small_a, Result(1, Status.OK, "", b"x" * (400 << 10)))
        assert err.value.status == Status.RESOURCE_EXHAUSTED
        send_control(small_a, Result(2, Status.OK, "", b"fits"))
        assert small_b.recv(1 << 16)
