"""Opening a socket inside a named network namespace from this process: the calling thread enters the
namespace, makes the socket, and comes back. The socket keeps its namespace for its whole life."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from pyroute2 import netns

_lock = threading.Lock()


def open_in(name: str, opener: Callable[[], socket.socket]) -> socket.socket:
    with _lock:
        netns.pushns(name)
        try:
            return opener()
        finally:
            netns.popns()
