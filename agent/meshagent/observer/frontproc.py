"""The observer front process: serves observer.Observer over gRPC for the agent that started it.

Started by frontlink.FrontLink as `python -m meshagent.observer.frontproc CONTROL_FD SETTINGS_JSON`. It binds
the listening sockets, then drops every privilege (privileges.py: no capability, user nobody, umask 077),
runs the HTTP/2 server (h2server.py), asks the agent for every call over the control socket (ipc.py), and
turns the records of each GetFlows stream into responses (handoff.py). It stops when the agent says so,
when the control socket ends (the agent is gone) or when the agent sends what it cannot read.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from meshagent.observer import privileges
from meshagent.observer.grpcwire import RpcError, Status
from meshagent.observer.h2server import (
    CallInfo,
    H2GrpcServer,
    Method,
    ServerStream,
    StreamHandler,
    UnaryHandler,
)
from meshagent.observer.handoff import FlowUnpacker, FrameReader, ProtocolError
from meshagent.observer.ipc import (
    ControlProtocolError,
    Message,
    Ready,
    Result,
    StartError,
    Stop,
    StreamCall,
    Unary,
    decode,
)
from meshagent.observer.limits import ServerLimits
from meshagent.observer.link import CONTROL_MAX, STREAM_BUFFER, send_control, send_request
from meshagent.observer.listen import ServerConfigError, TlsConfig, bind_tcp, bind_unix, split_address

logger = logging.getLogger("meshagent.observer.frontproc")

UNARY_TIMEOUT_S = 30.0  # a unary call with no deadline waits this long for the agent
POLL_S = 0.5  # how often a waiting stream looks at its client


class AgentLink:
    """The control socket from this side: calls to the agent, and its answers and orders."""

    def __init__(self, control: socket.socket) -> None:
        self._control = control
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, concurrent.futures.Future[tuple[int, str, bytes]]] = {}
        self.stop_requested = threading.Event()
        self.grace = 0.0
        self.gone = False

    def send(self, message: Message, fds: list[int] | None = None) -> None:
        try:
            with self._lock:
                send_control(self._control, message, fds)
        except OSError as err:
            raise RpcError(Status.UNAVAILABLE, f"the agent is not reachable: {err}") from err

    def unary(self, path: str, request: bytes, info: CallInfo) -> bytes:
        call_id = next(self._ids)
        fut: concurrent.futures.Future[tuple[int, str, bytes]] = concurrent.futures.Future()
        self._pending[call_id] = fut
        try:
            if self.gone:
                raise RpcError(Status.UNAVAILABLE, "the agent is gone")
            self.send(Unary(call_id, info.deadline, path, info.peer, request))
            wait = UNARY_TIMEOUT_S if info.deadline is None else max(0.0, info.deadline - time.monotonic())
            try:
                status, message, response = fut.result(timeout=wait)
            except concurrent.futures.TimeoutError:
                if info.deadline is not None:
                    raise RpcError(Status.DEADLINE_EXCEEDED, "deadline exceeded") from None
                raise RpcError(Status.UNAVAILABLE, "the agent did not answer") from None
        finally:
            self._pending.pop(call_id, None)
        if status != Status.OK:
            raise RpcError(Status(status), message)
        return response

    def run(self) -> None:
        """Reads the agent's messages until it says stop or goes away (on the calling thread)."""
        while True:
            try:
                data = self._control.recv(CONTROL_MAX)
            except OSError:
                data = b""
            if not data:
                self.gone = True
                for fut in list(self._pending.values()):
                    fut.set_result((int(Status.UNAVAILABLE), "the agent is gone", b""))
                self.stop_requested.set()
                return
            try:
                message = decode(data)
            except ControlProtocolError as err:
                # The agent is this process's only trusted peer: an unreadable message means a broken
                # link, and the way to mend it is to stop; the agent starts a new front process.
                logger.error("unreadable message from the agent: %s; stopping", err)
                message = Stop(0.0)
            if isinstance(message, Result):
                waiting = self._pending.get(message.call_id)
                if waiting is not None and not waiting.done():
                    waiting.set_result((int(message.status), message.message, message.response))
            elif isinstance(message, Stop):
                self.grace = message.grace
                self.stop_requested.set()
                return
            else:
                logger.error("unexpected %s from the agent; stopping", type(message).__name__)
                self.stop_requested.set()
                return


def stream_handler(agent: AgentLink, path: str) -> StreamHandler:
    def handler(request: bytes, stream: ServerStream) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STREAM_BUFFER)
        try:
            try:
                agent.send(StreamCall(stream.deadline, path, stream.peer), [theirs.fileno()])
            finally:
                theirs.close()
            try:
                send_request(mine, request)
            except OSError as err:
                raise RpcError(Status.UNAVAILABLE, f"the agent is not reachable: {err}") from err
            reader = FrameReader(mine)
            unpacker = FlowUnpacker()
            while stream.is_active():
                try:
                    frames = reader.read(POLL_S)
                    data = b"".join([unpacker.feed(kind, payload) for kind, payload in frames])
                except ProtocolError as err:
                    raise RpcError(Status.INTERNAL, f"the agent sent an unreadable stream: {err}") from err
                if data:
                    stream.write(data)
                if unpacker.ended is not None:
                    status, message = unpacker.ended
                    if status != Status.OK:
                        raise RpcError(status, message)
                    return
                if reader.eof:
                    raise RpcError(Status.UNAVAILABLE, "the agent ended the stream")
        finally:
            mine.close()  # tells the agent's side, if the client went first

    return handler


def unary_handler(agent: AgentLink, path: str) -> UnaryHandler:
    def handler(request: bytes, info: CallInfo) -> bytes:
        return agent.unary(path, request, info)

    return handler


def serve(control: socket.socket, settings: dict[str, Any]) -> int:
    agent = AgentLink(control)
    methods = {
        path: Method(stream=stream_handler(agent, path))
        if kind == "stream"
        else Method(unary=unary_handler(agent, path))
        for path, kind in settings["methods"].items()
    }
    server = H2GrpcServer(methods, limits=ServerLimits(**settings["limits"]))
    server.start()
    try:
        tcp_port = None
        if settings["unix_socket"]:
            bind_unix(server, Path(settings["unix_socket"]), settings.get("socket_group"))
        if settings["tcp_address"]:
            address = settings["tcp_address"]
            if settings.get("tcp_port"):
                address = f"{split_address(address)[0]}:{settings['tcp_port']}"
            tls = settings["tls"]
            ctx = None
            if tls is not None:
                ca = tls["client_ca_file"]
                ctx = TlsConfig(
                    Path(tls["cert_file"]), Path(tls["key_file"]), Path(ca) if ca else None
                ).context()
            tcp_port = bind_tcp(server, address, ctx)
        # Bound: nothing left that needs a privilege (the agent, not this process, removes the socket).
        who = privileges.drop(settings.get("user"), settings.get("group"))
        logger.debug("observer front process runs as %s", who)
    except Exception as err:  # reported to the agent, which raises it as ServerConfigError
        server.stop(grace=None)
        send_control(control, StartError(str(err) if isinstance(err, ServerConfigError) else repr(err)))
        return 1
    send_control(control, Ready(tcp_port))
    agent.run()
    server.stop(grace=agent.grace)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m meshagent.observer.frontproc CONTROL_FD SETTINGS_JSON", file=sys.stderr)
        return 2
    settings = json.loads(argv[1])
    from meshagent.agent.logs import setup_logging

    setup_logging(level=str(settings["log_level"]), fmt=str(settings["log_format"]))
    # As in the agent (cli/run.py): short GIL hand-offs between the I/O loop and the stream workers.
    sys.setswitchinterval(0.0005)
    # Whatever this process creates is its own only (the Unix socket is made owner-only explicitly).
    os.umask(0o077)
    control = socket.socket(fileno=int(argv[0]))
    try:
        return serve(control, settings)
    finally:
        control.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
