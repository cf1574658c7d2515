"""Exponential backoff with jitter for reconnecting to the API server."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    initial: float = 0.2
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2  # +/- this fraction, so many agents do not reconnect in lock-step


class Backoff:
    def __init__(self, policy: BackoffPolicy, *, rng: random.Random | None = None) -> None:
        self._policy = policy
        self._rng = rng or random.Random()
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next_delay(self) -> float:
        p = self._policy
        base = min(p.maximum, p.initial * p.factor**self._attempt)
        self._attempt += 1
        return max(0.0, base * (1.0 + self._rng.uniform(-p.jitter, p.jitter)))
