"""datapath.events.decode: ring-buffer records become the same DatapathEvent the constructor would make."""

from __future__ import annotations

import sys
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshagent.datapath import events as dp
from meshagent.model.events import DatapathEvent, DropReason, EventType
from meshagent.model.kernel_state import Direction, Verdict

U8, U16, U32, U64 = (st.integers(0, 2**b - 1) for b in (8, 16, 32, 64))


def record(**kw: int | bytes) -> bytes:
    """A struct ma_event as the datapath writes it, through the ctypes mirror (not the decoder's format)."""
    rec = dp.EventRecord(type=1, verdict=1, direction=0, proto=6)
    for name, value in kw.items():
        if name in ("saddr_net", "daddr_net"):
            assert isinstance(value, bytes)
            # Network order in memory: the u32 whose native-order bytes are these.
            value = int.from_bytes(value, sys.byteorder)
        setattr(rec, name, value)
    return bytes(rec)


@settings(max_examples=300, deadline=None)
@given(
    ts=U64,
    counters=st.tuples(U64, U64, U64, U64),
    ids=st.tuples(U32, U32, U32, U32, U32),
    addrs=st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
    ports=st.tuples(U16, U16),
    etype=st.sampled_from(EventType),
    verdict=U8,
    reason=U8,
    direction=U8,
    proto=U8,
    tcp_flags=U8,
    flags=U8,
)
def test_decode_equals_the_constructed_event(
    ts: int,
    counters: tuple[int, int, int, int],
    ids: tuple[int, int, int, int, int],
    addrs: tuple[bytes, bytes],
    ports: tuple[int, int],
    etype: EventType,
    verdict: int,
    reason: int,
    direction: int,
    proto: int,
    tcp_flags: int,
    flags: int,
) -> None:
    endpoint_id, ifindex, rule_id, src_id, dst_id = ids
    raw = record(
        ts_ns=ts,
        packets_fwd=counters[0],
        bytes_fwd=counters[1],
        packets_rev=counters[2],
        bytes_rev=counters[3],
        endpoint_id=endpoint_id,
        ifindex=ifindex,
        saddr_net=addrs[0],
        daddr_net=addrs[1],
        rule_id=rule_id,
        src_identity=src_id,
        dst_identity=dst_id,
        sport=ports[0],
        dport=ports[1],
        type=int(etype),
        verdict=verdict,
        reason=reason,
        direction=direction,
        proto=proto,
        tcp_flags=tcp_flags,
        flags=flags,
        icmp_code=tcp_flags // 3,
    )
    want = DatapathEvent(
        timestamp_ns=ts,
        type=etype,
        verdict=Verdict(verdict) if verdict in set(Verdict) else None,
        drop_reason=DropReason(reason) if reason in set(DropReason) else DropReason.NONE,
        direction=Direction(direction & 1),
        endpoint_id=endpoint_id,
        ifindex=ifindex,
        saddr=IPv4Address(addrs[0]),
        daddr=IPv4Address(addrs[1]),
        sport=ports[0],
        dport=ports[1],
        protocol=proto,
        tcp_flags=0 if proto == 1 else tcp_flags,  # ICMP: the byte holds the ICMP type
        is_reply=bool(flags & 0x01),
        rule_id=rule_id,
        src_identity=src_id,
        dst_identity=dst_id,
        packets_fwd=counters[0],
        bytes_fwd=counters[1],
        packets_rev=counters[2],
        bytes_rev=counters[3],
        midstream=bool(flags & 0x02),
        icmp_type=tcp_flags if proto == 1 else 0,
        icmp_code=tcp_flags // 3 if proto == 1 else 0,
        encrypted=bool(flags & 0x80),
    )
    got = dp.decode(raw)
    assert got == want
    assert got._asdict() == want._asdict()  # same fields, same order
    assert type(got) is DatapathEvent
    assert hash(got) == hash(want)
    assert type(got.type) is EventType and type(got.direction) is Direction and type(got.is_reply) is bool
    assert dp.decode(memoryview(raw)) == want


def test_unknown_event_type_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        dp.decode(record(type=200))


def test_decoded_events_stay_frozen() -> None:
    ev = dp.decode(record())
    with pytest.raises(AttributeError):
        ev.sport = 1  # type: ignore[misc]


def test_addresses_are_reused_and_the_cache_stays_bounded() -> None:
    a = dp.decode(record(saddr_net=b"\x0a\x00\x00\x01", daddr_net=b"\x0a\x00\x00\x02"))
    b = dp.decode(record(saddr_net=b"\x0a\x00\x00\x02", daddr_net=b"\x0a\x00\x00\x01"))
    assert a.saddr is b.daddr and a.daddr is b.saddr
    for i in range(dp.ADDR_CACHE_MAX + 10):
        ev = dp.decode(record(saddr_net=i.to_bytes(4, "big")))
        assert ev.saddr == IPv4Address(i)
    assert len(dp._ADDRS) <= dp.ADDR_CACHE_MAX
