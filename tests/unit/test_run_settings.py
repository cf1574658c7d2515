"""`meshagent run` settings through the real command line: flags win over the environment, which wins over
the --config file, which wins over the schema's defaults; empty values and YAML null switch a setting off;
bad values are refused by click's types, contradictions by the schema."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from meshagent.agent.config import ConfigError

from tests.cliparse import run_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "node: from-file\nflow_ring_size: 10\nevent_buffer_mib: 8\nlog-level: warning\n")
    argv = ["run", "--config", str(path)]
    config = run_config(argv, {})
    assert (config.node, config.flow_ring_size, config.event_buffer_mib) == ("from-file", 10, 8)
    assert config.log_level == "warning"  # `-` and `_` alike in the file
    config = run_config(argv, {"MESHAGENT_FLOW_RING_SIZE": "20", "NODE_NAME": "downward"})
    assert (config.node, config.flow_ring_size, config.event_buffer_mib) == ("downward", 20, 8)
    config = run_config([*argv, "--flow-ring-size", "30"], {"MESHAGENT_FLOW_RING_SIZE": "20"})
    assert config.flow_ring_size == 30
    assert run_config(argv, {"NODE_NAME": "downward", "MESHAGENT_NODE": "mine"}).node == "mine"


def test_defaults_come_from_the_schema() -> None:
    config = run_config(["run", "--node", "n"], {})
    assert config.metrics_listen == "127.0.0.1:9965" and config.enable_policy and not config.enable_socket_lb
    assert config.pin_dir == Path("/sys/fs/bpf/meshagent")


def test_switches_and_their_negations(tmp_path: Path) -> None:
    config = run_config(["run", "--node", "n", "--no-policy", "--socket-lb", "--sockmap"], {})
    assert not config.enable_policy and config.enable_socket_lb and config.enable_sockmap
    path = write(tmp_path, "enable_flows: false\nobserver_front_process: no\n")
    config = run_config(["run", "--node", "n", "--config", str(path)], {"MESHAGENT_ENABLE_POLICY": "off"})
    assert not config.enable_flows and not config.observer_front_process and not config.enable_policy
    config = run_config(["run", "--node", "n", "--config", str(path), "--flows"], {})
    assert config.enable_flows


def test_empty_values_switch_a_setting_off(tmp_path: Path) -> None:
    assert run_config(["run", "--node", "n", "--metrics-listen", ""], {}).metrics_listen is None
    assert run_config(["run", "--node", "n"], {"MESHAGENT_METRICS_LISTEN": ""}).metrics_listen is None
    path = write(tmp_path, "health_listen: null\nobserver_socket: ''\n")
    config = run_config(["run", "--node", "n", "--config", str(path)], {})
    assert config.health_listen is None and config.observer_socket is None


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--log-format", "xml"], {}, "'xml' is not one of"),
        (["--flow-ring-size", "0"], {}, "0 is not in the range x>=1"),
        ([], {"MESHAGENT_FLOW_RING_SIZE": "lots"}, "MESHAGENT_FLOW_RING_SIZE"),
        (["--observer-insecure", "maybe"], {}, "unexpected extra argument"),
    ],
)
def test_bad_values_are_refused_by_click(argv: list[str], environ: dict[str, str], message: str) -> None:
    with pytest.raises(click.UsageError) as caught:
        run_config(["run", "--node", "n", *argv], environ)
    assert message in caught.value.format_message()


def test_bad_file_values_and_contradictions_name_the_setting(tmp_path: Path) -> None:
    path = write(tmp_path, "flow_ring_size: lots\n")
    with pytest.raises(ConfigError, match=r"flow_ring_size in config file .*config.yaml"):
        run_config(["run", "--node", "n", "--config", str(path)], {})
    with pytest.raises(ConfigError, match="node is required"):
        run_config(["run"], {})
    with pytest.raises(ConfigError, match="enable_sockmap needs enable_socket_lb"):
        run_config(["run", "--node", "n", "--sockmap"], {})
