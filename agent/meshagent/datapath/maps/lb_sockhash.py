"""ma_lb_sockhash and ma_lb6_sockhash (sockhashes, opt-in acceleration) and ma_lb_accel_stats (per-CPU
counters)."""

from __future__ import annotations

import ctypes

MAP_NAME = "ma_lb_sockhash"
MAP6_NAME = "ma_lb6_sockhash"
STATS_MAP_NAME = "ma_lb_accel_stats"
ACCEL_REDIRECTED = 0  # MA_LB_ACCEL_REDIRECTED
ACCEL_PASSED = 1  # MA_LB_ACCEL_PASSED


class SockKey(ctypes.Structure):
    """Must match struct ma_lb_sock_key in bpf/lib/lb_types.h."""

    _fields_ = [
        ("local_addr_net", ctypes.c_uint32),
        ("remote_addr_net", ctypes.c_uint32),
        ("local_port", ctypes.c_uint32),  # host order
        ("remote_port_raw", ctypes.c_uint32),  # as the sockops context gives it
    ]


class SockKey6(ctypes.Structure):
    """Must match struct ma_lb6_sock_key in bpf/lib/lb6_types.h."""

    _fields_ = [
        ("local_addr_net", ctypes.c_uint32 * 4),
        ("remote_addr_net", ctypes.c_uint32 * 4),
        ("local_port", ctypes.c_uint32),  # host order
        ("remote_port_raw", ctypes.c_uint32),  # as the sockops context gives it
    ]


class Cookie(ctypes.Structure):
    """What a sockhash lookup from user space returns: the socket's cookie."""

    _fields_ = [("value", ctypes.c_uint64)]


class Counter(ctypes.Structure):
    """One per-CPU __u64 of ma_lb_accel_stats."""

    _fields_ = [("value", ctypes.c_uint64)]


C_FIELD_NAMES = {
    "local_addr_net": "local_addr",
    "remote_addr_net": "remote_addr",
    "remote_port_raw": "remote_port",
}
