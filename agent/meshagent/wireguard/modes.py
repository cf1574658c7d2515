"""Encryption modes: off, permissive (encrypt to every node with a key, accept plaintext from the rest),
strict (pod traffic to or from a remote node that is not encrypted is dropped in the datapath)."""

from __future__ import annotations

import enum


class EncryptionMode(enum.StrEnum):
    OFF = "off"
    PERMISSIVE = "permissive"
    STRICT = "strict"

    @classmethod
    def parse(cls, text: str) -> EncryptionMode:
        try:
            return cls(text.strip().lower())
        except ValueError as err:
            raise ValueError(f"encryption mode must be off, permissive or strict, not {text!r}") from err


MODES = tuple(mode.value for mode in EncryptionMode)
