"""The node's WireGuard key pair: made on first start, kept owner-only in the state directory, reused
across restarts, replaced on rotation. Public keys of other nodes are checked here before use.

The private key never appears in a log line, an exception or a repr: KeyPair hides it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

logger = logging.getLogger(__name__)

KEY_BYTES = 32
PRIVATE_KEY_FILE = "wireguard.key"
# Anything beyond the owner's own read and write bits would let another user read the key.
_OWNER_ONLY = stat.S_IRUSR | stat.S_IWUSR
_RAW = serialization.Encoding.Raw


class WireguardKeyError(ValueError):
    """A key (ours on disk, or another node's) is unusable; the message says why, never the key."""


@dataclass(frozen=True)
class KeyPair:
    public_key: str  # base64, as WireGuard tools and the Node annotation write it
    private_key: str = field(repr=False)

    def __str__(self) -> str:
        return f"KeyPair(public_key={self.public_key})"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def generate_key_pair() -> KeyPair:
    private = X25519PrivateKey.generate()
    return key_pair_from_private(
        _b64(private.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()))
    )


def key_pair_from_private(private_b64: str) -> KeyPair:
    raw = _decode(private_b64, what="private key")
    private = X25519PrivateKey.from_private_bytes(raw)
    public = private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
    return KeyPair(public_key=_b64(public), private_key=private_b64)


def _decode(text: str, *, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        raise WireguardKeyError(f"{what} is not base64") from err
    if len(raw) != KEY_BYTES:
        raise WireguardKeyError(f"{what} is {len(raw)} bytes, a WireGuard key is {KEY_BYTES}")
    return raw


def parse_public_key(text: object) -> str:
    """The key as WireGuard takes it (canonical base64), or WireguardKeyError saying what is wrong with it."""
    if not isinstance(text, str) or not text.strip():
        raise WireguardKeyError("public key is empty")
    raw = _decode(text, what="public key")
    # The all-zero point is X25519's identity: every shared secret with it is zero.
    if raw == bytes(KEY_BYTES):
        raise WireguardKeyError("public key is all zeros")
    return _b64(raw)


class KeyStore:
    """The private key file in `state_dir` (made 0700), the file itself 0600."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / PRIVATE_KEY_FILE

    def load_or_create(self) -> KeyPair:
        if self.path.exists():
            return self.load()
        pair = generate_key_pair()
        self._write(pair)
        logger.info("made a WireGuard key pair, public key %s", pair.public_key)
        return pair

    def load(self) -> KeyPair:
        try:
            mode = stat.S_IMODE(self.path.stat().st_mode)
            if mode & ~_OWNER_ONLY:
                raise WireguardKeyError(
                    f"{self.path} has mode {mode:04o}: a private key must be readable by its owner only "
                    "(chmod 600)"
                )
            text = self.path.read_text()
        except OSError as err:
            raise WireguardKeyError(f"cannot read {self.path}: {err.strerror}") from err
        return key_pair_from_private(text.strip()) if text.strip() else self._empty()

    def _empty(self) -> KeyPair:
        raise WireguardKeyError(f"{self.path} is empty")

    def rotate(self) -> KeyPair:
        """A new pair replaces the old one on disk (atomically: a crash leaves one or the other)."""
        pair = generate_key_pair()
        self._write(pair)
        logger.info("rotated the WireGuard key pair, new public key %s", pair.public_key)
        return pair

    def _write(self, pair: KeyPair) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".new")
        # Created 0600 from the start: the key is never readable by others, not even for a moment.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _OWNER_ONLY)
        try:
            os.write(fd, (pair.private_key + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
