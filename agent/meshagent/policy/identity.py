"""Numeric identities for sets of identity-relevant labels and for CIDR peers.

Identities are DERIVED: a hash of the canonical label set (or of the prefix) picks the number, so every
agent, before and after a restart, gives the same labels the same number. Only a hash collision (two label
sets on one number) needs a tie-break, which probes to the next free number and therefore depends on
allocation order; a persisted allocation file (`path`) removes that last source of drift across restarts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from meshagent.model.cluster import NAMESPACE_NAME_LABEL
from meshagent.model.ip import IPNetwork
from meshagent.model.kernel_state import IDENTITY_FAMILY6_BIT, IDENTITY_FIRST_CIDR, IDENTITY_FIRST_LABELS

logger = logging.getLogger(__name__)

IDENTITY_LAST = IDENTITY_FAMILY6_BIT - 1  # the bit marks a pod identity's IPv6 addresses, never allocated

# Labels that differ between replicas of one workload (or between its revisions): each would split a
# workload into many identities without any policy ever selecting on them.
DEFAULT_EXCLUDED_LABELS: frozenset[str] = frozenset(
    {
        "pod-template-hash",
        "controller-revision-hash",
        "pod-template-generation",
        "controller-uid",
        "batch.kubernetes.io/controller-uid",
    }
)


@dataclass(frozen=True)
class LabelFilter:
    """Which labels make up an identity: every label except the excluded keys and key prefixes."""

    excluded_keys: frozenset[str] = DEFAULT_EXCLUDED_LABELS
    excluded_prefixes: tuple[str, ...] = ()

    def keep(self, key: str) -> bool:
        if key == NAMESPACE_NAME_LABEL:
            return True  # namespace selectors by name rely on it
        return key not in self.excluded_keys and not key.startswith(self.excluded_prefixes)

    def apply(self, labels: Iterable[tuple[str, str]]) -> frozenset[tuple[str, str]]:
        return frozenset((k, v) for k, v in labels if self.keep(k))


@dataclass(frozen=True, order=True)
class IdentityLabels:
    """What an identity stands for: the namespace, its labels and the pod's (filtered) labels."""

    namespace: str
    namespace_labels: frozenset[tuple[str, str]]
    pod_labels: frozenset[tuple[str, str]]

    def canonical(self) -> str:
        ns = ",".join(f"{k}={v}" for k, v in sorted(self.namespace_labels))
        pod = ",".join(f"{k}={v}" for k, v in sorted(self.pod_labels))
        return f"ns:{self.namespace}|nsl:{ns}|pod:{pod}"

    def pod_dict(self) -> dict[str, str]:
        return dict(self.pod_labels)

    def namespace_dict(self) -> dict[str, str]:
        return dict(self.namespace_labels)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


@dataclass
class _Space:
    first: int
    last: int
    by_key: dict[str, int] = field(default_factory=dict)
    by_number: dict[int, str] = field(default_factory=dict)

    def allocate(self, key: str) -> int:
        number = self.by_key.get(key)
        if number is not None:
            return number
        size = self.last - self.first + 1
        number = self.first + _hash(key) % size
        while number in self.by_number:  # collision: probe (see module docstring)
            number = self.first + (number - self.first + 1) % size
        self.by_key[key] = number
        self.by_number[number] = key
        return number

    def release(self, key: str) -> None:
        number = self.by_key.pop(key, None)
        if number is not None:
            self.by_number.pop(number, None)


class IdentityAllocator:
    """Allocates label identities in [IDENTITY_FIRST_LABELS, IDENTITY_FIRST_CIDR) and CIDR identities in
    [IDENTITY_FIRST_CIDR, IDENTITY_FAMILY6_BIT). Optional `path`: a JSON file keeping the allocations
    across restarts."""

    def __init__(self, *, path: Path | None = None) -> None:
        self._labels = _Space(IDENTITY_FIRST_LABELS, IDENTITY_FIRST_CIDR - 1)
        self._cidrs = _Space(IDENTITY_FIRST_CIDR, IDENTITY_LAST)
        self._path = path
        self._dirty = False
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            for space, name in ((self._labels, "labels"), (self._cidrs, "cidrs")):
                for key, number in data.get(name, {}).items():
                    if space is self._cidrs and isinstance(number, int) and space.last < number < 1 << 32:
                        # Written before IDENTITY_FAMILY6_BIT was reserved: derived again, in range.
                        continue
                    if not isinstance(number, int) or not space.first <= number <= space.last:
                        raise ValueError(f"identity {number!r} for {key!r} out of range")
                    space.by_key[key] = number
                    space.by_number[number] = key
        except (OSError, ValueError, AttributeError) as err:
            # A damaged file costs only collision tie-breaks: derivation gives the same numbers otherwise.
            logger.warning("identity file %s unreadable (%s): starting from derived identities", path, err)
            self._labels.by_key.clear()
            self._labels.by_number.clear()
            self._cidrs.by_key.clear()
            self._cidrs.by_number.clear()

    def labels_identity(self, labels: IdentityLabels) -> int:
        before = len(self._labels.by_key)
        number = self._labels.allocate(labels.canonical())
        self._dirty |= len(self._labels.by_key) != before
        return number

    def release_labels(self, labels: IdentityLabels) -> None:
        self._labels.release(labels.canonical())
        self._dirty = True

    def cidr_identity(self, cidr: IPNetwork) -> int:
        before = len(self._cidrs.by_key)
        number = self._cidrs.allocate(str(cidr))
        self._dirty |= len(self._cidrs.by_key) != before
        return number

    def release_cidr(self, cidr: IPNetwork) -> None:
        self._cidrs.release(str(cidr))
        self._dirty = True

    def save(self) -> None:
        """Write the allocations (atomically) when they changed; no-op without a path."""
        if self._path is None or not self._dirty:
            return
        data = {"labels": self._labels.by_key, "cidrs": self._cidrs.by_key}
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=".identities.")
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, sort_keys=True)
        os.replace(tmp, self._path)
        self._dirty = False
