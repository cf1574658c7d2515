"""An HTTP server that answers the Kubernetes API calls the agent makes with empty results and records each
request as the RBAC (apiGroup, resource, verb) it needs.

It is not an emulator (tests/sources/k8s_emulator.py is): it only needs to keep the official client happy
long enough for every informer to list and watch, and for the event recorder to post, so that the test
learns from the real code which permissions it uses.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True, order=True)
class Permission:
    api_group: str  # "" for the core group
    resource: str
    verb: str


def permission_of(method: str, url: str) -> Permission:
    """The RBAC permission a request needs, by the API server's rules: the verb follows from the method,
    whether a name is given, and `watch=true`."""
    split = urlsplit(url)
    parts = [p for p in split.path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        raise ValueError(f"not a resource path: {url}")
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]  # /namespaces/{ns}/{resource}[/{name}]
    if not rest:
        raise ValueError(f"no resource in {url}")
    resource, name = rest[0], (rest[1] if len(rest) > 1 else None)
    watch = parse_qs(split.query).get("watch", [""])[-1] in ("true", "1")
    method = method.upper()
    if method == "GET":
        verb = "watch" if watch else ("get" if name else "list")
    elif method == "POST":
        verb = "create"
    elif method == "PUT":
        verb = "update"
    elif method == "PATCH":
        verb = "patch"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        raise ValueError(f"unexpected method {method} for {url}")
    return Permission(group, resource, verb)


class ApiRecorder:
    """Serves on 127.0.0.1 (a free port); `permissions` is what was asked for so far."""

    def __init__(self, *, watch_hold_seconds: float = 0.2) -> None:
        self.watch_hold_seconds = watch_hold_seconds
        self._lock = threading.Lock()
        self._permissions: set[Permission] = set()
        self.unparsed: list[str] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _record(self) -> Permission | None:
                try:
                    permission = permission_of(self.command, self.path)
                except ValueError:
                    with recorder._lock:
                        recorder.unparsed.append(f"{self.command} {self.path}")
                    return None
                with recorder._lock:
                    recorder._permissions.add(permission)
                return permission

            def _json(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                permission = self._record()
                if permission is None or permission.verb == "get":
                    self._json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404})
                elif permission.verb == "watch":
                    # An empty stream that the server ends after a moment, as a watch timeout would.
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.flush()
                    time.sleep(recorder.watch_hold_seconds)
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self._json(200, {"kind": "List", "metadata": {"resourceVersion": "1"}, "items": []})

            def do_POST(self) -> None:
                self._record()
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                self._json(201, body)

            do_PUT = do_PATCH = do_DELETE = do_POST

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="api-recorder", daemon=True)

    @property
    def permissions(self) -> set[Permission]:
        with self._lock:
            return set(self._permissions)

    def __enter__(self) -> ApiRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
