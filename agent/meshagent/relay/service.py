"""The relay's observer.Observer service: every node's flows as one stream, every node's status as one.

GetFlows goes to every node with the client's own request (filters, time window, first/last N), so each
node filters its own flows; the relay merges the answers by time:
  - not following: all answers, sorted by time, then the first or last N of them overall;
  - following: the last N (or since T) overall as above, then each node's stream from just after the
    last flow it gave, merged through the sort buffer (merge.py). A node whose stream breaks is reported
    (NODE_UNAVAILABLE) and reopened with backoff from just after its last flow, so nothing it still holds
    is lost; once back it is reported again (NODE_CONNECTED).
Node status events go out as they happen, outside the time order; unreachable nodes are reported in the
stream rather than failing the call, as Hubble's relay does.

ServerStatus sums the nodes' counters and lists the unavailable ones; GetNodes lists every node with its
state; GetNamespaces is the union of the nodes' answers.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message

from meshagent import __version__
from meshagent.observer.grpcwire import RpcError, Status, frame
from meshagent.observer.h2server import CallInfo, Method, ServerStream
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.proto.relay import relay_pb2 as rpb
from meshagent.observer.query import InvalidRequest, parse_request
from meshagent.relay.merge import DEFAULT_CAPACITY, DEFAULT_DRAIN_S, SortBuffer
from meshagent.relay.peers import FlowCall, Peer, PeerPool, describe
from meshagent.relay.wire import WireError, node_status, response_key, response_time_ns

logger = logging.getLogger(__name__)

SERVICE_NAME = "observer.Observer"
WRITE_BATCH = 512  # responses per write to the client at most
QUEUE_DEPTH = 8192  # responses waiting between the node streams and the merge; beyond, nodes wait


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    max_s: float = 10.0
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield delay
            delay = min(self.max_s, delay * self.factor)


@dataclass(frozen=True)
class RelaySettings:
    sort_capacity: int = DEFAULT_CAPACITY
    drain_s: float = DEFAULT_DRAIN_S
    backoff: Backoff = Backoff()
    version: str = f"meshagent-relay {__version__}"


@dataclass(frozen=True)
class _StatusChange:
    state: rpb.NodeState
    peer: Peer
    message: str = ""


@dataclass
class _Fixed:
    """What the nodes answered to a request that does not follow."""

    items: list[tuple[int, int, bytes]]  # (time, order, response), in time order
    connected: list[Peer]
    unavailable: dict[Peer, str]  # peer -> why
    last_time: dict[Peer, int]  # per answering peer, the time of its last response


def _parse(message_type: type[Message], request: bytes) -> Message:
    try:
        return message_type.FromString(request)
    except DecodeError as err:
        raise RpcError(Status.INVALID_ARGUMENT, f"cannot parse {message_type.__name__}: {err}") from err


class RelayService:
    def __init__(self, pool: PeerPool, settings: RelaySettings | None = None) -> None:
        self.pool = pool
        self.settings = settings or RelaySettings()
        self._started_ns = time.monotonic_ns()

    # -- GetFlows ---------------------------------------------------------------------------------------
    def get_flows(self, request: bytes, stream: ServerStream) -> None:
        req = _parse(opb.GetFlowsRequest, request)
        assert isinstance(req, opb.GetFlowsRequest)
        try:
            query = parse_request(req)  # the same validation and errors as one node's
        except InvalidRequest as err:
            raise RpcError(Status.INVALID_ARGUMENT, str(err)) from err
        send = stream.write
        if not req.follow:
            fixed = self._fetch_fixed(req, first=req.first, number=query.number)
            self._send_fixed(fixed, send)
            return
        started_ns = time.time_ns()
        since: dict[Peer, int | None] = {peer: None for peer in self.pool.peers}
        known: dict[Peer, bool | None] = {peer: None for peer in self.pool.peers}
        if query.number != 0 or query.since_ns is not None:
            backlog = opb.GetFlowsRequest()
            backlog.CopyFrom(req)
            backlog.follow = False
            fixed = self._fetch_fixed(backlog, first=False, number=query.number)
            self._send_fixed(fixed, send)
            for peer in fixed.connected:
                # From just after what this node gave (or from when we asked, if it gave nothing).
                since[peer] = fixed.last_time.get(peer, started_ns - 1) + 1
                known[peer] = True
            for peer in fixed.unavailable:
                since[peer] = query.since_ns
                known[peer] = False
        self._follow(req, since, known, stream)

    def _fetch_fixed(self, req: opb.GetFlowsRequest, *, first: bool, number: int | None) -> _Fixed:
        payload = req.SerializeToString()

        def collect(peer: Peer) -> list[bytes]:
            return list(peer.flows(payload, follow=False))

        order = itertools.count()
        items: list[tuple[int, int, bytes]] = []
        connected: list[Peer] = []
        unavailable: dict[Peer, str] = {}
        last_time: dict[Peer, int] = {}
        flow_ids: set[int] = set()  # of the responses that are flows (they stay alive in `items`)
        for peer, result in self.pool.fan_out(collect):
            if isinstance(result, BaseException):
                unavailable[peer] = describe(result)
                continue
            try:
                keys = [response_key(raw) for raw in result]
            except WireError as err:
                unavailable[peer] = f"malformed response: {err}"
                continue
            connected.append(peer)
            if keys:
                last_time[peer] = max(t for t, _ in keys)
            for (at, flow), raw in zip(keys, result, strict=True):
                items.append((at, next(order), raw))
                if flow:
                    flow_ids.add(id(raw))
        items.sort()
        if number is not None:
            flows = [i for i, (_, _, raw) in enumerate(items) if id(raw) in flow_ids]
            keep = (flows[:number] if first else flows[-number:]) if number > 0 else []
            kept, all_flows = set(keep), set(flows)
            # Other responses (lost events) stay when they fall inside the kept flows' time span.
            lo, hi = (items[keep[0]][0], items[keep[-1]][0]) if keep else (1, 0)
            items = [
                item
                for i, item in enumerate(items)
                if i in kept or (i not in all_flows and lo <= item[0] <= hi)
            ]
        return _Fixed(items, connected, unavailable, last_time)

    def _send_fixed(self, fixed: _Fixed, send: Callable[[bytes], None]) -> None:
        head = []
        if fixed.connected:
            head.append(frame(node_status(rpb.NODE_CONNECTED, [p.name for p in fixed.connected])))
        if fixed.unavailable:
            why = "; ".join(f"{p.name}: {reason}" for p, reason in fixed.unavailable.items())
            head.append(frame(node_status(rpb.NODE_UNAVAILABLE, [p.name for p in fixed.unavailable], why)))
        if head:
            send(b"".join(head))
        for start in range(0, len(fixed.items), WRITE_BATCH):
            send(b"".join(frame(raw) for _, _, raw in fixed.items[start : start + WRITE_BATCH]))

    def _follow(
        self,
        req: opb.GetFlowsRequest,
        since: dict[Peer, int | None],
        known: dict[Peer, bool | None],
        stream: ServerStream,
    ) -> None:
        """Follows every node, and the nodes that appear while it runs (discovery): a new node is followed
        from its new flows on; a node that leaves is reported NODE_GONE."""
        done = threading.Event()
        out: queue.Queue[tuple[int, bytes] | _StatusChange] = queue.Queue(maxsize=QUEUE_DEPTH)
        calls: dict[Peer, FlowCall] = {}
        calls_lock = threading.Lock()
        pumps: dict[Peer, tuple[threading.Thread, threading.Event]] = {}

        def start_pump(peer: Peer, since_ns: int | None, connected: bool | None) -> None:
            gone = threading.Event()

            def active() -> bool:
                return not done.is_set() and not gone.is_set() and stream.is_active()

            thread = threading.Thread(
                target=self._pump,
                args=(peer, req, since_ns, connected, out, active, calls, calls_lock),
                name=f"relay-follow-{peer.name}",
                daemon=True,
            )
            pumps[peer] = (thread, gone)
            thread.start()

        for peer in self.pool.peers:
            start_pump(peer, since.get(peer), known.get(peer))
        following_version = self.pool.version
        buffer = SortBuffer(capacity=self.settings.sort_capacity, drain_s=self.settings.drain_s)

        def finished() -> bool:
            return not any(t.is_alive() for t, _ in pumps.values()) and out.empty()

        try:
            while stream.is_active():
                frames: list[bytes] = []
                if self.pool.version != following_version:
                    following_version = self.pool.version
                    current = set(self.pool.peers)
                    for peer in current - set(pumps):
                        start_pump(peer, None, None)
                    for peer in set(pumps) - current:
                        thread, gone = pumps.pop(peer)
                        gone.set()
                        with calls_lock:
                            call = calls.get(peer)
                        if call is not None:
                            call.cancel()
                        frames.append(frame(node_status(rpb.NODE_GONE, [peer.name], "no longer discovered")))
                if finished() and req.HasField("until"):
                    break  # every node's stream is complete (follow with `until`)
                wait = buffer.wait_s()
                try:
                    item: tuple[int, bytes] | _StatusChange | None = out.get(
                        timeout=0.2 if wait is None else min(0.2, max(wait, 0.001))
                    )
                except queue.Empty:
                    item = None
                taken = 0
                while item is not None:
                    if isinstance(item, _StatusChange):
                        if item.peer in pumps:  # not from a node that has since gone
                            frames.append(frame(node_status(item.state, [item.peer.name], item.message)))
                    else:
                        buffer.push(*item)
                    taken += 1
                    if taken >= WRITE_BATCH:
                        break
                    try:
                        item = out.get_nowait()
                    except queue.Empty:
                        item = None
                frames.extend(frame(raw) for raw in buffer.pop_ready())
                if finished() and req.HasField("until"):
                    frames.extend(frame(raw) for raw in buffer.drain())
                if frames:
                    stream.write(b"".join(frames))
        finally:
            done.set()
            with calls_lock:
                for call in calls.values():
                    call.cancel()
            for thread, _ in pumps.values():
                thread.join(timeout=5)

    def _pump(
        self,
        peer: Peer,
        req: opb.GetFlowsRequest,
        since_ns: int | None,
        connected: bool | None,
        out: queue.Queue[tuple[int, bytes] | _StatusChange],
        active: Callable[[], bool],
        calls: dict[Peer, FlowCall],
        calls_lock: threading.Lock,
    ) -> None:
        """Follows one node for as long as the client listens: reports its state changes, and reopens its
        stream with backoff from just after the last response it gave."""

        def put(item: tuple[int, bytes] | _StatusChange) -> bool:
            while active():
                try:
                    out.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        def report(state: rpb.NodeState, message: str = "") -> None:
            nonlocal connected
            now = state == rpb.NODE_CONNECTED
            if connected is not now:
                connected = now
                put(_StatusChange(state, peer, message))

        delays = self.settings.backoff.delays()
        until_ns = req.until.ToNanoseconds() if req.HasField("until") else None
        # A node that was out of reach gets asked, once back, for what it saw from when we began.
        followed_since = time.time_ns()
        if connected is False and since_ns is None:
            since_ns = followed_since
        while active():
            if until_ns is not None and (time.time_ns() > until_ns or (since_ns or 0) > until_ns):
                return  # nothing more can come before `until`
            try:
                peer.server_status(timeout_s=min(2.0, peer.settings.timeout_s))
            except Exception as err:  # the node's state is reported, never raised
                report(rpb.NODE_UNAVAILABLE, describe(err))
                if since_ns is None:
                    since_ns = followed_since
                self._sleep(next(delays), active)
                continue
            report(rpb.NODE_CONNECTED)
            request = opb.GetFlowsRequest()
            request.CopyFrom(req)
            request.follow = True
            request.first = False
            request.number = 0
            if since_ns is not None:
                request.since.FromNanoseconds(since_ns)
            else:
                request.ClearField("since")
            why = "stream ended"
            ended = False
            try:
                call = peer.flows(request.SerializeToString(), follow=True)
                with calls_lock:
                    calls[peer] = call
                if not active():  # the call may have been made after the others were cancelled
                    call.cancel()
                    return
                for raw in call:
                    delays = self.settings.backoff.delays()
                    at = response_time_ns(raw)
                    if at:
                        since_ns = at + 1
                    if not put((at, raw)):
                        return
                ended = True
            except Exception as err:  # whatever broke the stream is reported, and the node retried
                if not active():
                    return
                why = f"malformed response: {err}" if isinstance(err, WireError) else describe(err)
            finally:
                with calls_lock:
                    call_left = calls.pop(peer, None)
                if call_left is not None and not ended:
                    call_left.cancel()
            if not active() or (ended and req.HasField("until")):
                return  # a stream that ends at `until` is complete, not broken
            if since_ns is None:
                since_ns = followed_since
            logger.info("relay: node %s: %s; reconnecting", peer.name, why)
            report(rpb.NODE_UNAVAILABLE, why)
            self._sleep(next(delays), active)

    @staticmethod
    def _sleep(seconds: float, active: Callable[[], bool]) -> None:
        end = time.monotonic() + seconds
        while active() and time.monotonic() < end:
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    # -- unary ------------------------------------------------------------------------------------------
    def server_status(self) -> opb.ServerStatusResponse:
        resp = opb.ServerStatusResponse(version=self.settings.version)
        unavailable: list[str] = []
        connected = 0
        for peer, result in self.pool.fan_out(lambda p: p.server_status()):
            if isinstance(result, BaseException):
                unavailable.append(peer.name)
                continue
            connected += 1
            resp.num_flows += result.num_flows
            resp.max_flows += result.max_flows
            resp.seen_flows += result.seen_flows
            resp.flows_rate += result.flows_rate
            resp.lost_events_datapath += result.lost_events_datapath
            resp.lost_events_queue += result.lost_events_queue
            resp.ring_overwritten += result.ring_overwritten
            resp.lost_events_followers += result.lost_events_followers
            # The cluster's flows go as far back as its longest-running node's.
            resp.uptime_ns = max(resp.uptime_ns, result.uptime_ns)
        resp.num_connected_nodes.value = connected
        resp.num_unavailable_nodes.value = len(unavailable)
        resp.unavailable_nodes.extend(sorted(unavailable))
        return resp

    def get_nodes(self) -> opb.GetNodesResponse:
        resp = opb.GetNodesResponse()
        for peer, result in self.pool.fan_out(lambda p: p.get_nodes()):
            if isinstance(result, BaseException):
                node = resp.nodes.add(name=peer.name, address=peer.spec.target, state=rpb.NODE_UNAVAILABLE)
                node.tls.enabled = peer.settings.tls is not None
                continue
            for answered in result.nodes:
                node = resp.nodes.add()
                node.CopyFrom(answered)
                node.state = rpb.NODE_CONNECTED
                node.address = node.address or peer.spec.target
        resp.nodes.sort(key=lambda n: n.name)
        return resp

    def get_namespaces(self) -> opb.GetNamespacesResponse:
        names: set[tuple[str, str]] = set()
        for _peer, result in self.pool.fan_out(lambda p: p.get_namespaces()):
            if not isinstance(result, BaseException):
                names.update((ns.cluster, ns.namespace) for ns in result.namespaces)
        return opb.GetNamespacesResponse(
            namespaces=[opb.Namespace(cluster=c, namespace=n) for c, n in sorted(names)]
        )


def methods(service: RelayService) -> dict[str, Method]:
    """observer.Observer's methods by their gRPC path, answered for every node."""

    def unary(request_type: type[Message], respond: Callable[[], Message]) -> Method:
        def handler(request: bytes, info: CallInfo) -> bytes:
            _parse(request_type, request)
            return respond().SerializeToString()

        return Method(unary=handler)

    return {
        f"/{SERVICE_NAME}/GetFlows": Method(stream=service.get_flows),
        f"/{SERVICE_NAME}/ServerStatus": unary(opb.ServerStatusRequest, service.server_status),
        f"/{SERVICE_NAME}/GetNodes": unary(opb.GetNodesRequest, service.get_nodes),
        f"/{SERVICE_NAME}/GetNamespaces": unary(opb.GetNamespacesRequest, service.get_namespaces),
    }
