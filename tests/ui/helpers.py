"""Runs the service map server in a thread (its own event loop) and reads its event stream."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from meshagent.ui.app import serve
from meshagent.ui.why import ManifestLoader


@dataclass
class RunningMap:
    url: str

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=10) as answer:
            return json.load(answer)


@contextmanager
def running_map(server: str, *, manifests: ManifestLoader | None = None) -> Iterator[RunningMap]:
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready: list[str] = []
    failure: list[BaseException] = []

    async def main() -> None:
        await serve(
            server=server,
            listen="127.0.0.1:0",
            manifests=manifests,
            on_ready=ready.append,
            stop=stop,
            handle_signals=False,  # a thread's loop cannot take signals
        )

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as err:
            failure.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not ready and not failure and time.monotonic() < deadline:
        time.sleep(0.02)
    if failure:
        raise failure[0]
    assert ready, "the map server did not start"
    try:
        yield RunningMap(ready[0])
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        loop.close()


class EventStream:
    """A server-sent events reader (blocking, for tests)."""

    def __init__(self, url: str) -> None:
        self._answer = urllib.request.urlopen(url + "api/events", timeout=10)

    def next(self) -> tuple[str, dict[str, Any]]:
        kind, data = "", ""
        while True:
            line = self._answer.readline().decode()
            if not line:
                raise EOFError("the event stream ended")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif not line and data:
                return kind, json.loads(data)

    def close(self) -> None:
        self._answer.close()
