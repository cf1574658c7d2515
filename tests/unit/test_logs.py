"""The JSON log formatter: the standard fields, `extra=` fields kept (a log collector indexes them), and
values JSON cannot hold written as text rather than losing the line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from meshagent.agent.logs import JsonFormatter


def record(**extra: object) -> logging.LogRecord:
    logger = logging.getLogger("meshagent.test")
    return logger.makeRecord(
        "meshagent.test", logging.WARNING, __file__, 1, "rejected %s", ("np",), None, extra=extra
    )


def test_extra_fields_are_kept() -> None:
    entry = json.loads(JsonFormatter().format(record(kind="NetworkPolicy", count=3, path=Path("/x"))))
    assert (
        entry["msg"] == "rejected np" and entry["level"] == "warning" and entry["logger"] == "meshagent.test"
    )
    assert entry["kind"] == "NetworkPolicy" and entry["count"] == 3 and entry["path"] == "/x"
    assert "args" not in entry and "levelno" not in entry and "msecs" not in entry  # the record's own


def test_exceptions_are_written() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = record()
        rec.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in entry["exception"]
