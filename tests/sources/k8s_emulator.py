"""A small Kubernetes API server emulator for the source tests (standard library only).

Why our own: the tests need what an informer relies on and kmock 0.8 does not give
(it emulates requests, not the list-then-watch protocol): a global resourceVersion
stamped on every write, lists carrying it, watches that replay history after a version,
410 Gone below a compaction point, BOOKMARK events, label and field selectors, Namespace
objects, and fault switches (dropped streams, 500s, a server that stops and comes back
with its state).

It speaks plain HTTP/1.1 with chunked watch streams, so the official client talks to
it unchanged. Writes normally go through the Python methods (`apply`, `delete`) so a
test controls exactly what changes; POST (create) and DELETE over HTTP work too, and
POSTed core/v1 Events are kept in `events`.

Simplifications: selectors on a watch filter each event by the object it carries (a MODIFIED
that moves an object out of the selection is not turned into a DELETED); no authentication;
JSON only.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import http.server
import json
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from meshagent.sources.kinds import KINDS, KindInfo

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

_BY_PATH: dict[tuple[str, str], KindInfo] = {(info.api_version, info.plural): info for info in KINDS}
_BY_KIND: dict[str, KindInfo] = {str(info.kind): info for info in KINDS}


@dataclass(frozen=True)
class _Change:
    rv: int
    info: KindInfo
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj


@dataclass
class _Route:
    api_version: str
    info: KindInfo | None  # None for paths we do not serve as a kind (events)
    plural: str
    namespace: str | None
    name: str | None


@dataclass
class Counters:
    lists: dict[str, int] = field(default_factory=dict)
    watches: dict[str, int] = field(default_factory=dict)

    def bump(self, table: dict[str, int], plural: str) -> None:
        table[plural] = table.get(plural, 0) + 1


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge key by key, null removes, anything else replaces."""
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return copy.deepcopy(patch)
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge(merged.get(key), value)
    return merged


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


# --- selectors ------------------------------------------------------------------------------


def _split_selector(text: str) -> list[str]:
    """Split on commas that are not inside a set `(a,b)`."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def label_selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in _split_selector(selector):
        if " notin " in term or " in " in term:
            negate = " notin " in term
            key, _, rest = term.partition(" notin " if negate else " in ")
            values = {v.strip() for v in rest.strip().strip("()").split(",")}
            present = key.strip() in labels and labels[key.strip()] in values
            if present == negate:
                return False
        elif "!=" in term:
            key, _, value = term.partition("!=")
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, _, value = term.replace("==", "=").partition("=")
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def field_selector_matches(selector: str, obj: Obj) -> bool:
    for term in _split_selector(selector):
        if "!=" in term:
            path, _, value = term.partition("!=")
            if _field(obj, path.strip()) == value.strip():
                return False
        else:
            path, _, value = term.replace("==", "=").partition("=")
            if _field(obj, path.strip()) != value.strip():
                return False
    return True


# --- the emulator ---------------------------------------------------------------------------


class KubeEmulator:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, bookmark_interval: float = 1.0) -> None:
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self._cond = threading.Condition()
        self._rv = 1
        self._objects: dict[tuple[str, str, str], Obj] = {}  # (plural, namespace, name)
        self._history: list[_Change] = []
        self._compacted_rv = 0
        self._drop_generation = 0
        self._expire_generation = 0
        self._running = False
        self._server: http.server.ThreadingHTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        # Fault switches and observations.
        self.fail_requests = False  # every request answers 500
        self.fail_plurals: set[str] = set()  # requests for these resources (e.g. "pods") answer 500
        self.unserved_plurals: set[str] = set()  # not served at all, like a CRD not installed: 404
        self.stream_seconds: float | None = None  # end every watch after this long (0 = at once)
        self.expire_continues = False  # the next list continuation answers 410 (snapshot expired)
        self._snapshots: dict[str, tuple[int, list[Obj]]] = {}  # paginated lists' snapshots
        self.forbid_events = False  # POST of an Event answers 403 (no RBAC)
        self.events: list[Obj] = []
        self.counters = Counters()

    # --- life cycle --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Start serving (again): state, history and the port are kept across stop/start."""
        emulator = self

        class Handler(_Handler):
            emu = emulator

        server = _QuietServer((self.host, self.port), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self.port = server.server_address[1]
        self._server = server
        with self._cond:
            self._running = True
        self._serve_thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="k8s-emulator", daemon=True
        )
        self._serve_thread.start()

    def stop(self) -> None:
        """Stop serving and cut every open connection; objects and history stay."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._cut_connections()

    def __enter__(self) -> KubeEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _cut_connections(self) -> None:
        with self._cond:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def drop_streams(self) -> None:
        """Abort every open watch stream mid-stream (no terminating chunk), like a dying proxy."""
        with self._cond:
            self._drop_generation += 1
            self._cond.notify_all()

    def expire_watches(self) -> None:
        """Send every open watch an in-stream ERROR 410 (as a server whose watch cache fell
        behind compaction does) and end it."""
        with self._cond:
            self._expire_generation += 1
            self._cond.notify_all()

    # --- state -------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def compact(self) -> int:
        """Forget history up to now: watches from an older version get 410 Gone."""
        with self._cond:
            self._compacted_rv = self._rv
            self._history.clear()
            self._snapshots.clear()
            self._cond.notify_all()
            return self._rv

    def apply(self, obj: Obj, *, record: bool = True) -> Obj:
        """Create or replace `obj` (API JSON shape); returns the stored copy with metadata stamped.

        record=False changes the object without telling watchers: a lost event, which only
        a relist can notice.
        """
        info = _BY_KIND[obj["kind"]]
        obj = copy.deepcopy(obj)
        obj["apiVersion"] = info.api_version
        meta = obj.setdefault("metadata", {})
        if info.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        if info.plural == "namespaces":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        key = (info.plural, meta.get("namespace", ""), meta["name"])
        with self._cond:
            old = self._objects.get(key)
            self._rv += 1
            if old is None:
                meta["uid"] = str(uuid.uuid4())
                meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                meta["generation"] = 1
            else:
                meta["uid"] = old["metadata"]["uid"]
                meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
                meta["generation"] = old["metadata"].get("generation", 1) + 1
            meta["resourceVersion"] = str(self._rv)
            self._objects[key] = obj
            if record:
                self._record(info, "ADDED" if old is None else "MODIFIED", obj)
            return copy.deepcopy(obj)

    def create(self, obj: Obj) -> Obj | None:
        """Like apply but None when the object exists (HTTP 409)."""
        info = _BY_KIND[obj["kind"]]
        meta = obj.get("metadata", {})
        ns = meta.get("namespace", "default") if info.namespaced else ""
        with self._cond:
            if (info.plural, ns, meta.get("name", "")) in self._objects:
                return None
            return self.apply(obj)

    def delete(self, kind: str, namespace: str, name: str) -> Obj | None:
        info = _BY_KIND[kind]
        key = (info.plural, namespace if info.namespaced else "", name)
        with self._cond:
            old = self._objects.pop(key, None)
            if old is None:
                return None
            self._rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self._rv)
            self._record(info, "DELETED", gone)
            return gone

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        info = _BY_KIND[kind]
        with self._cond:
            obj = self._objects.get((info.plural, namespace if info.namespaced else "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def _record(self, info: KindInfo, type_: str, obj: Obj) -> None:
        self._history.append(_Change(self._rv, info, type_, copy.deepcopy(obj)))
        self._cond.notify_all()

    # --- request handling helpers (called from handler threads) ---------------------------

    def _matching(self, route: _Route, query: dict[str, str]) -> list[Obj]:
        assert route.info is not None
        out = []
        for (plural, ns, _), obj in sorted(self._objects.items()):
            if (
                plural == route.info.plural
                and (route.namespace is None or ns == route.namespace)
                and self._selected(obj, query)
            ):
                out.append(obj)
        return out

    @staticmethod
    def _selected(obj: Obj, query: dict[str, str]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        if query.get("labelSelector") and not label_selector_matches(query["labelSelector"], labels):
            return False
        return not (query.get("fieldSelector") and not field_selector_matches(query["fieldSelector"], obj))


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # Connections we cut on purpose (stop, drop_streams) end in resets: not worth a traceback.
        logger.debug("emulator: connection from %s ended with an error", client_address, exc_info=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    emu: KubeEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("emulator: " + format, *args)

    def setup(self) -> None:
        super().setup()
        with self.emu._cond:
            self.emu._connections.add(self.connection)

    def finish(self) -> None:
        with self.emu._cond:
            self.emu._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    # --- plumbing ------------------------------------------------------------------------

    def _send_json(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> _Route | None:
        parts = [p for p in urlsplit(self.path).path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "api":
            api_version, rest = parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return None
        namespace = name = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, plural = rest[1], rest[2]
            name = rest[3] if len(rest) > 3 else None
        elif rest:
            plural = rest[0]
            name = rest[1] if len(rest) > 1 else None
        else:
            return None
        return _Route(api_version, _BY_PATH.get((api_version, plural)), plural, namespace, name)

    def _query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}

    def _body(self) -> Obj:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        return body

    def _refuse_if_failing(self) -> bool:
        route = self._route()
        if route is not None and route.plural in self.emu.unserved_plurals:
            self._send_json(404, _status(404, "NotFound", "the server could not find the requested resource"))
            return True
        if self.emu.fail_requests or (route is not None and route.plural in self.emu.fail_plurals):
            self._send_json(500, _status(500, "InternalError", "emulated server error"))
            return True
        return False

    # --- verbs ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        if self._refuse_if_failing():
            return
        route, query = self._route(), self._query()
        if route is None or route.info is None:
            self._send_json(404, _status(404, "NotFound", f"no route for {self.path}"))
            return
        if route.name is not None:
            obj = self.emu.get(str(route.info.kind), route.namespace or "", route.name)
            if obj is None:
                self._send_json(404, _status(404, "NotFound", f"{route.plural} {route.name!r} not found"))
            else:
                self._send_json(200, obj)
            return
        if query.get("watch") in ("true", "1"):
            self._watch(route, query)
            return
        emu = self.emu
        with emu._cond:
            emu.counters.bump(emu.counters.lists, route.plural)
            token = query.get("continue")
            if token:
                # A later page: served from the snapshot the first page took, as the real server does.
                snapshot = emu._snapshots.get(token.split(":")[0])
                if snapshot is None or emu.expire_continues:
                    emu.expire_continues = False
                    self._send_json(
                        410, _status(410, "Expired", "the provided continue parameter is too old")
                    )
                    return
                rv, items = snapshot
                offset = int(token.split(":")[1])
            else:
                items = []
                for obj in emu._matching(route, query):
                    item = copy.deepcopy(obj)
                    # Like the real API server: list items carry neither kind nor apiVersion.
                    item.pop("kind", None)
                    item.pop("apiVersion", None)
                    items.append(item)
                rv, offset = emu._rv, 0
            limit = int(query.get("limit") or 0)
            meta: Obj = {"resourceVersion": str(rv)}
            page = items[offset:]
            if limit and len(page) > limit:
                page = page[:limit]
                snapshot_id = token.split(":")[0] if token else uuid.uuid4().hex
                emu._snapshots[snapshot_id] = (rv, items)
                meta["continue"] = f"{snapshot_id}:{offset + limit}"
        self._send_json(
            200,
            {
                "kind": f"{route.info.kind}List",
                "apiVersion": route.info.api_version,
                "metadata": meta,
                "items": page,
            },
        )

    def do_POST(self) -> None:
        if self._refuse_if_failing():
            return
        route = self._route()
        try:
            body = self._body()
        except ValueError as err:
            self._send_json(400, _status(400, "BadRequest", str(err)))
            return
        if route is not None and route.plural == "events" and route.api_version == "v1":
            if self.emu.forbid_events:
                self._send_json(403, _status(403, "Forbidden", "events is forbidden"))
                return
            with self.emu._cond:
                self.emu._rv += 1
                meta = body.setdefault("metadata", {})
                meta.setdefault("namespace", route.namespace)
                if "name" not in meta:
                    meta["name"] = meta.get("generateName", "event.") + uuid.uuid4().hex[:8]
                meta["resourceVersion"] = str(self.emu._rv)
                self.emu.events.append(body)
            self._send_json(201, body)
            return
        if route is None or route.info is None:
            self._send_json(404, _status(404, "NotFound", f"no route for {self.path}"))
            return
        body.setdefault("kind", str(route.info.kind))
        if route.namespace is not None:
            body.setdefault("metadata", {})["namespace"] = route.namespace
        created = self.emu.create(body)
        if created is None:
            self._send_json(409, _status(409, "AlreadyExists", "already exists"))
        else:
            self._send_json(201, created)

    def do_PATCH(self) -> None:
        """A merge patch (JSON merge and strategic merge agree on maps such as annotations)."""
        if self._refuse_if_failing():
            return
        route = self._route()
        try:
            body = self._body()
        except ValueError as err:
            self._send_json(400, _status(400, "BadRequest", str(err)))
            return
        if route is None or route.info is None or route.name is None:
            self._send_json(404, _status(404, "NotFound", f"no route for {self.path}"))
            return
        current = self.emu.get(str(route.info.kind), route.namespace or "", route.name)
        if current is None:
            self._send_json(404, _status(404, "NotFound", f"{route.plural} {route.name!r} not found"))
            return
        self._send_json(200, self.emu.apply(_merge(current, body)))

    def do_DELETE(self) -> None:
        if self._refuse_if_failing():
            return
        route = self._route()
        if route is None or route.info is None or route.name is None:
            self._send_json(404, _status(404, "NotFound", f"no route for {self.path}"))
            return
        gone = self.emu.delete(str(route.info.kind), route.namespace or "", route.name)
        if gone is None:
            self._send_json(404, _status(404, "NotFound", f"{route.plural} {route.name!r} not found"))
        elif route.plural in ("pods", "services"):
            self._send_json(200, gone)  # as the real server: these deletes answer with the object
        else:
            self._send_json(
                200,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Success",
                    "details": {"name": route.name, "kind": route.plural},
                },
            )

    # --- watch ---------------------------------------------------------------------------

    def _chunk(self, event: Obj) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, route: _Route, query: dict[str, str]) -> None:
        emu, info = self.emu, route.info
        assert info is not None
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(query.get("timeoutSeconds") or 3600)
        if emu.stream_seconds is not None:
            timeout = min(timeout, emu.stream_seconds)
        deadline = time.monotonic() + timeout
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        since = query.get("resourceVersion", "")
        with emu._cond:
            emu.counters.bump(emu.counters.watches, route.plural)
            drop_generation = emu._drop_generation
            expire_generation = emu._expire_generation
            if since in ("", "0"):
                # No version: start with the current state as synthetic ADDED events.
                pending = [{"type": "ADDED", "object": copy.deepcopy(o)} for o in emu._matching(route, query)]
                last = emu._rv
            elif int(since) < emu._compacted_rv:
                pending, last = [], -1
            else:
                pending, last = [], int(since)
        try:
            if last < 0:
                self._chunk(
                    {
                        "type": "ERROR",
                        "object": _status(
                            410, "Expired", f"too old resource version: {since} ({emu._compacted_rv})"
                        ),
                    }
                )
                self._end_stream()
                return
            for event in pending:
                self._chunk(event)
            last_bookmark = time.monotonic()
            while True:
                pending, expired = [], False
                with emu._cond:
                    while True:
                        if not emu._running or emu._drop_generation != drop_generation:
                            # Cut the stream without the terminating chunk: the client sees a
                            # broken response, as when a proxy or the server dies.
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        if last < emu._compacted_rv or emu._expire_generation != expire_generation:
                            pending, expired = [], True
                            break
                        start = bisect.bisect_right(emu._history, last, key=lambda c: c.rv)
                        changes = [c for c in emu._history[start:] if c.info is info]
                        expired = False
                        if changes or emu._history[start:]:
                            pending = [
                                {"type": c.type, "object": copy.deepcopy(c.obj)}
                                for c in changes
                                if route.namespace is None
                                or c.obj["metadata"].get("namespace") == route.namespace
                            ]
                            pending = [e for e in pending if emu._selected(e["object"], query)]
                            last = emu._history[-1].rv
                            break
                        now = time.monotonic()
                        if now >= deadline:
                            break
                        if bookmarks and now - last_bookmark >= emu.bookmark_interval:
                            break
                        wait = deadline - now
                        if bookmarks:
                            wait = min(wait, emu.bookmark_interval - (now - last_bookmark))
                        emu._cond.wait(max(0.001, wait))
                    current_rv = emu._rv
                if expired:
                    self._chunk(
                        {"type": "ERROR", "object": _status(410, "Expired", "resource version compacted")}
                    )
                    self._end_stream()
                    return
                for event in pending:
                    self._chunk(event)
                now = time.monotonic()
                if bookmarks and now - last_bookmark >= emu.bookmark_interval:
                    last_bookmark = now
                    last = max(last, current_rv)
                    self._chunk(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": str(info.kind),
                                "apiVersion": info.api_version,
                                "metadata": {"resourceVersion": str(current_rv)},
                            },
                        }
                    )
                if now >= deadline:
                    self._end_stream()
                    return
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
