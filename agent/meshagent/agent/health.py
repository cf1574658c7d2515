"""`GET /healthz` (the process serves) and `GET /readyz` (the datapath is attached and the first full sync
is in the kernel) for probes, on their own small HTTP server."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from meshagent.observer.listen_address import make_server

logger = logging.getLogger(__name__)


class HealthServer:
    def __init__(
        self, address: str, *, ready: Callable[[], bool], status: Callable[[], dict[str, Any]]
    ) -> None:
        ready_check, status_of = ready, status

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._answer(200, {"status": "ok"})
                elif self.path == "/readyz":
                    ok = ready_check()
                    self._answer(200 if ok else 503, {"ready": ok})
                elif self.path == "/status":
                    self._answer(200, status_of())
                else:
                    self._answer(404, {"error": "not found"})

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body, default=str).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: stay quiet
                return

        self._server = make_server(ThreadingHTTPServer, address, Handler, setting="health_listen")
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="ma-health", daemon=True)

    def start(self) -> None:
        self._thread.start()
        logger.info("health on port %d (/healthz, /readyz, /status)", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
