"""`meshagent encryption`: the node's WireGuard public key (for Node manifests when standalone), the
mode of a running agent, and key rotation. All work on the agent's state directory."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from meshagent.agent.config import DEFAULT_STATE_DIR, env_name
from meshagent.wireguard.control import request_mode, request_rotation
from meshagent.wireguard.keys import KeyStore, WireguardKeyError
from meshagent.wireguard.modes import MODES, EncryptionMode
from meshagent.wireguard.peers import PUBLIC_KEY_ANNOTATION

_state_dir = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    envvar=env_name("state_dir"),
    show_envvar=True,
    help="the agent's state directory (holds the node's private key)",
)


@click.group("encryption", help="WireGuard between nodes: public key, mode, key rotation.")
def encryption_group() -> None:
    pass


@encryption_group.command("public-key", help="Print this node's public key (made on first use).")
@_state_dir
@click.option("--annotation", is_flag=True, help=f"print it as the Node annotation ({PUBLIC_KEY_ANNOTATION})")
def public_key_command(state_dir: Path, annotation: bool) -> int:
    try:
        pair = KeyStore(state_dir).load_or_create()
    except (WireguardKeyError, OSError) as err:
        print(f"meshagent encryption public-key: {err}", file=sys.stderr)
        return 1
    print(f"{PUBLIC_KEY_ANNOTATION}: {pair.public_key}" if annotation else pair.public_key)
    return 0


@encryption_group.command("mode", help="Switch the running agent's mode (kept across its restarts).")
@_state_dir
@click.argument("mode", type=click.Choice(MODES))
def mode_command(state_dir: Path, mode: str) -> int:
    request_mode(state_dir, EncryptionMode(mode))
    print(f"asked for encryption mode {mode}; `meshagent status` shows when it is in force")
    return 0


@encryption_group.command("rotate", help="Make a new key pair and publish it (the agent does it at once).")
@_state_dir
def rotate_command(state_dir: Path) -> int:
    request_rotation(state_dir)
    print("asked for a key rotation (SIGUSR1 to the agent does the same)")
    return 0
