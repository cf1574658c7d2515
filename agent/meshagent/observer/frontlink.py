"""The agent's side of the observer front process: starts it, answers its calls, feeds its streams.

Why a second process: at high flow rates the agent's interpreter lock is the limit. Reading the ring
buffer, enrichment and the flow ring need it, and so did encoding every flow, HTTP/2 and the client
sockets, about as much again. The front process (frontproc.py) takes the second half onto the other core:
it owns the listening sockets and speaks gRPC; this side keeps the ring and the queries, and hands each
stream's flows over as small records (handoff.py).

Between the two:
- a control socket (SOCK_SEQPACKET, one message per datagram in the fixed binary format of ipc.py): the
  front process asks for unary calls (UNARY) and answers come back (RESULT); a GetFlows call arrives as
  STREAM with the agent's end of a new socket pair attached, its request then comes on that socket; STOP
  and the end of the socket stop the front process. A message the agent cannot read drops the link:
  the front process is killed and started again, the agent carries on;
- per stream, that socket: handoff frames from here, ended by END; the front process closes it when the
  client goes, which ends the query here.

If the front process dies, it is started again (the listening sockets are bound again by the new one),
after a delay that doubles with each failed start up to RESTART_BACKOFF_MAX_S, for as long as the agent
runs; `state` and `restarts`/`failed_starts` say where it is (status and metrics).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from meshagent.observer.grpcwire import RpcError, Status
from meshagent.observer.h2server import CallInfo, StreamClosed
from meshagent.observer.handoff import FlowPacker, end_frame
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
from meshagent.observer.link import (
    CONTROL_MAX,
    STREAM_BUFFER,
    control_pair,
    recv_request,
    send_control,
)
from meshagent.observer.listen import ServerConfig, ServerConfigError
from meshagent.observer.metrics import FrontState
from meshagent.observer.service import ObserverService, methods

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
RESTART_DELAY_S = 1.0  # the first restart's delay; it doubles with each start that fails
RESTART_BACKOFF_MAX_S = 30.0


class FrontLink:
    """Runs the front process for `service` with `config` (ServerConfig) and serves what it asks."""

    def __init__(self, service: ObserverService, config: ServerConfig) -> None:
        self._service = service
        self._config = config
        self._methods = methods(service)
        self._stopping = threading.Event()
        self._send_lock = threading.Lock()
        self._unary_pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="observer-unary")
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._supervisor: threading.Thread | None = None
        self._streams: set[threading.Thread] = set()
        self._streams_lock = threading.Lock()
        self.tcp_port: int | None = None
        self.restarts = 0  # successful restarts
        self.failed_starts = 0  # restarts that failed (each retried after a longer delay)
        self.broken_links = 0  # times the front process sent what the agent could not read
        self.state = "starting"  # starting | up | restarting | stopped
        self.last_error = ""
        self.restart_delay_s = RESTART_DELAY_S
        self.restart_backoff_max_s = RESTART_BACKOFF_MAX_S
        self.on_restart: Callable[[], None] | None = None  # after each restart (metrics hook)

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> int | None:
        """Starts the front process and waits until it listens; returns the bound TCP port, if any.
        Raises ServerConfigError when it cannot listen."""
        self._spawn()
        self.state = "up"
        self._supervisor = threading.Thread(target=self._supervise, name="observer-link", daemon=True)
        self._supervisor.start()
        return self.tcp_port

    def _spawn(self) -> None:
        cfg = self._config
        settings = {
            "unix_socket": str(cfg.unix_socket) if cfg.unix_socket is not None else None,
            "socket_group": cfg.socket_group,
            "tcp_address": cfg.tcp_address,
            "tls": None
            if cfg.tls is None
            else {
                "cert_file": str(cfg.tls.cert_file),
                "key_file": str(cfg.tls.key_file),
                "client_ca_file": str(cfg.tls.client_ca_file) if cfg.tls.client_ca_file else None,
            },
            "limits": cfg.limits.as_dict(),
            "user": cfg.front_user,
            "group": cfg.front_group,
            "methods": {path: "stream" if m.stream else "unary" for path, m in self._methods.items()},
            "log_level": logging.getLevelName(logging.getLogger("meshagent").getEffectiveLevel()),
            "log_format": cfg.front_log_format,
            "tcp_port": self.tcp_port,  # a restart binds the port the first start got
        }
        mine, theirs = control_pair()
        argv = [
            sys.executable,
            "-m",
            "meshagent.observer.frontproc",
            str(theirs.fileno()),
            json.dumps(settings),
        ]
        try:
            # A session of its own: a terminal's Ctrl-C is for the agent, which then stops this process
            # itself (a SIGINT to both would read to the agent as a crash to restart from).
            proc = subprocess.Popen(
                argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, start_new_session=True
            )
        finally:
            theirs.close()
        mine.settimeout(START_TIMEOUT_S)
        reply: Message
        try:
            data = mine.recv(CONTROL_MAX)
            reply = decode(data) if data else StartError("it exited at start")
        except (OSError, TimeoutError) as err:
            reply = StartError(f"no answer: {err}")
        except ControlProtocolError as err:
            reply = StartError(f"an unreadable answer: {err}")
        if not isinstance(reply, Ready):
            mine.close()
            proc.kill()
            proc.wait()
            reason = reply.reason if isinstance(reply, StartError) else f"unexpected {type(reply).__name__}"
            raise ServerConfigError(f"observer front process: {reason}")
        mine.settimeout(None)
        self.tcp_port = reply.tcp_port
        self._proc, self._control = proc, mine
        logger.debug("observer front process %d ready", proc.pid)

    def stop(self, grace: float | None = 1.0) -> None:
        self._stopping.set()
        self._stop_process(grace)
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        with self._streams_lock:
            streams = list(self._streams)
        for t in streams:
            t.join(timeout=5)
        self._unary_pool.shutdown(wait=False)
        self.state = "stopped"

    def _stop_process(self, grace: float | None) -> None:
        control, proc = self._control, self._proc
        if control is not None:
            try:
                with self._send_lock:
                    send_control(control, Stop(grace or 0.0))
            except OSError:
                pass  # already gone
        if proc is not None:
            try:
                proc.wait(timeout=(grace or 0.0) + 10)
            except subprocess.TimeoutExpired:
                logger.warning("observer front process %d did not stop; killing it", proc.pid)
                proc.kill()
                proc.wait()
        if control is not None:
            control.close()

    def front_state(self) -> FrontState:
        """For metrics (FlowMetrics.watch_front)."""
        return FrontState(self.state == "up", self.failed_starts, self.broken_links)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _supervise(self) -> None:
        while True:
            self._serve_control()
            if self._stopping.is_set():
                return
            proc = self._proc
            code = proc.wait() if proc is not None else None
            if self._control is not None:
                self._control.close()
            self.state = "restarting"
            logger.error("observer front process exited (%s); starting it again", code)
            delay = self.restart_delay_s
            while True:
                if self._stopping.wait(delay):
                    return
                try:
                    self._spawn()
                except Exception as err:
                    self.failed_starts += 1
                    self.last_error = str(err)
                    delay = min(delay * 2, self.restart_backoff_max_s)
                    logger.error(
                        "restarting the observer front process failed (%s); next try in %.0f s", err, delay
                    )
                    continue
                break
            self.restarts += 1
            self.state = "up"
            if self._stopping.is_set():  # stop() ran while it was starting: it saw the old one only
                self._stop_process(0.0)
                return
            if self.on_restart is not None:
                self.on_restart()

    # -- calls from the front process -------------------------------------------------------------------
    def _serve_control(self) -> None:
        control = self._control
        assert control is not None
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(control, CONTROL_MAX, 1)
            except OSError:
                return
            if not data:
                for fd in fds:
                    os.close(fd)
                return  # the front process is gone (or stopped)
            try:
                message = decode(data, len(fds))
            except ControlProtocolError as err:
                for fd in fds:
                    os.close(fd)
                self._drop_link(f"unreadable message from the observer front process: {err}")
                return
            if isinstance(message, Unary):
                self._unary_pool.submit(self._unary, message)
            elif isinstance(message, StreamCall):
                self._start_stream(fds[0], message)
            else:
                for fd in fds:
                    os.close(fd)
                self._drop_link(f"unexpected {type(message).__name__} from the observer front process")
                return

    def _drop_link(self, why: str) -> None:
        """The front process broke the protocol: it is killed (and started again by the supervisor)."""
        self.broken_links += 1
        self.last_error = why
        logger.error("%s; dropping the link", why)
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)

    def _unary(self, call: Unary) -> None:
        method = self._methods.get(call.path)
        status, message, response = Status.OK, "", b""
        try:
            if method is None or method.unary is None:
                raise RpcError(Status.UNIMPLEMENTED, f"unknown method {call.path}")
            response = method.unary(call.request, CallInfo(call.peer, call.deadline))
        except RpcError as err:
            status, message, response = err.status, err.message, b""
        except Exception as err:
            logger.exception("unary call %s failed", call.path)
            status, message, response = Status.UNKNOWN, f"{type(err).__name__}: {err}", b""
        try:
            with self._send_lock:
                send_control(self._control_socket(), Result(call.call_id, status, message, response))
        except RpcError as err:
            with self._send_lock:
                send_control(self._control_socket(), Result(call.call_id, err.status, err.message, b""))
        except OSError:
            pass  # the front process went away; its client gets UNAVAILABLE from the restart

    def _control_socket(self) -> socket.socket:
        control = self._control
        if control is None:
            raise OSError("no front process")
        return control

    def _start_stream(self, fd: int, call: StreamCall) -> None:
        sock = socket.socket(fileno=fd)
        t = threading.Thread(
            target=self._run_stream,
            args=(sock, call.path, call.peer, call.deadline),
            name="observer-flows",
            daemon=True,
        )
        with self._streams_lock:
            self._streams.add(t)
        t.start()

    def _run_stream(self, sock: socket.socket, path: str, peer: str, deadline: float | None) -> None:
        link = _StreamLink(sock, deadline, self._stopping)
        try:
            request = recv_request(sock)
            method = self._methods.get(path)
            if method is None or method.stream is None:
                raise RpcError(Status.UNIMPLEMENTED, f"unknown method {path}")
            packer = FlowPacker(self._service.node_tail, self._service.framed_other)
            self._service.serve_flows(
                request, link.is_active, lambda items: link.send(packer.pack(items)), peer
            )
            link.end(Status.OK, "")
        except StreamClosed:
            pass  # the client (or the front process) went away
        except RpcError as err:
            link.end(err.status, err.message)
        except Exception as err:
            logger.exception("GetFlows for %s failed", peer)
            link.end(Status.UNKNOWN, f"{type(err).__name__}: {err}")
        finally:
            sock.close()
            with self._streams_lock:
                self._streams.discard(threading.current_thread())


class _StreamLink:
    """This end of one stream's socket: the query's `active` and `send`."""

    def __init__(self, sock: socket.socket, deadline: float | None, stopping: threading.Event) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_BUFFER)
        self._sock = sock
        self._deadline = deadline  # time.monotonic(): the same clock in both processes (CLOCK_MONOTONIC)
        self._stopping = stopping
        self._gone = False

    def is_active(self) -> bool:
        if self._gone or self._stopping.is_set():
            return False
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return False
        try:
            # The front process never writes here: readable means closed (client gone).
            if self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                self._gone = True
        except BlockingIOError:
            pass
        except OSError:
            self._gone = True
        return not self._gone

    def send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)  # blocks while the front process (its client) is behind
        except OSError as err:
            self._gone = True
            raise StreamClosed() from err

    def end(self, status: Status, message: str) -> None:
        if self._gone:
            return
        try:
            self._sock.sendall(end_frame(status, message))
        except OSError:
            self._gone = True
