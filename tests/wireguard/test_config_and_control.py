"""Encryption settings (checked before anything touches the kernel), the `meshagent encryption` command
and the run-time requests it leaves for the agent."""

from __future__ import annotations

import stat
from pathlib import Path

import click
import pytest
from meshagent.agent.config import AgentConfig, ConfigError
from meshagent.cli.main import main
from meshagent.cli.run import config_from_context, run_command
from meshagent.wireguard.control import requested_mode, take_rotation_request
from meshagent.wireguard.keys import KeyStore
from meshagent.wireguard.modes import EncryptionMode
from meshagent.wireguard.peers import PUBLIC_KEY_ANNOTATION


def test_defaults_are_off_on_the_standard_port() -> None:
    config = AgentConfig(node="n")
    assert (config.encryption, config.wireguard_port, config.wireguard_mtu) == ("off", 51871, 0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"encryption": "on"}, "encryption must be off, permissive or strict"),
        ({"wireguard_port": 0}, "wireguard_port must be 1 to 65535"),
        ({"wireguard_mtu": 1000}, "wireguard_mtu must be 0"),
    ],
)
def test_bad_settings_are_refused_with_the_setting_named(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AgentConfig(node="n", **values)  # type: ignore[arg-type]


def test_settings_come_from_flags_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHAGENT_ENCRYPTION", "strict")
    monkeypatch.setenv("MESHAGENT_WIREGUARD_MTU", "1380")
    args = ["--node", "n", "--wireguard-port", "51000", "--state-dir", "/x"]
    with run_command.make_context("run", args) as ctx:
        config = config_from_context(ctx)
    assert (config.encryption, config.wireguard_port, config.wireguard_mtu) == ("strict", 51000, 1380)
    assert config.state_dir == Path("/x")
    monkeypatch.setenv("MESHAGENT_ENCRYPTION", "sometimes")
    with pytest.raises(click.BadParameter, match="sometimes"):
        run_command.make_context("run", ["--node", "n"])


def test_public_key_command_makes_the_key_once_and_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert main(["encryption", "public-key", "--state-dir", str(state)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == KeyStore(state).load().public_key
    assert stat.S_IMODE((state / "wireguard.key").stat().st_mode) == 0o600
    assert main(["encryption", "public-key", "--state-dir", str(state), "--annotation"]) == 0
    assert capsys.readouterr().out.strip() == f"{PUBLIC_KEY_ANNOTATION}: {printed}"


def test_public_key_command_refuses_a_key_others_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    KeyStore(tmp_path).load_or_create()
    (tmp_path / "wireguard.key").chmod(0o640)
    assert main(["encryption", "public-key", "--state-dir", str(tmp_path)]) == 1
    assert "owner only" in capsys.readouterr().err


def test_mode_and_rotation_requests_reach_the_state_dir(tmp_path: Path) -> None:
    assert requested_mode(tmp_path) is None
    assert main(["encryption", "mode", "strict", "--state-dir", str(tmp_path)]) == 0
    assert requested_mode(tmp_path) is EncryptionMode.STRICT
    assert main(["encryption", "mode", "loose", "--state-dir", str(tmp_path)]) == 2
    assert requested_mode(tmp_path) is EncryptionMode.STRICT, "a refused request changes nothing"
    assert not take_rotation_request(tmp_path)
    assert main(["encryption", "rotate", "--state-dir", str(tmp_path)]) == 0
    assert take_rotation_request(tmp_path)
    assert not take_rotation_request(tmp_path), "one request, one rotation"


def test_garbled_mode_file_is_an_error_not_a_mode(tmp_path: Path) -> None:
    (tmp_path / "encryption-mode").write_text("sometimes\n")
    with pytest.raises(ValueError, match="off, permissive or strict"):
        requested_mode(tmp_path)
