"""The type of the callable a source hands its events to."""

from __future__ import annotations

import logging
from collections.abc import Callable

from meshagent.sources.events import SourceEvent

logger = logging.getLogger(__name__)

Sink = Callable[[SourceEvent], None]
