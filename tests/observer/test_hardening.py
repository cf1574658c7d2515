"""The agent's files and its front process under attack: the control link's format, privileges, file modes,
the socket path, and a supervisor that keeps restarting."""

from __future__ import annotations

import ctypes
import grp
import json
import os
import socket
import stat
import time
from pathlib import Path

import pytest
from meshagent.observer import ipc
from meshagent.observer.client import ObserverClient
from meshagent.observer.export import ExportConfig, FlowExporter
from meshagent.observer.grpcwire import Status
from meshagent.observer.metrics import FlowMetrics
from meshagent.observer.privileges import capabilities
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.server import ObserverServer, ServerConfig, ServerConfigError
from meshagent.observer.service import ObserverService
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.observer import helpers as h

SYS_PIDFD_GETFD = 438  # x86_64 and most others


def _wait(cond: object, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


# -- the control link's format --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        ipc.Unary(7, None, "/observer.Observer/ServerStatus", "unix:/x", b"\x00\x01"),
        ipc.Unary(2**63, 12.5, "/p", "10.0.0.1:5", b""),
        ipc.StreamCall(3.25, "/observer.Observer/GetFlows", "peer"),
        ipc.Result(9, Status.RESOURCE_EXHAUSTED, "too big: é", b"resp"),
        ipc.Stop(1.5),
        ipc.Ready(4245),
        ipc.Ready(None),
        ipc.StartError("cannot listen"),
    ],
)
def test_control_messages_round_trip(message: ipc.Message) -> None:
    fds = 1 if isinstance(message, ipc.StreamCall) else 0
    assert ipc.decode(ipc.encode(message), fds) == message


@pytest.mark.parametrize(
    ("data", "fds", "why"),
    [
        (b"", 0, "empty"),
        (b"\x63", 0, "unknown message kind 99"),
        (ipc.encode(ipc.Stop(1.0)) + b"x", 0, "1 bytes after"),
        (ipc.encode(ipc.Stop(1.0))[:-1], 0, "truncated"),
        (b"\x04" + b"\x00\x00\x00\x00\x00\x00\xf8\x7f", 0, "a time of nan"),  # STOP with NaN grace
        (
            ipc.encode(ipc.Result(1, Status.OK, "", b""))[:9] + b"\x63" + b"\x00\x00\x00\x00\x00\x00",
            0,
            "status 99",
        ),
        (b"\x06\x02\x00\xff\xfe", 0, "not UTF-8"),
        (b"\x03" + b"\x01" * 8 + b"\x00" + b"\x00\x00" + b"\xff\xff\xff\x7f", 0, "truncated"),  # huge length
        (ipc.encode(ipc.StreamCall(None, "/p", "x")), 0, "0 descriptors"),
        (ipc.encode(ipc.Stop(0.0)), 1, "1 descriptors"),
        (b"\x05\x00\x00\x01\x00", 0, "TCP port 65536"),
        (b"\x80\x04\x95", 0, "unknown message kind 128"),  # the start of a pickle
    ],
)
def test_malformed_control_messages_are_rejected(data: bytes, fds: int, why: str) -> None:
    with pytest.raises(ipc.ControlProtocolError, match=why):
        ipc.decode(data, fds)


def _steal_fd(pid: int, fd: int) -> int:
    """A copy of another process's descriptor (pidfd_getfd; root may do it to its children)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        got = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if got < 0:
            err = ctypes.get_errno()
            pytest.skip(f"pidfd_getfd: {os.strerror(err)}")
        return int(got)
    finally:
        os.close(pidfd)


@pytest.mark.skipif(os.geteuid() != 0, reason="taking the front process's descriptor needs root")
def test_a_malformed_message_from_the_front_process_drops_the_link_not_the_agent(tmp_path: Path) -> None:
    pipeline = h.make_pipeline()
    pipeline.on_events(h.sample_events())
    with h.serve(pipeline, tmp_path / "observer.sock", front_process=True) as s:
        link = s.server.front
        assert link is not None and link.pid is not None
        link.restart_delay_s = 0.1
        metrics = FlowMetrics(node_name="node-a", version="test")
        metrics.watch_front(link.front_state)
        first = link.pid
        # The control socket's number in the front process is its first argument.
        argv = Path(f"/proc/{first}/cmdline").read_bytes().split(b"\0")
        control_fd = int(argv[argv.index(b"meshagent.observer.frontproc") + 1])
        stolen = socket.socket(fileno=_steal_fd(first, control_fd))
        try:
            stolen.send(b"\x80\x04\x95garbage: a pickle the agent must never load")
        finally:
            stolen.close()
        assert _wait(lambda: link.restarts == 1 and link.pid != first and link.state == "up")
        assert link.broken_links == 1
        assert "unknown message kind" in link.last_error
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
            for sample in family.samples
        }
        assert samples["meshagent_observer_front_broken_links_total"] == 1
        assert samples["meshagent_observer_front_up"] == 1
        with ObserverClient(s.target, timeout_s=10) as c:
            got = [r for r in c.get_flows(opb.GetFlowsRequest(number=3)) if r.HasField("flow")]
        assert len(got) == 3  # the agent's ring survived: same flows, new front process


@pytest.mark.skipif(os.geteuid() != 0, reason="the port blocker and restarts run as root like the agent")
def test_the_supervisor_retries_with_backoff_until_it_can_start_again(tmp_path: Path) -> None:
    service = ObserverService(h.make_pipeline())
    server = ObserverServer(
        service,
        ServerConfig(
            unix_socket=tmp_path / "o.sock",
            tcp_address="127.0.0.1:0",
            allow_insecure_tcp=True,
            front_process=True,
        ),
    )
    server.start()
    link = server.front
    assert link is not None and server.tcp_port
    try:
        link.restart_delay_s = 0.2
        link.restart_backoff_max_s = 0.8
        blocker = socket.socket()
        pid = link.pid
        assert pid is not None
        os.kill(pid, 9)
        # Take the port while the front process is down: its restarts fail until it is free again.
        deadline = time.monotonic() + 10
        while True:
            try:
                blocker.bind(("127.0.0.1", server.tcp_port))
                break
            except OSError:
                assert time.monotonic() < deadline, "the port was never free"
                time.sleep(0.01)
        blocker.listen()
        try:
            assert _wait(lambda: link.failed_starts >= 4), "the supervisor gave up"
            assert link.state == "restarting"
            assert "cannot listen" in link.last_error
        finally:
            blocker.close()
        assert _wait(lambda: link.state == "up"), "not started again once the port was free"
        assert link.restarts == 1
        with ObserverClient(f"127.0.0.1:{server.tcp_port}", timeout_s=10) as c:
            assert c.server_status().max_flows == 4096
    finally:
        server.stop(grace=None)


# -- privileges -----------------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges is tested from root, as the agent runs")
def test_the_front_process_keeps_no_privilege_after_binding(tmp_path: Path) -> None:
    assert capabilities()["CapEff"] != 0  # the agent (this process) has them
    with h.serve(h.make_pipeline(), tmp_path / "observer.sock", front_process=True) as s:
        assert s.server.front is not None and s.server.front.pid is not None
        pid = s.server.front.pid
        caps = capabilities(pid)
        assert caps["CapEff"] == caps["CapPrm"] == caps["CapInh"] == caps["CapAmb"] == 0
        assert caps["CapBnd"] == 0
        status = _status(pid)
        assert status["Uid"].split() == ["65534"] * 4
        assert status["Gid"].split() == ["65534"] * 4
        assert status["Groups"] == ""
        assert status["NoNewPrivs"] == "1"
        assert status["Umask"] == "0077"
        # And it still serves.
        with ObserverClient(s.target, timeout_s=10) as c:
            assert c.server_status().max_flows == 4096


# -- files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("front", [False, True], ids=["in-process", "front-process"])
def test_a_regular_file_at_the_socket_path_is_an_error_and_left_untouched(
    tmp_path: Path, front: bool
) -> None:
    path = tmp_path / "observer.sock"
    path.write_text("someone's data\n")
    path.chmod(0o640)
    server = ObserverServer(
        ObserverService(h.make_pipeline()), ServerConfig(unix_socket=path, front_process=front)
    )
    with pytest.raises(ServerConfigError, match="exists and is not a socket"):
        server.start()
    assert path.read_text() == "someone's data\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_symlink_at_the_socket_path_is_not_followed_or_removed(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep")
    path = tmp_path / "observer.sock"
    path.symlink_to(target)
    server = ObserverServer(ObserverService(h.make_pipeline()), ServerConfig(unix_socket=path))
    with pytest.raises(ServerConfigError, match="not a socket"):
        server.start()
    assert path.is_symlink() and target.read_text() == "keep"


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "observer.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    with h.serve(h.make_pipeline(), path) as s, ObserverClient(s.target, timeout_s=5) as c:
        assert c.server_status().max_flows == 4096


def _other_group() -> grp.struct_group:
    for name in ("nogroup", "daemon", "adm"):
        try:
            return grp.getgrnam(name)
        except KeyError:
            continue
    pytest.skip("no spare group on this machine")


@pytest.mark.parametrize("front", [False, True], ids=["in-process", "front-process"])
def test_the_socket_is_owner_only_or_its_group_s(tmp_path: Path, front: bool) -> None:
    with h.serve(h.make_pipeline(), tmp_path / "a.sock", front_process=front) as s:
        assert stat.S_IMODE(s.socket.stat().st_mode) == 0o600
    group = _other_group()
    with h.serve(
        h.make_pipeline(), tmp_path / "b.sock", front_process=front, socket_group=group.gr_name
    ) as s:
        st = s.socket.stat()
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == group.gr_gid
        with ObserverClient(s.target, timeout_s=5) as c:
            assert c.server_status().max_flows == 4096


def test_an_unknown_socket_group_fails_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ServerConfigError, match="no such group"):
        ServerConfig(unix_socket=tmp_path / "o.sock", socket_group="no-such-group-here")


def test_the_export_file_is_owner_only_or_its_group_s(tmp_path: Path) -> None:
    ring = h.make_pipeline().ring
    old = os.umask(0o022)  # a permissive umask must not widen the file
    try:
        exporter = FlowExporter(ring, ExportConfig(path=tmp_path / "flows.json"))
        exporter.start()
        exporter.stop()
        assert stat.S_IMODE((tmp_path / "flows.json").stat().st_mode) == 0o600
        widened = tmp_path / "old.json"
        widened.write_text("")
        widened.chmod(0o644)  # left readable by an earlier version: narrowed on open
        exporter = FlowExporter(ring, ExportConfig(path=widened))
        exporter.start()
        exporter.stop()
        assert stat.S_IMODE(widened.stat().st_mode) == 0o600
        group = _other_group()
        shared = tmp_path / "shared.json"
        pipeline = h.make_pipeline()
        exporter = FlowExporter(
            pipeline.ring, ExportConfig(path=shared, max_bytes=1024, max_backups=1, group=group.gr_name)
        )
        exporter.start()
        pipeline.on_events(h.sample_events() * 4)  # more than 1 KiB: rotated at least once
        exporter.stop()
    finally:
        os.umask(old)
    rotated = shared.with_name("shared.json.1")
    assert rotated.exists(), "no rotation happened"
    for f in (shared, rotated):
        st = f.stat()
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == group.gr_gid
    assert json.loads(rotated.read_text().splitlines()[0])


def test_status_says_when_the_flow_api_is_down_and_why() -> None:
    import io

    from meshagent.cli.status_printer import print_agent_status

    out = io.StringIO()
    api = {
        "mode": "front-process",
        "pid": 123,
        "state": "restarting",
        "restarts": 2,
        "failed_starts": 5,
        "last_error": "cannot listen on 0.0.0.0:4245: address in use",
    }
    print_agent_status(out, {"ready": True, "node": "n", "flow_api": api})
    line = next(x for x in out.getvalue().splitlines() if x.startswith("Flow API:"))
    assert "DOWN" in line and "5 failed starts" in line and "address in use" in line
    assert "started again 2 times" in line
