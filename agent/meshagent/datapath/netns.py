"""Netlink sockets inside another network namespace, opened without forking.

pyroute2's `IPRoute(netns=NAME)` forks a helper process to enter the namespace. In a multi-threaded agent
a fork copies one thread only and inherits signal handlers, and a helper that fails to exit runs on as a
copy of that thread. setns(2) on a network namespace changes only the calling thread, so we enter the
namespace on our own thread, open the socket (it stays bound to that namespace), and come back at once.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import IPRoute

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_lock = threading.Lock()


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def iproute(netns: str | None) -> IPRoute:
    """An IPRoute whose netlink socket lives in `netns` (a name under /run/netns; None: our own)."""
    return open_in_netns(netns, IPRoute)


def open_in_netns(netns: str | None, opener: Callable[[], T]) -> T:
    """What `opener` returns, called inside `netns`: a socket it opens stays bound to that namespace."""
    if netns is None:
        return opener()
    with _lock:
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                _setns(target)
                try:
                    return opener()
                finally:
                    _setns(original)
            finally:
                os.close(target)
        finally:
            os.close(original)
