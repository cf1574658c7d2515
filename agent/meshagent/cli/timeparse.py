"""Times on the command line: relative ("5m", "1h30m", "90s") or RFC 3339 ("2026-11-28T15:04:05Z")."""

from __future__ import annotations

import re
from datetime import datetime

_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")


class TimeParseError(ValueError):
    pass


def parse_duration_ns(text: str) -> int:
    """ "1h30m" -> nanoseconds; raises TimeParseError."""
    pos, total = 0, 0
    if not text:
        raise TimeParseError("empty duration")
    for m in _PART_RE.finditer(text):
        if m.start() != pos:
            break
        total += int(float(m.group(1)) * _UNIT_NS[m.group(2)])
        pos = m.end()
    if pos != len(text):
        raise TimeParseError(f"{text!r} is not a duration like 30s, 5m or 1h30m")
    return total


def parse_time_ns(text: str, *, now_ns: int) -> int:
    """A relative duration means that long before now; otherwise RFC 3339 (a zone is required)."""
    text = text.strip()
    if _PART_RE.match(text):
        try:
            return now_ns - parse_duration_ns(text)
        except TimeParseError:
            pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as err:
        raise TimeParseError(f"{text!r} is neither a duration (5m) nor an RFC 3339 time") from err
    if dt.tzinfo is None:
        raise TimeParseError(f"{text!r} has no time zone (add Z or an offset like +02:00)")
    seconds = int(dt.timestamp())
    return seconds * 1_000_000_000 + dt.microsecond * 1_000
