"""Run-time requests to a running agent, as files in its state directory: the encryption mode to switch
to, and a key rotation. Files rather than a socket: `meshagent encryption` needs only the state
directory (the agent's own, owner-only), and a request made while the agent is down is seen when it
starts."""

from __future__ import annotations

import os
from pathlib import Path

from meshagent.wireguard.modes import EncryptionMode

MODE_FILE = "encryption-mode"
ROTATE_FILE = "rotate-key"


def request_mode(state_dir: Path, mode: EncryptionMode) -> None:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = state_dir / f".{MODE_FILE}.new"
    temporary.write_text(f"{mode.value}\n")
    os.replace(temporary, state_dir / MODE_FILE)


def requested_mode(state_dir: Path) -> EncryptionMode | None:
    """The mode last asked for at run time (it overrides the configured one), None when none was."""
    try:
        text = (state_dir / MODE_FILE).read_text()
    except FileNotFoundError:
        return None
    return EncryptionMode.parse(text)


def request_rotation(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (state_dir / ROTATE_FILE).touch()


def take_rotation_request(state_dir: Path) -> bool:
    """True once per request: the request file is removed as it is seen."""
    try:
        (state_dir / ROTATE_FILE).unlink()
    except FileNotFoundError:
        return False
    return True
