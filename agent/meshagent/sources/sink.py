"""The type of the callable a source hands its events to."""

from __future__ import annotations

from collections.abc import Callable

from meshagent.sources.events import SourceEvent

Sink = Callable[[SourceEvent], None]
