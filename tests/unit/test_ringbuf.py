"""RingBufferReader's parsing of the ring buffer layout: whole batches, records still being written,
discarded and foreign records, and records that wrap past the end of the data area.

The kernel's mapping is stood in for by a file laid out the same way (consumer page, producer page, then
the data area twice in a row, as the kernel maps it). What the real kernel writes is covered by the
datapath and e2e tests, which read every event through this reader.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshagent.datapath.events import _RECORD, decode_framed
from meshagent.datapath.ringbuf import BUSY, DISCARD, RingBufferReader

PAGE = mmap.PAGESIZE
DATA = 4096  # bytes of data area (a power of two)
STRIDE = 8 + _RECORD.size


def record(n: int) -> bytes:
    """A POLICY_VERDICT record whose timestamp and ports say which one it is."""
    counters = (0, 0, 0, 0)
    addresses = (b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02")
    return _RECORD.pack(n, *counters, 1, 7, *addresses, 0, 5, 6, 1000 + n, 80, 1, 1, 0, 1, 6, 2, 0, 0)


class FakeRing:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self.fd, 2 * PAGE + 2 * DATA)
        self.mem = mmap.mmap(self.fd, 2 * PAGE + 2 * DATA)
        self.prod = 0

    def put(self, payload: bytes, *, flags: int = 0, at: int | None = None) -> int:
        """Writes header + payload at the producer position (into both copies of the data area)."""
        pos = self.prod if at is None else at
        blob = struct.pack("II", len(payload) | flags, 0) + payload
        blob += b"\x00" * (-len(blob) % 8)
        for i, byte in enumerate(blob):
            off = (pos + i) % DATA
            self.mem[2 * PAGE + off] = byte
            self.mem[2 * PAGE + DATA + off] = byte
        if at is None:
            self.prod += len(blob)
            struct.pack_into("Q", self.mem, PAGE, self.prod)
        return pos

    def set_flags(self, pos: int, length: int) -> None:
        for base in (2 * PAGE, 2 * PAGE + DATA):
            struct.pack_into("I", self.mem, base + pos % DATA, length)

    @property
    def consumer(self) -> int:
        return int(struct.unpack_from("Q", self.mem, 0)[0])

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)


@pytest.fixture
def ring(tmp_path: Path) -> Iterator[tuple[FakeRing, RingBufferReader]]:
    fake = FakeRing(tmp_path / "ring")
    reader = RingBufferReader(fake.fd, DATA, _RECORD)
    try:
        yield fake, reader
    finally:
        reader.close()
        fake.close()


def stamps(records: list[tuple[object, ...]]) -> list[int]:
    return [decode_framed(r).timestamp_ns for r in records]


def test_a_batch_of_whole_records_is_read_and_handed_back(ring: tuple[FakeRing, RingBufferReader]) -> None:
    fake, reader = ring
    for n in (1, 2, 3):
        fake.put(record(n))
    got = reader.read()
    assert stamps(got) == [1, 2, 3]
    assert decode_framed(got[1]).sport == 1002
    assert fake.consumer == 3 * STRIDE
    assert reader.read() == []


def test_reading_stops_at_a_record_still_being_written(ring: tuple[FakeRing, RingBufferReader]) -> None:
    fake, reader = ring
    fake.put(record(1))
    busy = fake.put(record(2), flags=BUSY)
    fake.put(record(3))
    assert stamps(reader.read()) == [1]
    assert fake.consumer == STRIDE  # the busy record's space is not handed back
    fake.set_flags(busy, _RECORD.size)  # committed
    assert stamps(reader.read()) == [2, 3]
    assert fake.consumer == 3 * STRIDE


def test_discarded_and_foreign_records_are_skipped_and_counted(
    ring: tuple[FakeRing, RingBufferReader],
) -> None:
    fake, reader = ring
    fake.put(record(1))
    fake.put(record(2), flags=DISCARD)
    fake.put(b"\x01" * 12)  # another size
    fake.put(record(4))
    assert stamps(reader.read()) == [1, 4]
    assert (reader.discarded, reader.malformed) == (1, 1)
    assert fake.consumer == fake.prod


def test_a_record_wrapping_past_the_end_reads_whole(ring: tuple[FakeRing, RingBufferReader]) -> None:
    fake, reader = ring
    # Start near the end of the data area: the second record straddles the wrap.
    fake.prod = DATA - STRIDE - 24
    struct.pack_into("Q", fake.mem, 0, fake.prod)  # consumer caught up to there
    for n in (5, 6, 7):
        fake.put(record(n))
    got = reader.read()
    assert stamps(got) == [5, 6, 7]
    assert [decode_framed(r).sport for r in got] == [1005, 1006, 1007]
    assert fake.consumer == fake.prod > DATA
