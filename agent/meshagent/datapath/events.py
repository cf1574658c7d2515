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
from ipaddress import IPv4Address
from typing import Any

from meshagent.datapath.ringbuf import RingBufferReader
from meshagent.model.events import DatapathEvent, DropReason, EventType
from meshagent.model.kernel_state import Direction, Verdict

logger = logging.getLogger(__name__)

MAP_NAME = "ma_events"
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
    # One C call (tuple.__new__) for the 25 fields: see DatapathEvent.
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
            0 if proto == 1 else tcp_flags,
            (flags & FLAG_REPLY) != 0,
            rule_id,
            src_id,
            dst_id,
            pf,
            bf,
            pr,
            br,
            (flags & FLAG_MIDSTREAM) != 0,
            tcp_flags if proto == 1 else 0,
            icmp_code if proto == 1 else 0,
            (flags & FLAG_ENCRYPTED) != 0,
        ),
    )


EventsConsumer = Callable[[list[DatapathEvent]], None]


class EventReader:
    """Drains the ring buffer on its own thread and hands decoded events to a consumer, a batch per drain
    (one call per few milliseconds rather than one per event: the flow ring then wakes its followers once
    per batch).

    The consumer runs on the reader thread; it should be quick (queue the events, do not block).
    """

    def __init__(self, bpf: Any, *, interval_s: float = 0.01) -> None:
        self._bpf = bpf
        self._consumer: EventsConsumer | None = None
        self._pending: list[DatapathEvent] = []
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.decode_errors = 0
        self.delivered = 0
        self._mapped: RingBufferReader | None = None
        table = bpf[MAP_NAME.encode()]
        self.buffer_bytes = int(table.max_entries)  # the ring buffer's data size (Capacities.event_pages)
        try:
            self._mapped = RingBufferReader(table.map_fd, int(table.max_entries), _RECORD)
        except (OSError, ValueError) as err:
            # BCC's per-record callback works everywhere; mapping is the fast path (see ringbuf.py).
            logger.warning("reading %s through BCC callbacks (mapping it failed: %s)", MAP_NAME, err)
            # BCC registers a ring buffer once per BPF object: the reader lives as long as the programs.
            table.open_ring_buffer(self._callback)

    @property
    def mapped(self) -> bool:
        """True when the ring buffer is read through its memory mapping (else through BCC callbacks)."""
        return self._mapped is not None

    @property
    def malformed(self) -> int:
        """Records of an unexpected size, skipped (mapped reading only)."""
        return self._mapped.malformed if self._mapped is not None else 0

    def _callback(self, _ctx: Any, data: Any, size: int) -> int:
        # BCC wants an int back: returning None costs an exception per event.
        try:
            self._pending.append(decode(ctypes.string_at(data, size)))
        except (ValueError, struct.error):
            self.decode_errors += 1
        return 0

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

    def _consume(self) -> None:
        if self._mapped is not None:
            self._decode_mapped(self._mapped.read())
        else:
            self._bpf.ring_buffer_consume()
        if not self._pending:
            return
        events, self._pending = self._pending, []
        self.delivered += len(events)
        if self._consumer is None:
            return
        try:
            self._consumer(events)
        except Exception:  # a consumer bug must not kill the reader
            logger.exception("event consumer failed")

    def _decode_mapped(self, records: list[tuple[Any, ...]]) -> None:
        decode_one = decode_framed
        pending = self._pending
        for fields in records:
            try:
                pending.append(decode_one(fields))
            except ValueError:
                self.decode_errors += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._consume()
            self._stop.wait(self._interval_s)
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
