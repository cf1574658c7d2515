"""Decoding ma_event ring-buffer records and the thread that drains the buffer.

The programs write records without waking anyone (BPF_RB_NO_WAKEUP); this reader drains the buffer in
batches every few milliseconds: a wake-up per event would slow the packet path, and a batch costs Python
one call for many records. Decoding uses one precompiled struct format rather than BCC's per-event ctypes
class, which builds a ctypes object per event (bench/flow_pipeline.py measures the reader).
"""

from __future__ import annotations

import ctypes
import logging
import struct
import threading
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from meshagent.datapath.ringbuf import RingBufferReader
from meshagent.model.events import DatapathEvent, DropReason, EventType
from meshagent.model.kernel_state import Direction, Verdict, user_identity

logger = logging.getLogger(__name__)

MAP_NAME = "ma_events"
MAP_NAME6 = "ma_events6"  # IPv6 packets' records (struct ma_event6): an ma_event, then the IPv6 addresses
FLAG_REPLY = 0x01  # MA_EVENT_F_REPLY
FLAG_MIDSTREAM = 0x02  # MA_EVENT_F_MIDSTREAM
FLAG_ENCRYPTED = 0x80  # MA_EVENT_F_ENCRYPTED (bpf/lib/wireguard.h)


class EventRecord(ctypes.Structure):
    """Must match struct ma_event in bpf/lib/types.h."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("packets_fwd", ctypes.c_uint64),
        ("bytes_fwd", ctypes.c_uint64),
        ("packets_rev", ctypes.c_uint64),
        ("bytes_rev", ctypes.c_uint64),
        ("endpoint_id", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("saddr_net", ctypes.c_uint32),
        ("daddr_net", ctypes.c_uint32),
        ("rule_id", ctypes.c_uint32),
        ("src_identity", ctypes.c_uint32),
        ("dst_identity", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("verdict", ctypes.c_uint8),
        ("reason", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("tcp_flags", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),  # tcp_flags holds the ICMP type for ICMP
        ("icmp_code", ctypes.c_uint8),
    ]


C_FIELD_NAMES = {"saddr_net": "saddr", "daddr_net": "daddr"}

# Same layout as EventRecord; addresses kept as 4 raw bytes (network order).
_RECORD = struct.Struct("=5Q2I4s4s3I2H8B")
assert _RECORD.size == ctypes.sizeof(EventRecord)
# struct ma_event6 in bpf/lib/types6.h: the IPv4 record (address fields 0), then source and destination.
_RECORD6 = struct.Struct("=5Q2I4s4s3I2H8B16s16s")


class Event6Record(ctypes.Structure):
    """Must match struct ma_event6 in bpf/lib/types6.h."""

    _fields_ = [("base", EventRecord), ("saddr_net", ctypes.c_uint8 * 16), ("daddr_net", ctypes.c_uint8 * 16)]


assert _RECORD6.size == ctypes.sizeof(Event6Record)

# Plain lookups instead of Enum calls: `EventType(n)` goes through Python-level Enum machinery per event.
_TYPES = {int(t): t for t in EventType}
_VERDICTS = {int(v): v for v in Verdict}
_REASONS = {int(r): r for r in DropReason}
_DIRECTIONS = (Direction(0), Direction(1))
_new_tuple = tuple.__new__

# One IPv4Address per raw address, reused: building one costs as much as the rest of a decode, and a node
# sees the same few thousand addresses over and over. Bounded; emptied when full (then refills).
_ADDRS: dict[bytes, IPv4Address] = {}
ADDR_CACHE_MAX = 16384
# The reader's longest wait on an idle ring, and the event rate a ring must absorb meanwhile (the flow
# pipeline's measured ceiling is about 150k events/s).
IDLE_INTERVAL_S = 0.08
FILL_RATE = 150_000


class _HashedIPv4Address(IPv4Address):
    """An IPv4Address whose hash is computed once: IPv4Address hashes through Python code on every use,
    and the flow path looks addresses up in dicts (services, templates) several times per event. Equal to,
    and hashing like, the plain IPv4Address of the same address."""

    __slots__ = ("_hash",)

    def __init__(self, address: bytes) -> None:
        super().__init__(address)
        self._hash = IPv4Address.__hash__(self)

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"IPv4Address({str(self)!r})"

    def __reduce__(self) -> tuple[type[IPv4Address], tuple[str]]:
        return IPv4Address, (str(self),)


def _addr(raw: bytes) -> IPv4Address:
    a = _HashedIPv4Address(raw)
    if len(_ADDRS) >= ADDR_CACHE_MAX:
        _ADDRS.clear()
    _ADDRS[raw] = a
    return a


def decode(data: bytes | memoryview) -> DatapathEvent:
    """One ma_event record as an event; ValueError for an event type this agent does not know."""
    return decode_framed((0, *_RECORD.unpack_from(data)))


def decode_framed(fields: tuple[Any, ...]) -> DatapathEvent:
    """An event from a record unpacked with its ring-buffer header in front (the mapped reader's
    batches: the header's length, then RECORD's fields)."""
    (
        _length,
        ts,
        pf,
        bf,
        pr,
        br,
        endpoint_id,
        ifindex,
        saddr,
        daddr,
        rule_id,
        src_id,
        dst_id,
        sport,
        dport,
        type_,
        verdict,
        reason,
        direction,
        proto,
        tcp_flags,
        flags,
        icmp_code,
    ) = fields
    try:
        etype = _TYPES[type_]
    except KeyError:
        raise ValueError(f"unknown event type {type_}") from None
    # One C call (tuple.__new__) for all the fields: see DatapathEvent.
    return _new_tuple(
        DatapathEvent,
        (
            ts,
            etype,
            _VERDICTS.get(verdict),
            _REASONS.get(reason, DropReason.NONE),
            _DIRECTIONS[direction & 1],
            endpoint_id,
            ifindex,
            _ADDRS.get(saddr) or _addr(saddr),
            _ADDRS.get(daddr) or _addr(daddr),
            sport,
            dport,
            proto,
            0 if proto == 1 or proto == 58 else tcp_flags,
            (flags & FLAG_REPLY) != 0,
            rule_id,
            src_id,
            dst_id,
            pf,
            bf,
            pr,
            br,
            (flags & FLAG_MIDSTREAM) != 0,
            tcp_flags if proto == 1 or proto == 58 else 0,
            icmp_code if proto == 1 or proto == 58 else 0,
            (flags & FLAG_ENCRYPTED) != 0,
        ),
    )


def decode6(data: bytes | memoryview) -> DatapathEvent:
    """One ma_event6 record (an IPv6 packet's) as an event; ValueError for an unknown event type."""
    return decode_framed6((0, *_RECORD6.unpack_from(data)))


def decode_framed6(fields: tuple[Any, ...]) -> DatapathEvent:
    """decode_framed for an ma_event6 record: its IPv4 part, then the IPv6 addresses."""
    event = decode_framed(fields[:-2])
    # A pod's IPv6 address carries its identity marked for the policy map: users see the pod's identity.
    return event._replace(
        saddr=_addr6(fields[-2]),
        daddr=_addr6(fields[-1]),
        src_identity=user_identity(event.src_identity),
        dst_identity=user_identity(event.dst_identity),
    )


def _addr6(raw: bytes) -> IPv6Address:
    found = _ADDRS6.get(raw)
    if found is None:
        if len(_ADDRS6) >= ADDR_CACHE_MAX:
            _ADDRS6.clear()
        found = _ADDRS6[raw] = IPv6Address(raw)
    return found


_ADDRS6: dict[bytes, IPv6Address] = {}


def _timestamp(event: DatapathEvent) -> int:
    return event.timestamp_ns


EventsConsumer = Callable[[list[DatapathEvent]], None]


class EventReader:
    """Drains the ring buffer on its own thread and hands decoded events to a consumer, a batch per drain
    (one call per few milliseconds rather than one per event: the flow ring then wakes its followers once
    per batch).

    The consumer runs on the reader thread; it should be quick (queue the events, do not block).
    """

    def __init__(
        self, map_fd: int, data_size: int, map_fd6: int, data_size6: int, *, interval_s: float = 0.01
    ) -> None:
        """Reads the ring buffer maps `map_fd` (IPv4 packets' records) and `map_fd6` (IPv6), of
        `data_size` and `data_size6` bytes (Capacities.event_pages), through their memory mappings
        (ringbuf.py); the descriptors stay the caller's."""
        self._consumer: EventsConsumer | None = None
        self._pending: list[DatapathEvent] = []
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.decode_errors = 0
        self.delivered = 0
        self.buffer_bytes = data_size
        self._mapped = RingBufferReader(map_fd, data_size, _RECORD)
        # IPv6 packets' records, in a ring buffer of their own (the IPv4 record keeps its size).
        self._mapped6 = RingBufferReader(map_fd6, data_size6, _RECORD6)
        # An idle node's reader backs off from interval_s to this, doubling after each empty read, so that
        # it does not wake 100 times a second for nothing; it is kept to a quarter of the time a burst at
        # FILL_RATE events/s takes to fill the ring, so the first read after idling still finds room.
        fill_s = data_size / ((_RECORD.size + 8) * FILL_RATE)
        self._idle_interval_s = max(interval_s, min(IDLE_INTERVAL_S, fill_s / 4))

    @property
    def mapped(self) -> bool:
        """True: the ring buffer is read through its memory mapping (there is no other way left)."""
        return True

    @property
    def malformed(self) -> int:
        """Records of an unexpected size, skipped."""
        return self._mapped.malformed + self._mapped6.malformed

    def start(
        self,
        on_event: Callable[[DatapathEvent], None] | None = None,
        *,
        on_events: EventsConsumer | None = None,
        thread: bool = True,
    ) -> None:
        """Delivers events to `on_events` (a list per drain) or one by one to `on_event`, from a reader
        thread unless thread=False (then call drain())."""
        if (on_event is None) == (on_events is None):
            raise ValueError("give exactly one of on_event and on_events")
        self.stop()
        if on_events is None:
            assert on_event is not None
            single = on_event

            def each(events: list[DatapathEvent]) -> None:
                for ev in events:
                    single(ev)

            on_events = each
        self._consumer = on_events
        self._stop.clear()
        if not thread:
            return
        self._thread = threading.Thread(target=self._run, name="ma-events", daemon=True)
        self._thread.start()

    def _consume(self) -> int:
        """Reads and delivers what is in the rings; returns how many events."""
        self._decode_mapped(self._mapped.read())
        self._decode_mapped6(self._mapped6.read())
        if not self._pending:
            return 0
        events, self._pending = self._pending, []
        self.delivered += len(events)
        if self._consumer is None:
            return len(events)
        try:
            self._consumer(events)
        except Exception:  # a consumer bug must not kill the reader
            logger.exception("event consumer failed")
        return len(events)

    def _decode_mapped(self, records: list[tuple[Any, ...]]) -> None:
        decode_one = decode_framed
        pending = self._pending
        for fields in records:
            try:
                pending.append(decode_one(fields))
            except ValueError:
                self.decode_errors += 1

    def _decode_mapped6(self, records: list[tuple[Any, ...]]) -> None:
        if not records:
            return
        had = len(self._pending)
        for fields in records:
            try:
                self._pending.append(decode_framed6(fields))
            except ValueError:
                self.decode_errors += 1
        if had:
            # Two buffers drained one after the other: the batch goes out in the kernel's time order.
            self._pending.sort(key=_timestamp)

    def _run(self) -> None:
        wait = self._interval_s
        while not self._stop.is_set():
            wait = self._interval_s if self._consume() else min(wait * 2, self._idle_interval_s)
            self._stop.wait(wait)
        self._consume()

    def drain(self) -> None:
        """Consumes what is in the buffer now, on the caller's thread (when no reader thread runs)."""
        self._consume()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._consumer = None
