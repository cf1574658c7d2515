"""Kubernetes label selectors (matchLabels + matchExpressions) as pure values."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

Labels = Mapping[str, str]


class SelectorOperator(enum.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True)
class SelectorRequirement:
    key: str
    operator: SelectorOperator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Labels) -> bool:
        if self.operator is SelectorOperator.IN:
            return self.key in labels and labels[self.key] in self.values
        if self.operator is SelectorOperator.NOT_IN:
            # Kubernetes: NotIn also matches objects that do not have the key at all.
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator is SelectorOperator.EXISTS:
            return self.key in labels
        return self.key not in labels

    def describe(self) -> str:
        if self.operator in (SelectorOperator.EXISTS, SelectorOperator.DOES_NOT_EXIST):
            return f"{self.key} {self.operator.value}"
        return f"{self.key} {self.operator.value} ({','.join(sorted(self.values))})"


@dataclass(frozen=True)
class LabelSelector:
    """An empty selector (no labels, no expressions) selects everything."""

    match_labels: frozenset[tuple[str, str]] = frozenset()
    match_expressions: tuple[SelectorRequirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Labels) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        return all(req.matches(labels) for req in self.match_expressions)

    def describe(self) -> str:
        if self.is_empty:
            return "{} (everything)"
        parts = [f"{k}={v}" for k, v in sorted(self.match_labels)]
        parts += [req.describe() for req in self.match_expressions]
        return ", ".join(parts)
