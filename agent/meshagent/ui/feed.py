"""Reads the flow stream of an agent (or relay) for the service map, and keeps reading: a server that is
unreachable or goes away is reported in `FeedStatus` and retried with a growing pause, never given up on.
Through a relay, a node whose agent the relay cannot reach is reported too (the relay's node status
events): the map is then missing that node's flows, and says so.

The gRPC client blocks, so the feed is a thread of its own; it hands each flow to a callback as it comes
(batching would hold the last flow of a quiet moment back until the next one arrives).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from meshagent.observer.client import ClientError, ClientTls, ObserverClient
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.proto.relay import relay_pb2 as rpb

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 5.0
SEED_FLOWS = 5000  # flows already held by the server that a fresh map starts from


@dataclass(frozen=True)
class FeedStatus:
    state: str  # "connecting", "connected" or "unreachable"
    server: str
    message: str = ""
    retry_in_s: float = 0.0
    since: float = 0.0  # wall time of the change
    lost_events: int = 0  # flows the server reported lost since the map started
    # Through a relay: node name -> why the relay cannot read it (its flows are missing from the map).
    unavailable_nodes: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state,
            "server": self.server,
            "message": self.message,
            "retry_in_s": self.retry_in_s,
            "since": self.since,
            "lost_events": self.lost_events,
            "unavailable_nodes": [{"node": name, "message": why} for name, why in self.unavailable_nodes],
        }


def _describe(err: BaseException) -> str:
    if isinstance(err, grpc.RpcError):
        code = err.code()
        details = err.details()
        return f"{code.name if code else 'UNKNOWN'}: {details}"
    return str(err) or type(err).__name__


class FlowFeed:
    def __init__(
        self,
        server: str | None,
        on_flow: Callable[[pb.Flow], None],
        on_status: Callable[[FeedStatus], None],
        *,
        tls: ClientTls | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self._server = server
        self._label = server or "the local agent socket"
        self._on_flow = on_flow
        self._on_status = on_status
        self._tls = tls
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ui-flow-feed", daemon=True)
        self._client: ObserverClient | None = None
        self._last_time_ns = 0  # resume after the newest flow seen, so a reconnect counts nothing twice
        self._lost = 0
        self._unavailable: dict[str, str] = {}  # as the relay last reported, on this connection

    def start(self) -> None:
        self._status("connecting")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        client = self._client
        if client is not None:
            client.close()  # ends a blocked stream
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _status(self, state: str, message: str = "", retry_in_s: float = 0.0) -> None:
        self._on_status(
            FeedStatus(
                state,
                self._label,
                message,
                retry_in_s,
                since=time.time(),
                lost_events=self._lost,
                unavailable_nodes=tuple(sorted(self._unavailable.items())),
            )
        )

    def _request(self) -> opb.GetFlowsRequest:
        req = opb.GetFlowsRequest(follow=True)
        if self._last_time_ns:
            req.since.FromNanoseconds(self._last_time_ns + 1)
        else:
            req.number = SEED_FLOWS
        return req

    def _run(self) -> None:
        pause = FIRST_RETRY_S
        while not self._stop.is_set():
            try:
                self._client = ObserverClient(self._server, tls=self._tls, timeout_s=self._timeout_s)
                self._client.server_status()  # fails fast when nobody answers
                self._unavailable = {}  # a relay reports its nodes afresh at the start of each stream
                self._status("connected")
                pause = FIRST_RETRY_S
                self._follow(self._client)
                if not self._stop.is_set():
                    raise ConnectionError("the flow stream ended")
            except (grpc.RpcError, ClientError, ConnectionError, OSError) as err:
                if self._stop.is_set():
                    break
                self._status("unreachable", _describe(err), pause)
                self._stop.wait(pause)
                pause = min(pause * 2, MAX_RETRY_S)
                if not self._stop.is_set():
                    self._status("connecting")
            finally:
                if self._client is not None:
                    self._client.close()
                    self._client = None

    def _node_status(self, event: rpb.NodeStatusEvent) -> None:
        if event.state_change == rpb.NODE_CONNECTED:
            for name in event.node_names:
                self._unavailable.pop(name, None)
        elif event.state_change == rpb.NODE_GONE:
            for name in event.node_names:  # left the cluster: nothing missing any more
                self._unavailable.pop(name, None)
        else:  # unavailable, or an error reading it
            for name in event.node_names:
                self._unavailable[name] = event.message or rpb.NodeState.Name(event.state_change)
        self._status("connected")

    def _follow(self, client: ObserverClient) -> None:
        on_flow = self._on_flow
        for resp in client.get_flows(self._request()):
            if resp.HasField("flow"):
                flow = resp.flow
                on_flow(flow)
                t = flow.time.seconds * 1_000_000_000 + flow.time.nanos
                if t > self._last_time_ns:
                    self._last_time_ns = t
            elif resp.HasField("lost_events"):
                self._lost += resp.lost_events.num_events_lost
                self._status("connected")
            elif resp.HasField("node_status"):
                self._node_status(resp.node_status)
            if self._stop.is_set():
                return
