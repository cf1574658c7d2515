"""Expires idle conntrack entries on a timer and turns the connections whose end the kernel did not see
(UDP, ICMP, quiet TCP) into close events for the flow pipeline."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from meshagent.datapath.datapath import Datapath
from meshagent.datapath.maps.conntrack import Timeouts
from meshagent.model.events import DatapathEvent

logger = logging.getLogger(__name__)


class ConntrackReaper:
    def __init__(
        self,
        datapath: Datapath,
        on_event: Callable[[DatapathEvent], None] | None,
        *,
        interval_s: float = 5.0,
        timeouts: Timeouts | None = None,
    ) -> None:
        self._datapath = datapath
        self._on_event = on_event
        self._interval_s = interval_s
        self._timeouts = timeouts or Timeouts()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ma-ct-reaper", daemon=True)
        self.expired = 0

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                closed = self._datapath.expire_conntrack(timeouts=self._timeouts)
            except Exception:
                logger.exception("conntrack expiry failed")
                continue
            self.expired += len(closed)
            if self._on_event is not None:
                for event in closed:
                    self._on_event(event)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
