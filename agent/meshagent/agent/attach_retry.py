"""Endpoints whose programs could not be attached: retried with exponential backoff, for ever, while the
pod exists, and reported (log, status, metrics, and a Kubernetes Event through the caller) so that one
broken interface is visible and never holds up the rest of the node."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class AttachFailure:
    ifindex: int
    reason: str
    attempts: int
    next_retry: float  # time.monotonic()


class AttachRetries:
    def __init__(
        self,
        *,
        first_delay: float = 0.5,
        max_delay: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._clock = clock
        self._failures: dict[str, AttachFailure] = {}  # "ns/pod" -> its latest failure
        self.failed_attempts = 0  # since start, for the metric

    def failed(self, pod: str, ifindex: int, reason: str) -> AttachFailure:
        """Records a failed attempt and schedules the next one; a new interface starts the backoff over."""
        previous = self._failures.get(pod)
        attempts = previous.attempts + 1 if previous is not None and previous.ifindex == ifindex else 1
        delay = min(self._max_delay, self._first_delay * 2 ** (attempts - 1))
        failure = AttachFailure(ifindex, reason, attempts, self._clock() + delay)
        self._failures[pod] = failure
        self.failed_attempts += 1
        return failure

    def succeeded(self, pod: str) -> AttachFailure | None:
        return self._failures.pop(pod, None)

    def forget(self, pod: str) -> None:
        """The pod or its interface is gone: nothing to retry."""
        self._failures.pop(pod, None)

    def due(self) -> dict[str, AttachFailure]:
        now = self._clock()
        return {pod: f for pod, f in self._failures.items() if f.next_retry <= now}

    def current(self) -> dict[str, AttachFailure]:
        return dict(self._failures)

    def describe(self, pod: str) -> str | None:
        failure = self._failures.get(pod)
        if failure is None:
            return None
        wait = max(0.0, failure.next_retry - self._clock())
        return (
            f"attach failed ({failure.attempts} attempts, next in {wait:.1f} s) "
            f"on ifindex {failure.ifindex}: {failure.reason}"
        )
