"""The service map's web server (aiohttp): the page, its script, the graph library, and the live state.

- `GET /api/events`: server-sent events: `snapshot` (everything) first, then `delta` every tick with what
  changed, and `status` when the flow server's reachability changes. A browser whose queue falls behind
  is sent a fresh snapshot instead of a backlog of deltas.
- `GET /api/edge?id=ID`: an edge's panel: counts, the policies by role, recent flows and the "why".
- `GET /api/status`: the feed's status and totals (for scripts and health checks).

The flow feed (a thread) adds flows to the graph under a lock; the tick drains a delta under the same lock,
so the browser sees at most a few messages a second whatever the flow rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.ui.feed import FeedStatus
from meshagent.ui.graph import HISTORY_S, ServiceGraph
from meshagent.ui.rows import flow_row
from meshagent.ui.why import Tracer, from_flows

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
GRAPH_LIBRARY = Path(__file__).parent / "web" / "node_modules" / "cytoscape" / "dist" / "cytoscape.min.js"
TICK_S = 0.25  # how often deltas go out: well inside the 2 s in which a new edge or drop must show
KEEPALIVE_S = 15.0
QUEUE_DEPTH = 40  # deltas a slow browser may be behind before it gets a snapshot instead
FORGET_EVERY_S = 60.0  # how often edges older than the longest time window are dropped
NODES_EVERY_S = 10.0  # how often the cluster's node addresses are read again (nodes come and go)


def _json(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))  # compact: deltas go out several times a second


class MissingGraphLibrary(RuntimeError):
    pass


@dataclass(eq=False)  # each page is its own subscriber (hashed by identity)
class _Subscriber:
    queue: asyncio.Queue[tuple[str, str]] = field(default_factory=lambda: asyncio.Queue(QUEUE_DEPTH))
    needs_snapshot: bool = False


class MapState:
    """The graph and the feed's status, shared by the feed thread and the web server's loop."""

    def __init__(self) -> None:
        self.graph = ServiceGraph()
        self.lock = threading.Lock()
        self.status = FeedStatus("connecting", "")
        self.status_version = 0

    def add_flow(self, flow: pb.Flow) -> None:
        with self.lock:
            self.graph.add(flow)

    def set_status(self, status: FeedStatus) -> None:
        with self.lock:
            self.status = status
            self.status_version += 1


class MapServer:
    def __init__(
        self,
        state: MapState,
        *,
        tracer: Tracer | None = None,
        node_addresses: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        if not GRAPH_LIBRARY.is_file():
            raise MissingGraphLibrary(f"{GRAPH_LIBRARY} is missing: run `make install` (npm ci)")
        self.state = state
        self.tracer = tracer
        self.node_addresses = node_addresses
        self._subscribers: set[_Subscriber] = set()
        self._sent_status = -1
        self._next_forget = time.monotonic() + FORGET_EVERY_S
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/", self._index),
                web.get("/static/{name}", self._static),
                web.get("/vendor/cytoscape.min.js", self._library),
                web.get("/api/events", self._events),
                web.get("/api/status", self._status),
                web.get("/api/edge", self._edge),
            ]
        )
        self.app.on_startup.append(self._start_ticker)
        self.app.on_shutdown.append(self._close_streams)

    # --- static ------------------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = STATIC_DIR / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    async def _library(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(GRAPH_LIBRARY)

    # --- state -------------------------------------------------------------------------------------

    def _status_dict(self) -> dict[str, Any]:
        return {**self.state.status.as_dict(), "flows_seen": self.state.graph.flows_seen}

    async def _status(self, request: web.Request) -> web.StreamResponse:
        with self.state.lock:
            body = {
                **self._status_dict(),
                "nodes": len(self.state.graph.nodes),
                "edges": len(self.state.graph.edges),
            }
        return web.json_response(body)

    async def _edge(self, request: web.Request) -> web.StreamResponse:
        edge_id = request.query.get("id", "")
        with self.state.lock:
            edge = self.state.graph.edges.get(edge_id)
            if edge is None:
                raise web.HTTPNotFound(text=f"no edge {edge_id}")
            body: dict[str, Any] = edge.summary(all_buckets=True)
            body["policy_uses"] = [
                {
                    "role": u.role,
                    "direction": u.direction,
                    "policy": u.describe(),
                    "kind": u.kind,
                    "namespace": u.namespace,
                    "name": u.name,
                    "flows": n,
                }
                for u, n in sorted(edge.policies.items(), key=lambda item: (item[0].role, item[0].describe()))
            ]
            graph = self.state.graph
            body["recent"] = [
                flow_row(
                    f,
                    seq=i,
                    source=edge.source,
                    target=edge.target,
                    ends=graph.end_ids(f),
                )
                for i, f in enumerate(reversed(edge.recent))
            ]
            body["why"] = from_flows(edge)
            last = edge.recent[-1] if edge.recent else None
        if self.tracer is not None:
            # Compiling the manifests takes a moment: off the loop, and outside the lock.
            body["trace"] = await asyncio.get_running_loop().run_in_executor(
                None, self.tracer.explain, last, body["port"], body["protocol"]
            )
        else:
            body["trace"] = None
        return web.json_response(body)

    # --- live updates ------------------------------------------------------------------------------

    def _snapshot_message(self) -> tuple[str, str]:
        with self.state.lock:
            body = {**self.state.graph.snapshot(), "status": self._status_dict()}
        return "snapshot", _json(body)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        subscriber = _Subscriber()
        self._subscribers.add(subscriber)
        try:
            kind, data = self._snapshot_message()
            await response.write(f"retry: 1000\nevent: {kind}\ndata: {data}\n\n".encode())
            while True:
                try:
                    kind, data = await asyncio.wait_for(subscriber.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if kind == "close":
                    break
                if subscriber.needs_snapshot:
                    subscriber.needs_snapshot = False
                    while not subscriber.queue.empty():
                        subscriber.queue.get_nowait()
                    kind, data = self._snapshot_message()
                await response.write(f"event: {kind}\ndata: {data}\n\n".encode())
        except ConnectionResetError:
            pass  # the page went away
        finally:
            self._subscribers.discard(subscriber)
        return response

    def _publish(self, kind: str, data: str) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber.queue.put_nowait((kind, data))
            except asyncio.QueueFull:
                subscriber.needs_snapshot = True

    def tick(self) -> None:
        """Sends what changed since the last tick to every open page."""
        forget = time.monotonic() >= self._next_forget
        if forget:
            self._next_forget = time.monotonic() + FORGET_EVERY_S
        with self.state.lock:
            if forget:
                self.state.graph.forget_older_than(time.time() - HISTORY_S)
            delta = self.state.graph.drain()
            status_changed = self.state.status_version != self._sent_status
            self._sent_status = self.state.status_version
            status = self._status_dict()
        if delta is not None:
            delta["status"] = status
            self._publish("delta", _json(delta))
        elif status_changed:
            self._publish("status", _json(status))

    async def read_node_addresses(self) -> None:
        """Gives the graph the cluster's node addresses (read off the loop: it is file reading)."""
        if self.node_addresses is None:
            return
        try:
            addresses = await asyncio.get_running_loop().run_in_executor(None, self.node_addresses)
        except Exception:  # a broken manifest directory must not end the live updates
            logger.exception("reading the cluster's node addresses failed")
            return
        with self.state.lock:
            self.state.graph.set_node_addresses(addresses)

    async def _ticker(self) -> None:
        next_nodes = 0.0
        while True:
            if time.monotonic() >= next_nodes:
                next_nodes = time.monotonic() + NODES_EVERY_S
                await self.read_node_addresses()
            await asyncio.sleep(TICK_S)
            try:
                self.tick()
            except Exception:  # one bad tick must not end the live updates
                logger.exception("service map tick failed")

    async def _start_ticker(self, app: web.Application) -> None:
        task = asyncio.get_running_loop().create_task(self._ticker())

        async def stop(app: web.Application) -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app.on_cleanup.append(stop)

    async def _close_streams(self, app: web.Application) -> None:
        for subscriber in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                subscriber.queue.put_nowait(("close", ""))
