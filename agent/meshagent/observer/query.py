"""GetFlows semantics over a FlowRing, independent of gRPC: validation, last/first N, time window, follow."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from meshagent.observer.filters import FilterError, FlowMatcher, TemplateCache
from meshagent.observer.proto.flow import flow_pb2 as pb
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.ring import Entry, FlowRing

_UINT64_MAX = (1 << 64) - 1


class InvalidRequest(ValueError):
    """The request contradicts itself or carries a malformed filter (gRPC INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class FlowQuery:
    number: int | None  # None: no count limit
    first: bool
    follow: bool
    since_ns: int | None
    until_ns: int | None
    matcher: FlowMatcher


def _ts_ns(ts: object) -> int:
    seconds = getattr(ts, "seconds", 0)
    nanos = getattr(ts, "nanos", 0)
    return int(seconds) * 1_000_000_000 + int(nanos)


def parse_request(req: opb.GetFlowsRequest) -> FlowQuery:
    """Validates a GetFlowsRequest (raises InvalidRequest with a readable message)."""
    if req.first and req.follow:
        raise InvalidRequest("'first' and 'follow' contradict each other: first N is a fixed set")
    since = _ts_ns(req.since) if req.HasField("since") else None
    until = _ts_ns(req.until) if req.HasField("until") else None
    for name, ts in (("since", req.since), ("until", req.until)):
        if req.HasField(name) and not 0 <= ts.nanos < 1_000_000_000:
            raise InvalidRequest(f"'{name}' has nanos out of range: {ts.nanos}")
    if since is not None and until is not None and since > until:
        raise InvalidRequest("'since' is after 'until'")
    try:
        matcher = FlowMatcher(req.whitelist, req.blacklist)
    except FilterError as err:
        raise InvalidRequest(f"invalid filter: {err}") from err
    # As Hubble: `follow` with number 0 and no `since` streams only new flows; otherwise number 0 (or the
    # maximum uint64 that `hubble observe --all` sends) means no count limit.
    if req.number == 0 and req.follow and since is None:
        number: int | None = 0
    elif req.number in (0, _UINT64_MAX):
        number = None
    else:
        number = int(req.number)
    return FlowQuery(
        number=number, first=req.first, follow=req.follow, since_ns=since, until_ns=until, matcher=matcher
    )


@dataclass(frozen=True)
class LostNotice:
    """Entries this reader missed because the ring overwrote them first."""

    count: int


QueryItem = Entry | LostNotice


def _in_window(q: FlowQuery, e: Entry) -> bool:
    if q.since_ns is not None and e.time_ns < q.since_ns:
        return False
    return not (q.until_ns is not None and e.time_ns > q.until_ns)


def _wanted(q: FlowQuery, e: Entry, cache: TemplateCache) -> bool:
    if not _in_window(q, e):
        return False
    if e.lost is not None or q.matcher.matches_everything:
        return True
    prepared = e.prepared
    if prepared is not None:
        return q.matcher.match_prepared(prepared.template, prepared.message, cache)
    flow = e.flow
    return flow is not None and q.matcher(flow)


def run_query(
    ring: FlowRing,
    q: FlowQuery,
    *,
    active: Callable[[], bool],
    now_ns: Callable[[], int],
    poll_s: float = 0.2,
) -> Iterator[QueryItem]:
    """Yields what a GetFlows client should get, in order. Stops when done or when `active()` turns False.

    The split between history and new flows is the ring's position when this is called (not when the
    first item is pulled)."""
    batches = run_query_batches(ring, q, active=active, now_ns=now_ns, poll_s=poll_s)
    return (item for batch in batches for item in batch)


BATCH = 1024  # entries taken from the ring at a time


def run_query_batches(
    ring: FlowRing,
    q: FlowQuery,
    *,
    active: Callable[[], bool],
    now_ns: Callable[[], int],
    poll_s: float = 0.2,
) -> Iterator[list[QueryItem]]:
    """`run_query` in lists of up to about BATCH items (a server writes each list at once)."""
    cache: TemplateCache = {}
    if q.first:
        return _chunks(_first(ring, q, cache, ring.oldest_seq, ring.next_seq))
    return _last_then_follow(ring, q, ring.next_seq, cache, active, now_ns, poll_s)


def _chunks(items: Iterator[QueryItem]) -> Iterator[list[QueryItem]]:
    out: list[QueryItem] = []
    for item in items:
        out.append(item)
        if len(out) >= BATCH:
            yield out
            out = []
    if out:
        yield out


def _last_then_follow(
    ring: FlowRing,
    q: FlowQuery,
    start: int,
    cache: TemplateCache,
    active: Callable[[], bool],
    now_ns: Callable[[], int],
    poll_s: float,
) -> Iterator[list[QueryItem]]:
    yield from _chunks(_history_last(ring, q, start, cache))
    if not q.follow:
        return
    # Nothing to test per entry when the query takes everything in any time (the common follower).
    take_all = q.matcher.matches_everything and q.since_ns is None and q.until_ns is None
    seq = start
    while active():
        if q.until_ns is not None and now_ns() > q.until_ns:
            return
        if not ring.wait_for(seq, poll_s):
            continue
        entries, seq, lost = ring.read_from(seq, BATCH)
        out: list[QueryItem] = [LostNotice(lost)] if lost else []
        if take_all:
            out.extend(entries)
        else:
            out.extend(e for e in entries if _wanted(q, e, cache))
        if out:
            yield out


def _first(ring: FlowRing, q: FlowQuery, cache: TemplateCache, seq: int, end: int) -> Iterator[QueryItem]:
    sent = 0
    while seq < end:
        entries, seq, lost = ring.read_from(seq, limit=min(BATCH, end - seq))
        if lost:
            yield LostNotice(lost)
        for e in entries:
            if e.seq >= end or not _wanted(q, e, cache):
                continue
            yield e
            if e.lost is None:  # a flow (its message is not built to count it)
                sent += 1
                if q.number is not None and sent >= q.number:
                    return


def _history_last(ring: FlowRing, q: FlowQuery, end: int, cache: TemplateCache) -> Iterator[QueryItem]:
    """The last `number` wanted entries before `end`, oldest first (all of them if no number)."""
    if q.number is None:
        picked = [e for e in ring.snapshot() if e.seq < end and _wanted(q, e, cache)]
        yield from picked
        return
    if q.number == 0:
        return
    picked_rev: list[Entry] = []
    flows = 0
    seq = end - 1
    oldest = ring.oldest_seq
    while seq >= oldest and flows < q.number:
        e = ring.get(seq)
        seq -= 1
        if e is None:
            break  # overwritten while we walked back: what we have is the newest part
        if _wanted(q, e, cache):
            picked_rev.append(e)
            if e.lost is None:
                flows += 1
    yield from reversed(picked_rev)


def lost_event(notice_count: int, source: int = pb.HUBBLE_RING_BUFFER) -> pb.LostEvent:
    return pb.LostEvent(source=source, num_events_lost=notice_count)  # type: ignore[arg-type]
