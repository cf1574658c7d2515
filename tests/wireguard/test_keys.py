"""The node's key pair on disk and the checks on other nodes' public keys (no kernel needed)."""

from __future__ import annotations

import base64
import logging
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from meshagent.wireguard.keys import (
    KeyStore,
    WireguardKeyError,
    generate_key_pair,
    key_pair_from_private,
    parse_public_key,
)


def test_public_key_is_the_x25519_public_of_the_private() -> None:
    pair = generate_key_pair()
    private = X25519PrivateKey.from_private_bytes(base64.b64decode(pair.private_key))
    peer = X25519PrivateKey.generate()
    peer_public = X25519PublicKey.from_public_bytes(base64.b64decode(pair.public_key))
    # Both sides derive one secret only if the public key really belongs to the private one.
    assert private.exchange(peer.public_key()) == peer.exchange(peer_public)
    assert key_pair_from_private(pair.private_key) == pair


def test_private_key_never_in_repr_or_str() -> None:
    pair = generate_key_pair()
    assert pair.private_key not in repr(pair)
    assert pair.private_key not in str(pair)
    assert pair.public_key in repr(pair)


def test_made_owner_only_and_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    caplog.set_level(logging.DEBUG)
    first = KeyStore(state).load_or_create()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "wireguard.key").stat().st_mode) == 0o600
    again = KeyStore(state).load_or_create()
    assert again == first, "a restart must keep the key its peers know"
    assert first.private_key not in caplog.text
    assert first.public_key in caplog.text


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    store.load_or_create()
    store.path.chmod(0o644)
    with pytest.raises(WireguardKeyError, match=r"mode 0644.*owner only"):
        store.load_or_create()


def test_rotation_replaces_the_pair_on_disk(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    old = store.load_or_create()
    new = store.rotate()
    assert new.public_key != old.public_key
    assert store.load() == new
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["wireguard.key"], "no temporary file left behind"


def test_corrupt_key_file_is_an_error_without_the_content(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    store.load_or_create()
    store.path.write_text("c2VjcmV0LWJ1dC1zaG9ydA==\n")
    with pytest.raises(WireguardKeyError) as caught:
        store.load()
    assert "16 bytes" in str(caught.value)
    assert "c2VjcmV0" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        (None, "empty"),
        ("not base64!", "not base64"),
        (base64.b64encode(b"x" * 31).decode(), "31 bytes"),
        (base64.b64encode(bytes(32)).decode(), "all zeros"),
    ],
)
def test_invalid_public_keys_are_rejected_with_a_reason(text: object, reason: str) -> None:
    with pytest.raises(WireguardKeyError, match=reason):
        parse_public_key(text)


def test_valid_public_key_is_canonical() -> None:
    key = generate_key_pair().public_key
    assert parse_public_key(f"  {key}\n") == key
