"""The one exception type for Kubernetes objects the policy engine cannot accept."""

from __future__ import annotations


class PolicyInputError(ValueError):
    """An object (namespace, pod, policy) that is invalid or unsupported, with the reason why.

    Raised by the parsers so the caller can log it, count it and report it on the object while every
    other object stays in force.
    """

    def __init__(self, reason: str, *, kind: str = "", namespace: str = "", name: str = "") -> None:
        self.reason = reason
        self.kind = kind
        self.namespace = namespace
        self.name = name
        super().__init__(self.describe())

    def describe(self) -> str:
        where = "/".join(part for part in (self.namespace, self.name) if part)
        prefix = f"{self.kind} {where}".strip()
        return f"{prefix}: {self.reason}" if prefix else self.reason

    def located(self, *, kind: str, namespace: str, name: str) -> PolicyInputError:
        """The same error with the object's coordinates filled in (the parsers add them on the way out)."""
        return PolicyInputError(
            self.reason,
            kind=self.kind or kind,
            namespace=self.namespace or namespace,
            name=self.name or name,
        )
