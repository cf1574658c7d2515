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

from pyroute2 import IPRoute

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_lock = threading.Lock()


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def iproute(netns: str | None) -> IPRoute:
    """An IPRoute whose netlink socket lives in `netns` (a name under /run/netns; None: our own)."""
    if netns is None:
        return IPRoute()
    with _lock:
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                _setns(target)
                try:
                    return IPRoute()
                finally:
                    _setns(original)
            finally:
                os.close(target)
        finally:
            os.close(original)
