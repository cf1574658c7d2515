"""The translation of PolicyEntry values into ma_policy trie entries (no kernel needed)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from meshagent.datapath.maps.policy import (
    PREFIX_ANY_PORT,
    PREFIX_ANY_PROTO,
    PREFIX_FULL,
    TrieKey,
    TrieValue,
    compile_entries,
    port_blocks,
)
from meshagent.model.kernel_state import Action, Direction, PolicyEntry, Protocol


def _covered(blocks: list[tuple[int, int]]) -> list[int]:
    return [port for first, bits in blocks for port in range(first, first + (1 << (16 - bits)))]


@given(st.integers(1, 65535), st.integers(0, 2000))
def test_port_blocks_cover_the_range_exactly(lo: int, width: int) -> None:
    hi = min(65535, lo + width)
    blocks = port_blocks(lo, hi)
    assert _covered(blocks) == list(range(lo, hi + 1))
    for first, bits in blocks:
        assert first % (1 << (16 - bits)) == 0, "each block is aligned to its size"
    assert len(blocks) <= 30


def _lookup(
    trie: dict[TrieKey, TrieValue], endpoint: int, identity: int, direction: int, proto: int, port: int
) -> TrieValue | None:
    """The kernel's longest-prefix match, done by hand."""
    probe = TrieKey(PREFIX_FULL, endpoint, identity, direction, proto, port)
    matches = [key for key in trie if key.covers(probe)]
    return trie[max(matches, key=lambda k: k.prefixlen)] if matches else None


def _entry(
    action: Action,
    proto: Protocol,
    lo: int = 0,
    hi: int = 0,
    rule: int = 1,
    audit: bool = False,
    identity: int = 500,
) -> PolicyEntry:
    return PolicyEntry(
        endpoint_id=7,
        direction=Direction.INGRESS,
        peer_identity=identity,
        protocol=proto,
        port_lo=lo,
        port_hi=hi,
        action=action,
        rule_id=rule,
        audit=audit,
    )


def test_prefix_lengths_for_wildcards() -> None:
    trie = compile_entries(
        [
            _entry(Action.ALLOW, Protocol.ANY, rule=1),
            _entry(Action.ALLOW, Protocol.UDP, rule=2, identity=501),
            _entry(Action.ALLOW, Protocol.TCP, 80, 80, rule=3, identity=502),
        ]
    )
    assert {key.prefixlen for key in trie} == {PREFIX_ANY_PROTO, PREFIX_ANY_PORT, PREFIX_FULL}


def test_specific_allow_under_broad_deny_becomes_deny() -> None:
    trie = compile_entries(
        [
            _entry(Action.DENY, Protocol.TCP, rule=9),
            _entry(Action.ALLOW, Protocol.TCP, 80, 80, rule=3),
            _entry(Action.ALLOW, Protocol.UDP, 53, 53, rule=4),
        ]
    )
    assert _lookup(trie, 7, 500, 0, 6, 80) == TrieValue(9, Action.DENY, 0)
    assert _lookup(trie, 7, 500, 0, 17, 53) == TrieValue(4, Action.ALLOW, 0)


def test_same_key_keeps_the_strongest_rule_regardless_of_order() -> None:
    entries = [
        _entry(Action.ALLOW, Protocol.TCP, 80, 80, rule=3),
        _entry(Action.DENY, Protocol.TCP, 80, 80, rule=8, audit=True),
        _entry(Action.ALLOW, Protocol.TCP, 80, 80, rule=2),
    ]
    assert compile_entries(entries) == compile_entries(list(reversed(entries)))
    assert _lookup(compile_entries(entries), 7, 500, 0, 6, 80) == TrieValue(8, Action.DENY, 1)
    allows = compile_entries([e for e in entries if e.action == Action.ALLOW])
    assert _lookup(allows, 7, 500, 0, 6, 80) == TrieValue(2, Action.ALLOW, 0)


entry_strategy = st.builds(
    _entry,
    action=st.sampled_from([Action.ALLOW, Action.DENY]),
    proto=st.sampled_from([Protocol.ANY, Protocol.TCP, Protocol.UDP]),
    rule=st.integers(1, 50),
    audit=st.booleans(),
).flatmap(
    lambda e: (
        st.just(e)
        if e.protocol == Protocol.ANY
        else st.tuples(st.integers(0, 300), st.integers(0, 60)).map(
            lambda r: PolicyEntry(
                e.endpoint_id,
                e.direction,
                e.peer_identity,
                e.protocol,
                r[0] and r[0],
                r[0] and r[0] + r[1],
                e.action,
                e.rule_id,
                e.audit,
            )
        )
    )
)


@settings(max_examples=150, deadline=None)
@given(st.lists(entry_strategy, max_size=8), st.sampled_from([6, 17, 1]), st.integers(0, 400))
def test_trie_lookup_agrees_with_direct_rule_evaluation(
    entries: list[PolicyEntry], proto: int, port: int
) -> None:
    """For any rule set and packet, the longest match gives what the rules say: any deny wins (non-audit
    before audit), else an allow, else nothing."""
    trie = compile_entries(entries)
    matching = [
        e
        for e in entries
        if e.protocol in (Protocol.ANY, proto) and (e.any_port or e.port_lo <= port <= e.port_hi)
    ]
    got = _lookup(trie, 7, 500, 0, proto, port)
    if not matching:
        assert got is None
        return
    strongest = max(
        matching,
        key=lambda e: (
            2 if e.action == Action.DENY and not e.audit else 1 if e.action == Action.DENY else 0,
            -e.rule_id,
        ),
    )
    assert got is not None
    assert (got.action, bool(got.flags & 1)) == (
        strongest.action,
        strongest.audit and strongest.action == Action.DENY,
    )
    if strongest.action == Action.DENY:
        assert got.rule_id == strongest.rule_id
