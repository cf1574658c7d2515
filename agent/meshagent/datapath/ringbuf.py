"""Reads a BPF ring buffer through its own memory mapping, a batch of fixed-size records per call.

BCC (through libbpf) calls a Python callback per record, through a ctypes trampoline, and the callback
copies the record out with ctypes.string_at: together more than half the cost of ingesting an event at
100k events/s. The ring buffer's layout is kernel ABI (the same one libbpf reads): a consumer page we may
write, then a read-only producer page followed by the data area, which the kernel maps twice in a row so
that a record wrapping past the end reads as contiguous bytes. Each record starts with an 8-byte header:
a 32-bit length whose top bits say "still being written" (BUSY) and "discarded", then the record, the
whole padded to 8 bytes.

Memory ordering: the kernel publishes a record by clearing BUSY after writing it (a release store). On
x86-64, which this agent is built for, ordinary loads are not reordered with one another, so reading the
producer position, then the header, then the record, sees the record complete.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from typing import Any

BUSY = 1 << 31
DISCARD = 1 << 30
HEADER_SIZE = 8

# Reading the positions and headers: native formats, which CPython copies as whole words (one aligned
# load on x86-64), where standard-size formats ("<Q") are assembled a byte at a time and could be torn.
# Writing the consumer position: never struct.pack_into, which zeroes the destination before writing the
# value, so the kernel could read a consumer position of 0, find the buffer "full" and drop the event (it
# did, a few per 100k events); a ctypes word over the page stores the value in one go.
_POS = struct.Struct("Q")
_LEN = struct.Struct("I")


class RingBufferReader:
    """Consumes records of one size from a ring buffer map (fd) of `data_size` bytes (a power of two)."""

    def __init__(self, map_fd: int, data_size: int, record: struct.Struct) -> None:
        if data_size <= 0 or data_size & (data_size - 1):
            raise ValueError(f"ring buffer size must be a power of two, got {data_size}")
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._producer = mmap.mmap(
                map_fd, page + 2 * data_size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
        except OSError:
            self._consumer.close()
            raise
        self._data = memoryview(self._producer)[page:]
        self._consumer_pos = ctypes.c_uint64.from_buffer(self._consumer)
        self._mask = data_size - 1
        self._record_size = record.size
        # The 8-byte header (length, page offset) and the record, unpacked together.
        self._framed = struct.Struct(record.format[0] + "I4x" + record.format[1:])
        self._stride = (HEADER_SIZE + record.size + 7) & ~7
        if self._framed.size != HEADER_SIZE + record.size or self._stride != self._framed.size:
            raise ValueError(f"records of {record.size} bytes need padding: not supported")
        self.discarded = 0
        self.malformed = 0  # records of another size: counted and skipped

    def read(self) -> list[tuple[Any, ...]]:
        """The records written since the last call, oldest first, each unpacked as (header length,
        *record fields); their space is handed back to the kernel before returning."""
        cons = self._consumer_pos.value
        prod = _POS.unpack_from(self._producer, 0)[0]
        if cons >= prod:
            return []
        out: list[tuple[Any, ...]] = []
        pos = cons
        avail = prod - cons
        if avail % self._stride == 0:
            # The usual case: whole records back to back, unpacked by one C loop. The data area is mapped
            # twice in a row, so the region reads as contiguous even where it wraps.
            off = cons & self._mask
            want = self._record_size
            for fields in self._framed.iter_unpack(self._data[off : off + avail]):
                if fields[0] != want:
                    break  # busy, discarded or of another size: the careful loop below takes over
                out.append(fields)
            pos += len(out) * self._stride
        if pos < prod:
            pos = self._read_slowly(pos, prod, out)
        if pos != cons:
            self._consumer_pos.value = pos
        return out

    def _read_slowly(self, pos: int, prod: int, out: list[tuple[Any, ...]]) -> int:
        """Record by record from `pos`: stops at the first one still being written; returns where."""
        data = self._data
        mask = self._mask
        want = self._record_size
        while pos < prod:
            off = pos & mask
            length = _LEN.unpack_from(data, off)[0]
            if length & BUSY:
                break  # reserved, not committed yet: the rest is read next time
            size = length & ~(BUSY | DISCARD)
            if length & DISCARD:
                self.discarded += 1
            elif size == want:
                out.append(self._framed.unpack_from(data, off))
            else:
                self.malformed += 1
            pos += (HEADER_SIZE + size + 7) & ~7
        return pos

    def close(self) -> None:
        del self._consumer_pos  # releases its export of the consumer mapping
        self._data.release()
        self._producer.close()
        self._consumer.close()
